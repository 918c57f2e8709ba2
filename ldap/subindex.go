package ldap

import (
	"context"
	"slices"
)

// subIndexed are the attributes with a substring index: what phone books
// search while the user types, e.g. (|(cn=*ros*)(sn=*ros*)). Without it
// such a search scans every entry, which is cheap when many entries match
// (the size limit ends it early) but costly when few or none do.
var subIndexed = []string{"cn", "sn", "givenName", "mail"}

// subCap bounds a trigram's posting list. A trigram held by more entries
// is too common to narrow a search (a scan finds the first matches as
// fast), so it stops being indexed; this also keeps maintenance and memory
// small, as common trigrams hold most postings.
const subCap = 4096

// subIndex maps each trigram (three bytes of a normalised value) to the
// entries holding it. A substring filter's normalised components are
// substrings of a matching value's normalised form, so every trigram of a
// component is in that value: any one trigram's list holds every match.
type subIndex struct {
	t     *attrType
	lists map[uint32][]*entry
	full  map[uint32]bool // trigrams past subCap: not indexed
}

func newSubIndex(t *attrType) *subIndex {
	return &subIndex{t: t, lists: map[uint32][]*entry{}, full: map[uint32]bool{}}
}

// appendTrigrams appends every trigram of s to dst, repeats included.
func appendTrigrams(dst []uint32, s string) []uint32 {
	for i := 0; i+3 <= len(s); i++ {
		dst = append(dst, uint32(s[i])<<16|uint32(s[i+1])<<8|uint32(s[i+2]))
	}
	return dst
}

// entryTrigrams returns the distinct trigrams of e's values of x's attribute.
func (x *subIndex) entryTrigrams(e *entry, scratch []uint32) []uint32 {
	scratch = scratch[:0]
	for i := range e.refs {
		if e.refs[i].t != x.t {
			continue
		}
		for _, v := range e.view(i).vals {
			scratch = appendTrigrams(scratch, x.t.normalize(v))
		}
	}
	slices.Sort(scratch)
	return slices.Compact(scratch)
}

func (x *subIndex) add(e *entry, scratch []uint32) []uint32 {
	scratch = x.entryTrigrams(e, scratch)
	for _, tg := range scratch {
		if x.full[tg] {
			continue
		}
		l := x.lists[tg]
		if len(l) >= subCap {
			delete(x.lists, tg)
			x.full[tg] = true
			continue
		}
		x.lists[tg] = append(l, e)
	}
	return scratch
}

func (x *subIndex) remove(e *entry, scratch []uint32) []uint32 {
	scratch = x.entryTrigrams(e, scratch)
	for _, tg := range scratch {
		l, ok := x.lists[tg]
		if !ok {
			continue
		}
		for i, y := range l {
			if y == e {
				l[i] = l[len(l)-1]
				l = l[:len(l)-1]
				break
			}
		}
		if len(l) == 0 {
			delete(x.lists, tg)
		} else {
			x.lists[tg] = l
		}
	}
	return scratch
}

// candidates returns entries that include every match of substring filter
// f (the shortest usable posting list), or ok=false when no component has
// an indexed trigram.
func (x *subIndex) candidates(f *lfilter) (c []*entry, ok bool) {
	var tgs []uint32
	for _, comp := range append([]string{f.init, f.final}, f.any...) {
		tgs = appendTrigrams(tgs, comp)
	}
	for _, tg := range tgs {
		if x.full[tg] {
			continue
		}
		l := x.lists[tg]
		if len(l) == 0 {
			return nil, true // no entry holds this trigram: nothing matches
		}
		if !ok || len(l) < len(c) {
			c, ok = l, true
		}
	}
	return c, ok
}

// subBuildHook, when set by a test, runs while the indexes are built.
var subBuildHook func(*view)

// subOp is a placement recorded while the substring indexes are built.
type subOp struct {
	e   *entry
	add bool
}

// buildSubIndexes builds v's substring indexes in the background, so that
// loading a view is not slowed by them; until they are in place,
// substring filters scan. Placements made meanwhile are logged and
// replayed. It gives up when ctx (the server's) ends.
func (v *view) buildSubIndexes(ctx context.Context) {
	v.mu.Lock()
	v.subLog, v.subBuilding = nil, true
	entries := make([]*entry, 0, len(v.userList)+len(v.groupList))
	entries = append(append(entries, v.userList...), v.groupList...)
	v.mu.Unlock()
	if subBuildHook != nil {
		subBuildHook(v)
	}

	idx := map[*attrType]*subIndex{}
	for _, n := range subIndexed {
		t := registerAttr(n)
		idx[t] = newSubIndex(t)
	}
	done := make(chan struct{})
	for _, x := range idx { // one goroutine per attribute: the maps are independent
		go func() {
			defer func() { done <- struct{}{} }()
			var scratch []uint32
			for i, e := range entries {
				if i%4096 == 0 && ctx.Err() != nil {
					return
				}
				scratch = x.add(e, scratch)
			}
			for tg, l := range x.lists { // drop the slack growth left
				x.lists[tg] = slices.Clone(l)
			}
		}()
	}
	for range idx {
		<-done
	}
	if ctx.Err() != nil {
		v.mu.Lock()
		v.subLog, v.subBuilding = nil, false
		v.mu.Unlock()
		return
	}

	v.mu.Lock()
	var scratch []uint32
	for _, op := range v.subLog {
		for _, x := range idx {
			if op.add {
				scratch = x.add(op.e, scratch)
			} else {
				scratch = x.remove(op.e, scratch)
			}
		}
	}
	v.sub, v.subLog, v.subBuilding = idx, nil, false
	v.mu.Unlock()
	close(v.subReady)
}

// subPlace keeps the substring indexes current as e is placed (add) or
// removed; v.mu is held for writing.
func (v *view) subPlace(e *entry, add bool) {
	if v.subBuilding {
		v.subLog = append(v.subLog, subOp{e, add})
		return
	}
	for _, x := range v.sub {
		if add {
			v.subScratch = x.add(e, v.subScratch)
		} else {
			v.subScratch = x.remove(e, v.subScratch)
		}
	}
}
