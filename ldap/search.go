package ldap

import (
	"sort"
	"strings"
)

// Search scopes (RFC 4511 §4.5.1.2).
const (
	scopeBase = 0
	scopeOne  = 1
	scopeSub  = 2
)

// query is one search over a view.
type query struct {
	base   string // normalised
	scope  int
	filter *lfilter
	after  string // resume after this key (paging); "" from the start
}

// inScope reports whether normalised DN dn is selected by base and scope.
func inScope(dn, base string, scope int) bool {
	switch scope {
	case scopeBase:
		return dn == base
	case scopeOne:
		return parentOf(dn) == base
	}
	return isUnder(dn, base)
}

// exists reports whether the normalised DN names an entry of the view (or
// the view's own suffix chain).
func (v *view) exists(ndn string) bool {
	_, ok := v.byNDN[ndn]
	return ok
}

// plan returns candidate entries for f from the equality and substring
// indexes, in no particular order, or ok=false when the filter needs a
// scan. Candidates are still checked against the whole filter.
func (v *view) plan(f *lfilter) ([]*entry, bool) {
	switch f.kind {
	case fEqual:
		if f.t == nil {
			return nil, true // Undefined everywhere: nothing matches
		}
		idx := v.eq[f.t]
		if idx == nil {
			return nil, false
		}
		return idx.lookup(f.nval), true
	case fSubstr:
		if f.t == nil || !f.t.substr {
			return nil, true // Undefined everywhere: nothing matches
		}
		if x := v.sub[f.t]; x != nil {
			return x.candidates(f)
		}
		return nil, false
	case fAnd:
		var best []*entry
		found := false
		for _, k := range f.kids {
			if c, ok := v.plan(k); ok && (!found || len(c) < len(best)) {
				best, found = c, true
			}
		}
		return best, found
	case fOr:
		var all []*entry
		seen := map[*entry]bool{}
		for _, k := range f.kids {
			c, ok := v.plan(k)
			if !ok {
				return nil, false
			}
			for _, e := range c {
				if !seen[e] {
					seen[e] = true
					all = append(all, e)
				}
			}
		}
		return all, true
	}
	return nil, false
}

// run calls emit for every entry matching q, in key order, until emit
// returns false. It must be called with v.mu held for reading.
func (v *view) run(q query, emit func(*entry) bool) {
	check := func(e *entry) bool {
		if e.key <= q.after && q.after != "" {
			return true
		}
		if !inScope(e.ndn, q.base, q.scope) {
			return true
		}
		if q.filter.match(e) != trueT {
			return true
		}
		return emit(e)
	}
	if q.scope == scopeBase {
		if e := v.byNDN[q.base]; e != nil {
			check(e)
		}
		return
	}
	if cands, ok := v.plan(q.filter); ok {
		sorted := make([]*entry, len(cands))
		copy(sorted, cands)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i].key < sorted[j].key })
		for _, e := range sorted {
			if !check(e) {
				return
			}
		}
		return
	}
	lists := [][]*entry{v.containers}
	if isUnder(v.peopleDN, q.base) || q.base == v.peopleDN {
		lists = append(lists, v.userList)
	}
	if isUnder(v.groupsDN, q.base) || q.base == v.groupsDN {
		lists = append(lists, v.groupList)
	}
	for _, l := range lists {
		start := 0
		if q.after != "" {
			start = sort.Search(len(l), func(i int) bool { return l[i].key > q.after })
		}
		for _, e := range l[start:] {
			if !check(e) {
				return
			}
		}
	}
}

// selection is the parsed attribute list of a search request.
type selection struct {
	all, operational, none bool
	names                  map[*attrType]bool
}

func parseSelection(attrs []string) selection {
	s := selection{names: map[*attrType]bool{}}
	if len(attrs) == 0 {
		s.all = true
	}
	for _, a := range attrs {
		switch a = strings.TrimSpace(a); a {
		case "*":
			s.all = true
		case "+":
			s.operational = true
		case "1.1":
			s.none = true
		case "":
		default:
			if t := lookupAttr(baseAttr(a)); t != nil {
				s.names[t] = true
			}
		}
	}
	if s.none && (s.all || s.operational || len(s.names) > 0) {
		s.none = false // "1.1" with other attributes is ignored (RFC 4511)
	}
	return s
}

// wants reports whether sel asks for attribute i of e.
func (sel selection) wants(e *entry, i int) bool {
	if sel.none {
		return false
	}
	if i < e.nUser {
		return sel.all || sel.names[e.refs[i].t]
	}
	return sel.operational || sel.names[e.refs[i].t]
}

// synthetic reports whether sel asks for the generated operational
// attribute t (entryDN, subschemaSubentry) of a directory entry.
func (sel selection) synthetic(e *entry, t *attrType) bool {
	return e.key != "" && !sel.none && (sel.operational || sel.names[t])
}

// sortKey is one key of a server-side sort request (RFC 2891).
type sortKey struct {
	t       *attrType
	reverse bool
}

// sortEntries orders es by the keys; entries without a value sort last.
func sortEntries(es []*entry, keys []sortKey) {
	val := func(e *entry, k sortKey) (string, bool) {
		a, ok := e.get(k.t)
		if !ok || len(a.vals) == 0 {
			return "", false
		}
		m := k.t.normalize(a.vals[0])
		for _, v := range a.vals[1:] {
			if n := k.t.normalize(v); n < m {
				m = n
			}
		}
		return m, true
	}
	// Sort keys are computed once per entry, not per comparison.
	type keyed struct {
		vals []string
		has  []bool
	}
	ks := make(map[*entry]keyed, len(es))
	for _, e := range es {
		kd := keyed{vals: make([]string, len(keys)), has: make([]bool, len(keys))}
		for i, k := range keys {
			kd.vals[i], kd.has[i] = val(e, k)
		}
		ks[e] = kd
	}
	sort.SliceStable(es, func(i, j int) bool {
		ki, kj := ks[es[i]], ks[es[j]]
		for n, k := range keys {
			a, aok := ki.vals[n], ki.has[n]
			b, bok := kj.vals[n], kj.has[n]
			if aok != bok {
				return aok
			}
			if a == b {
				continue
			}
			if k.reverse {
				return a > b
			}
			return a < b
		}
		return false
	})
}
