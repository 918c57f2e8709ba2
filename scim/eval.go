package scim

import (
	"strings"
	"time"

	"github.com/scimldap/scimldap/mapping"
)

// resourceSchemas says which schemas describe a resource type, for attribute
// types and case rules during evaluation.
type resourceSchemas struct {
	core       *mapping.Schema
	extensions []*mapping.Schema
}

var (
	userSchemas  = resourceSchemas{&mapping.UserSchema, []*mapping.Schema{&mapping.EnterpriseSchema}}
	groupSchemas = resourceSchemas{&mapping.GroupSchema, nil}
)

// attr returns the definition of p's attribute (and sub-attribute), or nil
// when the schema does not describe it (an admin's extension).
func (rs resourceSchemas) attr(p AttrPath) (attr, sub *mapping.Attribute) {
	var a *mapping.Attribute
	switch {
	case p.Schema == "" || strings.EqualFold(p.Schema, rs.core.ID):
		a = mapping.Lookup(rs.core, p.Attr)
		if a == nil && p.Schema == "" {
			for _, x := range rs.extensions {
				if a = x.Attr(p.Attr); a != nil {
					break
				}
			}
		}
	default:
		for _, x := range rs.extensions {
			if strings.EqualFold(p.Schema, x.ID) {
				a = x.Attr(p.Attr)
			}
		}
	}
	if a == nil {
		return nil, nil
	}
	if p.Sub != "" {
		return a, a.Sub(p.Sub)
	}
	if a.Type == "complex" {
		return a, a.Sub("value")
	}
	return a, a
}

// getFold returns m's value for key k, matching k in any case.
func getFold(m map[string]any, k string) (any, string, bool) {
	if v, ok := m[k]; ok {
		return v, k, true
	}
	for mk, v := range m {
		if strings.EqualFold(mk, k) {
			return v, mk, true
		}
	}
	return nil, "", false
}

// container returns the object holding p's attribute, the resource itself
// or the extension object named by p.Schema, and the extension's key in doc
// ("" for the resource itself).
func (rs resourceSchemas) container(doc map[string]any, p AttrPath) (map[string]any, string) {
	schema := p.Schema
	if schema == "" && mapping.Lookup(rs.core, p.Attr) == nil {
		// An extension attribute named without its URN.
		for _, x := range rs.extensions {
			if x.Attr(p.Attr) != nil {
				schema = x.ID
			}
		}
	}
	if schema == "" || strings.EqualFold(schema, rs.core.ID) {
		return doc, ""
	}
	v, key, _ := getFold(doc, schema)
	m, _ := v.(map[string]any)
	return m, key
}

// leaves returns the values p selects in doc.
func (rs resourceSchemas) leaves(doc map[string]any, p AttrPath) []any {
	c, _ := rs.container(doc, p)
	if c == nil {
		return nil
	}
	v, _, ok := getFold(c, p.Attr)
	if !ok || v == nil {
		return nil
	}
	elems, isList := v.([]any)
	if !isList {
		elems = []any{v}
	}
	var out []any
	for _, e := range elems {
		em, isObj := e.(map[string]any)
		if p.Filter != nil && (!isObj || !rs.matchElement(em, p.Filter)) {
			continue
		}
		switch {
		case p.Sub != "":
			if isObj {
				if sv, _, ok := getFold(em, p.Sub); ok && sv != nil {
					out = append(out, sv)
				}
			}
		case isObj:
			if sv, _, ok := getFold(em, "value"); ok && sv != nil {
				out = append(out, sv)
			} else if p.Filter != nil {
				out = append(out, em)
			}
		default:
			out = append(out, e)
		}
	}
	return out
}

// matchElement evaluates a value filter against one element of a
// multi-valued attribute; its paths name sub-attributes.
func (rs resourceSchemas) matchElement(elem map[string]any, f Filter) bool {
	return match(resourceSchemas{core: &mapping.Schema{}}, elem, f)
}

// Match reports whether doc satisfies f.
func (rs resourceSchemas) Match(doc map[string]any, f Filter) bool { return match(rs, doc, f) }

func match(rs resourceSchemas, doc map[string]any, f Filter) bool {
	switch x := f.(type) {
	case *LogicalExpr:
		if x.Op == "and" {
			return match(rs, doc, x.Left) && match(rs, doc, x.Right)
		}
		return match(rs, doc, x.Left) || match(rs, doc, x.Right)
	case *NotExpr:
		return !match(rs, doc, x.X)
	case *ValuePathExpr:
		return len(rs.leaves(doc, x.Path)) > 0
	case *CompareExpr:
		vals := rs.leaves(doc, x.Path)
		if x.Op == "pr" {
			for _, v := range vals {
				if s, ok := v.(string); !ok || s != "" {
					return true
				}
			}
			return false
		}
		_, def := rs.attr(x.Path)
		if x.Op == "ne" {
			for _, v := range vals {
				if compare(v, "eq", x, def) {
					return false
				}
			}
			return true
		}
		for _, v := range vals {
			if compare(v, x.Op, x, def) {
				return true
			}
		}
	}
	return false
}

// compare applies op to one attribute value and the filter's value, by the
// attribute's type: booleans, numbers, dateTimes, then strings (case-
// insensitive unless the attribute is caseExact).
func compare(have any, op string, e *CompareExpr, def *mapping.Attribute) bool {
	want := e.Value
	switch h := have.(type) {
	case bool:
		var w bool
		switch x := want.(type) {
		case bool:
			w = x
		case string:
			switch strings.ToLower(x) {
			case "true":
				w = true
			case "false":
			default:
				return false
			}
		default:
			return false
		}
		return op == "eq" && h == w
	case float64:
		w, ok := want.(float64)
		if !ok {
			return false
		}
		return ordered(op, cmpFloat(h, w))
	case string:
		ws, ok := want.(string)
		if !ok {
			if e.Raw == "" {
				return false
			}
			ws = e.Raw
		}
		if def != nil && def.Type == "dateTime" {
			ht, err1 := mapping.ParseTime(h)
			wt, err2 := mapping.ParseTime(ws)
			if err1 == nil && err2 == nil {
				return ordered(op, cmpTime(ht, wt))
			}
		}
		if def == nil || !def.CaseExact {
			h, ws = strings.ToLower(h), strings.ToLower(ws)
		}
		switch op {
		case "co":
			return strings.Contains(h, ws)
		case "sw":
			return strings.HasPrefix(h, ws)
		case "ew":
			return strings.HasSuffix(h, ws)
		}
		return ordered(op, strings.Compare(h, ws))
	}
	return false
}

func ordered(op string, c int) bool {
	switch op {
	case "eq":
		return c == 0
	case "gt":
		return c > 0
	case "ge":
		return c >= 0
	case "lt":
		return c < 0
	case "le":
		return c <= 0
	}
	return false
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func cmpTime(a, b time.Time) int { return a.Compare(b) }
