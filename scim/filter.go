package scim

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Filter is a parsed SCIM filter (RFC 7644 §3.4.2.2). Its String method
// prints a form that parses back to an equal filter.
type Filter interface {
	String() string
}

// AttrPath is an attribute path: an optional schema URN, an attribute, an
// optional value filter on a multi-valued attribute, and an optional
// sub-attribute, as in urn:…:User:manager, name.familyName or
// emails[type eq "work"].value.
type AttrPath struct {
	Schema string // "" or the schema URN, as written
	Attr   string
	Filter Filter // value filter inside [ ], or nil
	Sub    string // sub-attribute, or ""
}

func (p AttrPath) String() string {
	var b strings.Builder
	if p.Schema != "" {
		b.WriteString(p.Schema)
		b.WriteByte(':')
	}
	b.WriteString(p.Attr)
	if p.Filter != nil {
		b.WriteByte('[')
		b.WriteString(p.Filter.String())
		b.WriteByte(']')
	}
	if p.Sub != "" {
		b.WriteByte('.')
		b.WriteString(p.Sub)
	}
	return b.String()
}

// CompareExpr is "path op value" or "path pr".
type CompareExpr struct {
	Path  AttrPath
	Op    string // eq ne co sw ew gt ge lt le pr (lower case)
	Value any    // string, float64, bool or nil; unused for pr
	// Raw is the source text of an unquoted value, so that externalId eq
	// 00123 compares as the string "00123" against a string attribute.
	Raw string
}

func (e *CompareExpr) String() string {
	if e.Op == "pr" {
		return e.Path.String() + " pr"
	}
	var v string
	switch x := e.Value.(type) {
	case string:
		b, _ := json.Marshal(x)
		v = string(b)
	case float64:
		v = strconv.FormatFloat(x, 'g', -1, 64)
		if e.Raw != "" {
			v = e.Raw
		}
	case bool:
		v = strconv.FormatBool(x)
	default:
		v = "null"
	}
	return e.Path.String() + " " + e.Op + " " + v
}

// LogicalExpr is "left and right" or "left or right".
type LogicalExpr struct {
	Op          string // "and" or "or"
	Left, Right Filter
}

func (e *LogicalExpr) String() string {
	return "(" + e.Left.String() + " " + e.Op + " " + e.Right.String() + ")"
}

// NotExpr is "not (x)".
type NotExpr struct{ X Filter }

func (e *NotExpr) String() string { return "not (" + e.X.String() + ")" }

// ValuePathExpr is attr[filter] standing alone: true if any element of the
// multi-valued attribute matches the filter.
type ValuePathExpr struct {
	Path AttrPath // Path.Filter is set, Path.Sub is empty
}

func (e *ValuePathExpr) String() string { return e.Path.String() }

// FilterError is a filter that does not parse; Pos is the byte offset.
type FilterError struct {
	Pos    int
	Reason string
}

func (e *FilterError) Error() string { return fmt.Sprintf("at position %d: %s", e.Pos, e.Reason) }

// maxFilterDepth bounds nesting so that a hostile filter cannot exhaust the
// stack.
const maxFilterDepth = 64

// maxFilterLen bounds the filter a request may send.
const maxFilterLen = 8192

// ParseFilter parses a SCIM filter. Beyond the RFC it accepts what Entra ID
// sends: unquoted values (externalId eq jyoung), operators and attribute
// names in any case, and emails[type eq "work"].value eq "x".
//
// Its work is linear in the length of s and its nesting is bounded; the
// size of a filter a request may send is the caller's limit (maxFilterLen),
// not the parser's, so that a filter's canonical String(), whose escapes
// may make it longer than what was sent, always parses again.
func ParseFilter(s string) (Filter, error) {
	if !utf8.ValidString(s) {
		return nil, &FilterError{0, "filter is not valid UTF-8"}
	}
	p := &filterParser{src: s}
	p.next()
	f, err := p.parseOr(0)
	if err != nil {
		return nil, err
	}
	if p.tok.kind != tokEOF {
		return nil, p.errorf("unexpected %q after a complete filter", p.tok.text)
	}
	return f, nil
}

// ParsePath parses a PATCH path (RFC 7644 §3.5.2): attrPath, or
// valuePath with an optional sub-attribute.
func ParsePath(s string) (AttrPath, error) {
	p := &filterParser{src: s}
	p.next()
	if p.tok.kind != tokWord {
		return AttrPath{}, p.errorf("a path must start with an attribute name")
	}
	path, err := p.parsePath(0)
	if err != nil {
		return AttrPath{}, err
	}
	if p.tok.kind != tokEOF {
		return AttrPath{}, p.errorf("unexpected %q after the path", p.tok.text)
	}
	return path, nil
}

type tokKind int

const (
	tokEOF tokKind = iota
	tokWord
	tokString
	tokLParen
	tokRParen
	tokLBracket
	tokRBracket
)

type token struct {
	kind tokKind
	text string // word text or decoded string
	pos  int
	bad  string // for a string that does not lex: why
}

type filterParser struct {
	src string
	off int
	tok token
}

func (p *filterParser) errorf(format string, args ...any) error {
	return &FilterError{p.tok.pos, fmt.Sprintf(format, args...)}
}

func (p *filterParser) next() {
	for p.off < len(p.src) && (p.src[p.off] == ' ' || p.src[p.off] == '\t' || p.src[p.off] == '\n' || p.src[p.off] == '\r') {
		p.off++
	}
	start := p.off
	if p.off >= len(p.src) {
		p.tok = token{kind: tokEOF, pos: start}
		return
	}
	switch c := p.src[p.off]; c {
	case '(':
		p.off++
		p.tok = token{kind: tokLParen, text: "(", pos: start}
	case ')':
		p.off++
		p.tok = token{kind: tokRParen, text: ")", pos: start}
	case '[':
		p.off++
		p.tok = token{kind: tokLBracket, text: "[", pos: start}
	case ']':
		p.off++
		p.tok = token{kind: tokRBracket, text: "]", pos: start}
	case '"':
		p.tok = p.lexString()
	default:
		for p.off < len(p.src) {
			c := p.src[p.off]
			if c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '(' || c == ')' || c == '[' || c == ']' || c == '"' {
				break
			}
			p.off++
		}
		p.tok = token{kind: tokWord, text: p.src[start:p.off], pos: start}
	}
}

// lexString reads a JSON string literal (RFC 7644 compValue strings are
// JSON strings). An unterminated string is an error token.
func (p *filterParser) lexString() token {
	start := p.off
	i := p.off + 1
	for i < len(p.src) {
		switch p.src[i] {
		case '\\':
			i += 2
			continue
		case '"':
			var s string
			if err := json.Unmarshal([]byte(p.src[start:i+1]), &s); err != nil {
				p.off = len(p.src)
				return token{kind: tokString, pos: start, bad: "invalid escape in string"}
			}
			p.off = i + 1
			return token{kind: tokString, text: s, pos: start}
		}
		i++
	}
	p.off = len(p.src)
	return token{kind: tokString, pos: start, bad: "unterminated string"}
}

func (p *filterParser) isWord(w string) bool {
	return p.tok.kind == tokWord && strings.EqualFold(p.tok.text, w)
}

func (p *filterParser) parseOr(depth int) (Filter, error) {
	left, err := p.parseAnd(depth)
	if err != nil {
		return nil, err
	}
	for p.isWord("or") {
		p.next()
		right, err := p.parseAnd(depth)
		if err != nil {
			return nil, err
		}
		left = &LogicalExpr{"or", left, right}
	}
	return left, nil
}

func (p *filterParser) parseAnd(depth int) (Filter, error) {
	left, err := p.parseUnary(depth)
	if err != nil {
		return nil, err
	}
	for p.isWord("and") {
		p.next()
		right, err := p.parseUnary(depth)
		if err != nil {
			return nil, err
		}
		left = &LogicalExpr{"and", left, right}
	}
	return left, nil
}

func (p *filterParser) parseUnary(depth int) (Filter, error) {
	if depth > maxFilterDepth {
		return nil, p.errorf("filter nests deeper than %d levels", maxFilterDepth)
	}
	switch {
	case p.isWord("not"):
		p.next()
		if p.tok.kind != tokLParen {
			return nil, p.errorf(`"not" must be followed by "("`)
		}
		x, err := p.parseGroup(depth + 1)
		if err != nil {
			return nil, err
		}
		return &NotExpr{x}, nil
	case p.tok.kind == tokLParen:
		return p.parseGroup(depth + 1)
	case p.tok.kind == tokWord:
		return p.parseAttrExpr(depth)
	case p.tok.kind == tokEOF:
		return nil, p.errorf("the filter ends where an expression was expected")
	}
	return nil, p.errorf("unexpected %q where an attribute name was expected", p.tok.text)
}

func (p *filterParser) parseGroup(depth int) (Filter, error) {
	p.next() // (
	f, err := p.parseOr(depth)
	if err != nil {
		return nil, err
	}
	if p.tok.kind != tokRParen {
		return nil, p.errorf(`missing ")"`)
	}
	p.next()
	return f, nil
}

func (p *filterParser) parsePath(depth int) (AttrPath, error) {
	pos := p.tok.pos
	path, err := splitPath(p.tok.text)
	if err != nil {
		return AttrPath{}, &FilterError{pos, err.Error()}
	}
	p.next()
	if p.tok.kind == tokLBracket {
		if path.Sub != "" {
			return AttrPath{}, p.errorf("a value filter must follow the attribute, not its sub-attribute")
		}
		if depth > maxFilterDepth {
			return AttrPath{}, p.errorf("filter nests deeper than %d levels", maxFilterDepth)
		}
		p.next()
		f, err := p.parseOr(depth + 1)
		if err != nil {
			return AttrPath{}, err
		}
		if p.tok.kind != tokRBracket {
			return AttrPath{}, p.errorf(`missing "]"`)
		}
		end := p.tok.pos + 1
		path.Filter = f
		p.next()
		// A sub-attribute may follow directly: emails[type eq "work"].value
		if p.tok.kind == tokWord && p.tok.pos == end && strings.HasPrefix(p.tok.text, ".") {
			sub := p.tok.text[1:]
			if !validName(sub) {
				return AttrPath{}, p.errorf("invalid sub-attribute name %q", sub)
			}
			path.Sub = sub
			p.next()
		}
	}
	return path, nil
}

var compareOps = map[string]bool{"eq": true, "ne": true, "co": true, "sw": true, "ew": true, "gt": true, "ge": true, "lt": true, "le": true}

func (p *filterParser) parseAttrExpr(depth int) (Filter, error) {
	path, err := p.parsePath(depth)
	if err != nil {
		return nil, err
	}
	if path.Filter != nil && path.Sub == "" && (p.tok.kind != tokWord || !compareOps[strings.ToLower(p.tok.text)] && !p.isWord("pr")) {
		return &ValuePathExpr{path}, nil
	}
	if p.tok.kind != tokWord {
		return nil, p.errorf("expected an operator (eq, ne, co, sw, ew, gt, ge, lt, le, pr) after %q", path.String())
	}
	op := strings.ToLower(p.tok.text)
	if op == "pr" {
		p.next()
		return &CompareExpr{Path: path, Op: "pr"}, nil
	}
	if !compareOps[op] {
		return nil, p.errorf("unknown operator %q (expected eq, ne, co, sw, ew, gt, ge, lt, le or pr)", p.tok.text)
	}
	p.next()
	var v any
	switch p.tok.kind {
	case tokString:
		if p.tok.bad != "" {
			return nil, p.errorf("%s", p.tok.bad)
		}
		v = p.tok.text
	case tokWord:
		v = unquotedValue(p.tok.text)
		if _, isNum := v.(float64); isNum {
			raw := p.tok.text
			p.next()
			return &CompareExpr{Path: path, Op: op, Value: v, Raw: raw}, nil
		}
	default:
		return nil, p.errorf("expected a value after %q", op)
	}
	p.next()
	return &CompareExpr{Path: path, Op: op, Value: v}, nil
}

// unquotedValue reads a bare compValue: true, false, null, a number, or
// (Entra's habit) an unquoted string.
func unquotedValue(w string) any {
	switch strings.ToLower(w) {
	case "true":
		return true
	case "false":
		return false
	case "null":
		return nil
	}
	if f, err := strconv.ParseFloat(w, 64); err == nil && (w[0] >= '0' && w[0] <= '9' || w[0] == '-') {
		return f
	}
	return w
}

// splitPath splits "urn:…:User:attr.sub", "attr.sub" or "attr".
func splitPath(w string) (AttrPath, error) {
	var p AttrPath
	rest := w
	if strings.HasPrefix(strings.ToLower(w), "urn:") {
		i := strings.LastIndexByte(w, ':')
		p.Schema, rest = w[:i], w[i+1:]
		if rest == "" {
			return p, fmt.Errorf("the path %q names a schema but no attribute", w)
		}
	}
	attr, sub, _ := strings.Cut(rest, ".")
	if !validName(attr) {
		return p, fmt.Errorf("invalid attribute name %q", attr)
	}
	if strings.Contains(rest, ".") && !validName(sub) {
		return p, fmt.Errorf("invalid sub-attribute name %q", sub)
	}
	p.Attr, p.Sub = attr, sub
	return p, nil
}

// validName checks ATTRNAME = ALPHA *(nameChar), nameChar = "-" / "_" /
// DIGIT / ALPHA, allowing "$ref".
func validName(s string) bool {
	if s == "$ref" {
		return true
	}
	if s == "" || !utf8.ValidString(s) {
		return false
	}
	for i, r := range s {
		alpha := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
		if i == 0 && !alpha {
			return false
		}
		if !alpha && !(r >= '0' && r <= '9') && r != '-' && r != '_' {
			return false
		}
	}
	return true
}
