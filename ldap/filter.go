package ldap

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// Filter kinds.
const (
	fAnd = iota
	fOr
	fNot
	fEqual
	fGreater // >=
	fLess    // <=
	fApprox
	fPresent
	fSubstr
	fExt
)

// lfilter is a parsed RFC 4515 search filter, with assertion values already
// normalised under each attribute's matching rule.
type lfilter struct {
	kind   int
	kids   []*lfilter
	attr   string    // as written
	t      *attrType // nil: attribute unknown here, evaluates Undefined
	val    string    // assertion value, unescaped
	nval   string    // normalised for t
	init   string    // substrings, normalised
	any    []string
	final  string
	rule   string // extensible matching rule OID or name
	dnAttr bool
}

// FilterError is a filter that does not parse; Pos is the byte offset.
type FilterError struct {
	Pos    int
	Reason string
}

func (e *FilterError) Error() string {
	return fmt.Sprintf("invalid LDAP filter at position %d: %s", e.Pos, e.Reason)
}

const maxFilterDepth = 64

// ParseFilter parses an RFC 4515 filter string. Empty AND and OR, "(&)"
// and "(|)", are accepted (RFC 4526).
func ParseFilter(s string) (*lfilter, error) {
	if len(s) > 16384 {
		return nil, &FilterError{0, "filter longer than 16384 bytes"}
	}
	p := &lparser{s: strings.TrimSpace(s)}
	if p.s == "" {
		return nil, &FilterError{0, "empty filter"}
	}
	if p.s[0] != '(' { // tolerated: a bare item such as "uid=x"
		p.s = "(" + p.s + ")"
	}
	f, err := p.filter(0)
	if err != nil {
		return nil, err
	}
	if p.i != len(p.s) {
		return nil, &FilterError{p.i, "unexpected text after the filter"}
	}
	return f, nil
}

// ValidateFilter reports whether s is a valid RFC 4515 filter; the error
// names the position.
func ValidateFilter(s string) error {
	_, err := ParseFilter(s)
	return err
}

type lparser struct {
	s string
	i int
}

func (p *lparser) errf(format string, args ...any) error {
	return &FilterError{p.i, fmt.Sprintf(format, args...)}
}

func (p *lparser) filter(depth int) (*lfilter, error) {
	if depth > maxFilterDepth {
		return nil, p.errf("filter nested deeper than %d levels", maxFilterDepth)
	}
	if p.i >= len(p.s) || p.s[p.i] != '(' {
		return nil, p.errf(`expected "("`)
	}
	p.i++
	if p.i >= len(p.s) {
		return nil, p.errf("filter ends early")
	}
	var f *lfilter
	var err error
	switch p.s[p.i] {
	case '&', '|':
		f = &lfilter{kind: fAnd}
		if p.s[p.i] == '|' {
			f.kind = fOr
		}
		p.i++
		for p.i < len(p.s) && p.s[p.i] == '(' {
			k, err := p.filter(depth + 1)
			if err != nil {
				return nil, err
			}
			f.kids = append(f.kids, k)
		}
	case '!':
		p.i++
		k, err := p.filter(depth + 1)
		if err != nil {
			return nil, err
		}
		f = &lfilter{kind: fNot, kids: []*lfilter{k}}
	default:
		f, err = p.item()
		if err != nil {
			return nil, err
		}
	}
	if p.i >= len(p.s) || p.s[p.i] != ')' {
		return nil, p.errf(`expected ")"`)
	}
	p.i++
	return f, nil
}

// item parses simple, present, substring and extensible items.
func (p *lparser) item() (*lfilter, error) {
	start := p.i
	for p.i < len(p.s) && !strings.ContainsRune("=~<>()", rune(p.s[p.i])) {
		p.i++
	}
	lhs := p.s[start:p.i]
	if p.i >= len(p.s) || p.s[p.i] == '(' || p.s[p.i] == ')' {
		return nil, &FilterError{start, "expected an attribute, an operator (=, ~=, >=, <=) and a value"}
	}
	var kind int
	switch p.s[p.i] {
	case '=':
		kind = fEqual
		p.i++
	case '~', '>', '<':
		if p.i+1 >= len(p.s) || p.s[p.i+1] != '=' {
			return nil, p.errf("expected %q", string(p.s[p.i])+"=")
		}
		kind = map[byte]int{'~': fApprox, '>': fGreater, '<': fLess}[p.s[p.i]]
		p.i += 2
	}
	vstart := p.i
	for p.i < len(p.s) && p.s[p.i] != ')' {
		if p.s[p.i] == '(' {
			return nil, p.errf(`unescaped "(" in a value; write it as \28`)
		}
		p.i++
	}
	raw := p.s[vstart:p.i]
	f := &lfilter{kind: kind}
	if strings.HasSuffix(lhs, ":") && kind == fEqual { // extensible: attr:dn:rule:=value
		return p.extensible(start, strings.TrimSuffix(lhs, ":"), raw)
	}
	if !validAttrDesc(lhs) {
		return nil, &FilterError{start, fmt.Sprintf("%q is not an attribute description", lhs)}
	}
	f.attr = lhs
	f.t = lookupAttr(baseAttr(lhs))
	if kind == fEqual && raw == "*" {
		f.kind = fPresent
		return f, nil
	}
	if kind == fEqual && hasUnescapedStar(raw) {
		f.kind = fSubstr
		parts := strings.Split(raw, "*")
		for i, part := range parts {
			v, err := unescapeValue(part)
			if err != nil {
				return nil, &FilterError{vstart, err.Error()}
			}
			n := f.norm(v)
			switch {
			case i == 0:
				f.init = n
			case i == len(parts)-1:
				f.final = n
			case n != "":
				f.any = append(f.any, n)
			}
		}
		return f, nil
	}
	v, err := unescapeValue(raw)
	if err != nil {
		return nil, &FilterError{vstart, err.Error()}
	}
	f.val, f.nval = v, f.norm(v)
	return f, nil
}

func (p *lparser) extensible(start int, lhs, raw string) (*lfilter, error) {
	f := &lfilter{kind: fExt}
	parts := strings.Split(lhs, ":")
	f.attr = parts[0]
	for _, q := range parts[1:] {
		switch {
		case strings.EqualFold(q, "dn"):
			f.dnAttr = true
		case q != "" && f.rule == "":
			f.rule = q
		default:
			return nil, &FilterError{start, fmt.Sprintf("bad extensible match %q", lhs+":=")}
		}
	}
	if f.attr == "" && f.rule == "" {
		return nil, &FilterError{start, "an extensible match needs an attribute or a matching rule"}
	}
	if f.attr != "" {
		if !validAttrDesc(f.attr) {
			return nil, &FilterError{start, fmt.Sprintf("%q is not an attribute description", f.attr)}
		}
		f.t = lookupAttr(baseAttr(f.attr))
	}
	v, err := unescapeValue(raw)
	if err != nil {
		return nil, &FilterError{start, err.Error()}
	}
	f.val, f.nval = v, f.norm(v)
	return f, nil
}

func (f *lfilter) norm(v string) string {
	if f.t == nil {
		return strings.ToLower(v)
	}
	return f.t.normalize(v)
}

// baseAttr strips options such as ";binary" or ";lang-en".
func baseAttr(a string) string {
	if i := strings.IndexByte(a, ';'); i >= 0 {
		return a[:i]
	}
	return a
}

func validAttrDesc(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == ';' || c == '_') {
			return false
		}
	}
	return true
}

func hasUnescapedStar(s string) bool { return strings.IndexByte(s, '*') >= 0 }

// unescapeValue decodes RFC 4515 \XX escapes.
func unescapeValue(s string) (string, error) {
	if !strings.Contains(s, "\\") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
			return "", fmt.Errorf(`"\\" must be followed by two hex digits`)
		}
		h, _ := hex.DecodeString(s[i+1 : i+3])
		b.WriteByte(h[0])
		i += 2
	}
	return b.String(), nil
}

// String prints the filter in RFC 4515 form.
func (f *lfilter) String() string {
	var b strings.Builder
	f.write(&b)
	return b.String()
}

func (f *lfilter) write(b *strings.Builder) {
	b.WriteByte('(')
	switch f.kind {
	case fAnd, fOr:
		b.WriteByte("&|"[f.kind])
		for _, k := range f.kids {
			k.write(b)
		}
	case fNot:
		b.WriteByte('!')
		f.kids[0].write(b)
	case fPresent:
		b.WriteString(f.attr + "=*")
	case fSubstr:
		if f.init == "" && len(f.any) == 0 && f.final == "" {
			b.WriteString(f.attr + "=**") // not "=*", which would be presence
			break
		}
		b.WriteString(f.attr + "=" + escapeValue(f.init) + "*")
		for _, a := range f.any {
			b.WriteString(escapeValue(a) + "*")
		}
		b.WriteString(escapeValue(f.final))
	case fExt:
		b.WriteString(f.attr)
		if f.dnAttr {
			b.WriteString(":dn")
		}
		if f.rule != "" {
			b.WriteString(":" + f.rule)
		}
		b.WriteString(":=" + escapeValue(f.val))
	default:
		b.WriteString(f.attr + map[int]string{fEqual: "=", fGreater: ">=", fLess: "<=", fApprox: "~="}[f.kind] + escapeValue(f.val))
	}
	b.WriteByte(')')
}

func escapeValue(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '*' || c == '(' || c == ')' || c == '\\' || c == 0 || c >= 0x80 {
			fmt.Fprintf(&b, "\\%02x", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// tri is a three-valued filter result (RFC 4511 §4.5.1.7).
type tri int8

const (
	undefined tri = -1
	falseT    tri = 0
	trueT     tri = 1
)

// match evaluates f against e; only trueT selects the entry.
func (f *lfilter) match(e *entry) tri {
	switch f.kind {
	case fAnd:
		res := trueT
		for _, k := range f.kids {
			switch k.match(e) {
			case falseT:
				return falseT
			case undefined:
				res = undefined
			}
		}
		return res
	case fOr:
		res := falseT
		for _, k := range f.kids {
			switch k.match(e) {
			case trueT:
				return trueT
			case undefined:
				res = undefined
			}
		}
		return res
	case fNot:
		switch f.kids[0].match(e) {
		case trueT:
			return falseT
		case falseT:
			return trueT
		}
		return undefined
	}
	if f.t == nil {
		if f.kind == fPresent {
			return falseT
		}
		if f.kind == fExt && f.attr == "" {
			return f.matchAnyAttr(e)
		}
		return undefined
	}
	var a *eattr
	if v, ok := e.get(f.t); ok {
		a = &v
	}
	if f.kind == fPresent {
		if a != nil && len(a.vals) > 0 {
			return trueT
		}
		return falseT
	}
	if f.kind == fExt {
		return f.matchExt(e, a)
	}
	if a == nil {
		if f.dnAttr {
			return f.matchDNAttrs(e)
		}
		return falseT
	}
	var scratch [256]byte
	switch f.kind {
	case fEqual, fApprox:
		if f.t.rule == ruleInteger {
			return matchInts(a.vals, f.nval, func(a, b int64) bool { return a == b })
		}
		for _, v := range a.vals {
			if f.t.normInto(scratch[:0], v) == f.nval {
				return trueT
			}
		}
		return falseT
	case fGreater, fLess:
		if !f.t.ordering {
			return undefined
		}
		if f.t.rule == ruleInteger {
			if f.kind == fGreater {
				return matchInts(a.vals, f.nval, func(a, b int64) bool { return a >= b })
			}
			return matchInts(a.vals, f.nval, func(a, b int64) bool { return a <= b })
		}
		for _, raw := range a.vals {
			v := f.t.normInto(scratch[:0], raw)
			if f.kind == fGreater && v >= f.nval || f.kind == fLess && v <= f.nval {
				return trueT
			}
		}
		return falseT
	case fSubstr:
		if !f.t.substr {
			return undefined
		}
		for _, v := range a.vals {
			if matchSubstr(f.t.normInto(scratch[:0], v), f.init, f.any, f.final) {
				return trueT
			}
		}
		return falseT
	}
	return undefined
}

func matchSubstr(v, init string, any []string, final string) bool {
	if !strings.HasPrefix(v, init) {
		return false
	}
	v = v[len(init):]
	for _, a := range any {
		i := strings.Index(v, a)
		if i < 0 {
			return false
		}
		v = v[i+len(a):]
	}
	return strings.HasSuffix(v, final)
}

func matchInts(vals []string, want string, cmp func(a, b int64) bool) tri {
	w, err := strconv.ParseInt(want, 10, 64)
	if err != nil {
		return undefined
	}
	for _, v := range vals {
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && cmp(n, w) {
			return trueT
		}
	}
	return falseT
}

// Matching rules accepted in extensible matches.
const (
	ruleBitAnd = "1.2.840.113556.1.4.803" // LDAP_MATCHING_RULE_BIT_AND
	ruleBitOr  = "1.2.840.113556.1.4.804" // LDAP_MATCHING_RULE_BIT_OR
)

func (f *lfilter) matchExt(e *entry, a *eattr) tri {
	switch strings.ToLower(f.rule) {
	case ruleBitAnd, ruleBitOr:
		if f.t.rule != ruleInteger {
			return undefined
		}
		w, err := strconv.ParseInt(f.val, 10, 64)
		if err != nil {
			return undefined
		}
		if a == nil {
			return falseT
		}
		for _, v := range a.vals {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				continue
			}
			if f.rule == ruleBitAnd && n&w == w || f.rule == ruleBitOr && n&w != 0 {
				return trueT
			}
		}
		return falseT
	case "", "2.5.13.2", "caseignorematch", "2.5.13.5", "caseexactmatch", "2.5.13.1", "distinguishednamematch", "2.5.13.20", "telephonenumbermatch", "2.5.13.14", "integermatch":
		exact := strings.EqualFold(f.rule, "2.5.13.5") || strings.EqualFold(f.rule, "caseExactMatch")
		if a != nil {
			var scratch [256]byte
			for _, v := range a.vals {
				if exact && v == f.val || !exact && f.t.normInto(scratch[:0], v) == f.nval {
					return trueT
				}
			}
		}
		if f.dnAttr {
			return f.matchDNAttrs(e)
		}
		return falseT
	}
	return undefined
}

// matchDNAttrs implements ":dn": the RDN values of the entry's DN count as
// values of the attribute.
func (f *lfilter) matchDNAttrs(e *entry) tri {
	rdns, err := parseDN(e.dn)
	if err != nil {
		return falseT
	}
	for _, r := range rdns {
		if strings.EqualFold(r.attr, baseAttr(f.attr)) && f.norm(r.value) == f.nval {
			return trueT
		}
	}
	return falseT
}

// matchAnyAttr implements an extensible match with a rule but no attribute:
// any attribute whose values match.
func (f *lfilter) matchAnyAttr(e *entry) tri {
	res := falseT
	for i := 0; i < e.nUser; i++ {
		a := e.view(i)
		g := *f
		g.t, g.attr = a.t, a.t.name
		g.nval = g.t.normalize(f.val)
		switch g.matchExt(e, &a) {
		case trueT:
			return trueT
		case undefined:
			res = undefined
		}
	}
	return res
}
