package scim

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	"github.com/scimldap/scimldap/mapping"
)

// PatchOp is one operation of a PatchOp request (RFC 7644 §3.5.2).
type PatchOp struct {
	Op    string // add, replace or remove, lower-cased
	Path  string
	Value any
	index int // position in the request, for error details
}

// PatchError is a PATCH operation that cannot be applied. ScimType is the
// RFC 7644 error type (invalidSyntax, invalidPath, invalidValue, noTarget,
// mutability).
type PatchError struct {
	Index    int
	ScimType string
	Detail   string
}

func (e *PatchError) Error() string {
	return fmt.Sprintf("operation %d: %s", e.Index, e.Detail)
}

// ParsePatch decodes a PatchOp request body. Key names match in any case
// ("Operations", "Op"), op values too ("Replace").
func ParsePatch(body []byte) ([]PatchOp, error) {
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, &PatchError{-1, "invalidSyntax", "the body is not a JSON object: " + err.Error()}
	}
	raw, _, ok := getFold(doc, "Operations")
	list, isList := raw.([]any)
	if !ok || !isList || len(list) == 0 {
		return nil, &PatchError{-1, "invalidSyntax", `the body needs a non-empty "Operations" list`}
	}
	if len(list) > 1000 {
		return nil, &PatchError{-1, "tooMany", "a PATCH request may hold at most 1000 operations"}
	}
	ops := make([]PatchOp, 0, len(list))
	for i, it := range list {
		m, ok := it.(map[string]any)
		if !ok {
			return nil, &PatchError{i, "invalidSyntax", "each operation must be an object"}
		}
		var op PatchOp
		op.index = i
		if v, _, ok := getFold(m, "op"); ok {
			s, _ := v.(string)
			op.Op = strings.ToLower(s)
		}
		switch op.Op {
		case "add", "replace", "remove":
		default:
			return nil, &PatchError{i, "invalidSyntax", fmt.Sprintf(`"op" must be add, replace or remove, not %v`, m["op"])}
		}
		if v, _, ok := getFold(m, "path"); ok && v != nil {
			s, isStr := v.(string)
			if !isStr {
				return nil, &PatchError{i, "invalidPath", `"path" must be a string`}
			}
			op.Path = strings.TrimSpace(s)
		}
		op.Value, _, _ = getFold(m, "value")
		if op.Op == "remove" && op.Path == "" {
			return nil, &PatchError{i, "noTarget", `a remove operation needs a "path"`}
		}
		if op.Op != "remove" && op.Path == "" {
			if _, isObj := op.Value.(map[string]any); !isObj {
				return nil, &PatchError{i, "invalidValue", `an ` + op.Op + ` operation without a "path" needs an object "value"`}
			}
		}
		ops = append(ops, op)
	}
	return ops, nil
}

// applyPatch applies ops, in order, to doc (a private copy of the resource).
// Either every operation applies or an error is returned; the caller then
// discards doc, so a request is all or nothing.
func applyPatch(doc map[string]any, rs resourceSchemas, ops []PatchOp) error {
	for _, op := range ops {
		var err error
		if op.Path == "" {
			err = applyPathless(doc, rs, op)
		} else {
			var p AttrPath
			p, err = ParsePath(op.Path)
			if err != nil {
				return &PatchError{op.index, "invalidPath", fmt.Sprintf("path %q: %v", op.Path, err)}
			}
			err = applyPath(doc, rs, op, p)
		}
		if err != nil {
			if pe, ok := err.(*PatchError); ok {
				pe.Index = op.index
				return pe
			}
			return &PatchError{op.index, "invalidValue", err.Error()}
		}
	}
	return nil
}

// applyPathless handles an add or replace whose value is an object of
// attributes. Keys may be plain names, dotted (name.givenName), full URN
// paths (urn:…:enterprise:2.0:User:employeeNumber) or a schema URN holding
// an object of that schema's attributes.
func applyPathless(doc map[string]any, rs resourceSchemas, op PatchOp) error {
	obj := op.Value.(map[string]any)
	for k, v := range obj {
		lk := strings.ToLower(k)
		if lk == "schemas" || lk == "id" || lk == "meta" {
			continue // read-only; clients echo them back
		}
		if isSchemaURN(rs, k) {
			inner, ok := v.(map[string]any)
			if !ok {
				return &PatchError{op.index, "invalidValue", fmt.Sprintf("the value of %q must be an object of its attributes", k)}
			}
			for ik, iv := range inner {
				p, err := ParsePath(k + ":" + ik)
				if err != nil {
					return &PatchError{op.index, "invalidPath", fmt.Sprintf("attribute %q of %q: %v", ik, k, err)}
				}
				if strings.EqualFold(k, rs.core.ID) {
					p.Schema = ""
				}
				if err := applyPath(doc, rs, PatchOp{Op: op.Op, Value: iv, index: op.index}, p); err != nil {
					return err
				}
			}
			continue
		}
		p, err := ParsePath(k)
		if err != nil {
			return &PatchError{op.index, "invalidPath", fmt.Sprintf("attribute %q: %v", k, err)}
		}
		if err := applyPath(doc, rs, PatchOp{Op: op.Op, Value: v, index: op.index}, p); err != nil {
			return err
		}
	}
	return nil
}

func isSchemaURN(rs resourceSchemas, k string) bool {
	if strings.EqualFold(k, rs.core.ID) {
		return true
	}
	for _, x := range rs.extensions {
		if strings.EqualFold(k, x.ID) {
			return true
		}
	}
	// An admin's extension: "urn:…:2.0:User" style URNs end in a resource
	// type name, attribute paths end in an attribute.
	if strings.HasPrefix(strings.ToLower(k), "urn:") {
		last := k[strings.LastIndexByte(k, ':')+1:]
		return last == "User" || last == "Group"
	}
	return false
}

// isEmpty reports whether v clears the target: null, "" or an empty list.
func isEmpty(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case string:
		return x == ""
	case []any:
		return len(x) == 0
	}
	return false
}

// containerFor returns the object that holds p's attribute, creating the
// extension object when create is set.
func containerFor(doc map[string]any, rs resourceSchemas, p AttrPath, create bool) map[string]any {
	c, _ := rs.container(doc, p)
	if c != nil || !create {
		return c
	}
	key := p.Schema
	if key == "" || mapping.Lookup(rs.core, p.Attr) == nil {
		for _, x := range rs.extensions {
			if strings.EqualFold(x.ID, p.Schema) || p.Schema == "" && x.Attr(p.Attr) != nil {
				key = x.ID
			}
		}
	}
	m := map[string]any{}
	doc[key] = m
	return m
}

// keyFor returns the key to store attribute name under in c: the existing
// key if one matches in any case, else the schema's canonical spelling.
func keyFor(c map[string]any, def *mapping.Attribute, name string) string {
	if _, k, ok := getFold(c, name); ok {
		return k
	}
	if def != nil {
		return def.Name
	}
	return name
}

func applyPath(doc map[string]any, rs resourceSchemas, op PatchOp, p AttrPath) error {
	if p.Schema == "" && (strings.EqualFold(p.Attr, "id") || strings.EqualFold(p.Attr, "meta")) {
		return &PatchError{op.index, "mutability", fmt.Sprintf("attribute %q is read-only", p.Attr)}
	}
	def, _ := rs.attr(p)
	create := op.Op != "remove" && !isEmpty(op.Value)
	c := containerFor(doc, rs, p, create)
	if c == nil {
		return nil // removing from an extension that is not there
	}
	key := keyFor(c, def, p.Attr)
	multi := def != nil && def.MultiValued
	if def == nil {
		_, multi = c[key].([]any)
	}
	clear := op.Op == "remove" || isEmpty(op.Value)

	switch {
	case p.Filter == nil && p.Sub == "":
		if op.Op == "remove" && multi && !isEmpty(op.Value) {
			// Entra: remove listed members given as a value array.
			c[key] = removeListed(asList(c[key]), op.Value)
			return nil
		}
		if clear {
			delete(c, key)
			return nil
		}
		if multi {
			vals := asList(op.Value)
			if def != nil && def.Type == "complex" {
				for i, v := range vals {
					if s, ok := v.(string); ok {
						vals[i] = map[string]any{"value": s}
					}
				}
			}
			if op.Op == "add" {
				c[key] = appendNew(asList(c[key]), vals)
			} else {
				c[key] = vals
			}
			return nil
		}
		if old, ok := c[key].(map[string]any); ok {
			if nv, ok := op.Value.(map[string]any); ok {
				for k, v := range nv { // complex: merge sub-attributes
					old[keyFor(old, nil, k)] = v
				}
				return nil
			}
		}
		c[key] = op.Value
		return nil

	case p.Filter == nil: // attr.sub
		if multi {
			elems := asList(c[key])
			if len(elems) == 0 && !clear {
				c[key] = []any{map[string]any{p.Sub: op.Value}}
				return nil
			}
			for _, e := range elems {
				if m, ok := e.(map[string]any); ok {
					setSub(m, p.Sub, op.Value, clear)
				}
			}
			return nil
		}
		m, ok := c[key].(map[string]any)
		if !ok {
			if clear {
				return nil
			}
			m = map[string]any{}
			c[key] = m
		}
		setSub(m, p.Sub, op.Value, clear)
		if len(m) == 0 {
			delete(c, key)
		}
		return nil
	}

	// attr[filter] or attr[filter].sub
	elems := asList(c[key])
	var hits []map[string]any
	var keep []any
	for _, e := range elems {
		m, ok := e.(map[string]any)
		if ok && rs.matchElement(m, p.Filter) {
			hits = append(hits, m)
			if op.Op == "remove" && p.Sub == "" {
				continue
			}
		}
		keep = append(keep, e)
	}
	if op.Op == "remove" && p.Sub == "" {
		if len(keep) == 0 {
			delete(c, key)
		} else {
			c[key] = keep
		}
		return nil
	}
	if len(hits) == 0 {
		if clear {
			return nil
		}
		// Entra adds or replaces emails[type eq "work"].value on a user that
		// has no work email: create the element the filter describes.
		seed, ok := equalities(p.Filter)
		if !ok {
			return &PatchError{op.index, "noTarget", fmt.Sprintf("no element of %q matches %s", p.Attr, p.Filter)}
		}
		if p.Sub != "" {
			seed[p.Sub] = op.Value
		} else if nv, ok := op.Value.(map[string]any); ok {
			for k, v := range nv {
				seed[k] = v
			}
		} else {
			return &PatchError{op.index, "invalidValue", fmt.Sprintf("the value for %q must be an object", p.String())}
		}
		c[key] = append(elems, seed)
		return nil
	}
	for _, m := range hits {
		if p.Sub != "" {
			setSub(m, p.Sub, op.Value, clear)
			continue
		}
		if clear {
			for k := range m {
				delete(m, k)
			}
			continue
		}
		nv, ok := op.Value.(map[string]any)
		if !ok {
			return &PatchError{op.index, "invalidValue", fmt.Sprintf("the value for %q must be an object", p.String())}
		}
		for k, v := range nv {
			m[keyFor(m, nil, k)] = v
		}
	}
	return nil
}

func setSub(m map[string]any, sub string, v any, clear bool) {
	k := keyFor(m, nil, sub)
	if clear {
		delete(m, k)
		return
	}
	m[k] = v
}

// equalities extracts sub-attribute values fixed by a value filter made
// only of eq comparisons joined by and, e.g. type eq "work".
func equalities(f Filter) (map[string]any, bool) {
	switch x := f.(type) {
	case *CompareExpr:
		if x.Op != "eq" || x.Path.Sub != "" || x.Path.Filter != nil || x.Path.Schema != "" {
			return nil, false
		}
		return map[string]any{x.Path.Attr: x.Value}, true
	case *LogicalExpr:
		if x.Op != "and" {
			return nil, false
		}
		l, ok1 := equalities(x.Left)
		r, ok2 := equalities(x.Right)
		if !ok1 || !ok2 {
			return nil, false
		}
		for k, v := range r {
			l[k] = v
		}
		return l, true
	}
	return nil, false
}

func asList(v any) []any {
	switch x := v.(type) {
	case nil:
		return nil
	case []any:
		return x
	}
	return []any{v}
}

// valueOf returns the "value" of a multi-valued element (or the element
// itself when it is a bare value), for identity comparisons.
func valueOf(e any) any {
	if m, ok := e.(map[string]any); ok {
		v, _, _ := getFold(m, "value")
		return v
	}
	return e
}

// appendNew appends the values not already present (same "value", or equal
// elements when there is no value), so adding an existing member is a no-op.
func appendNew(list, add []any) []any {
	for _, a := range add {
		dup := false
		av := valueOf(a)
		for i, e := range list {
			if av != nil && reflect.DeepEqual(valueOf(e), av) {
				dup = true
				if am, ok := a.(map[string]any); ok { // refresh display and friends
					if em, ok := e.(map[string]any); ok {
						for k, v := range am {
							em[keyFor(em, nil, k)] = v
						}
						list[i] = em
					}
				}
				break
			}
			if av == nil && reflect.DeepEqual(e, a) {
				dup = true
				break
			}
		}
		if !dup {
			list = append(list, a)
		}
	}
	return list
}

func removeListed(list []any, remove any) []any {
	gone := map[any]bool{}
	for _, r := range asList(remove) {
		if v := valueOf(r); v != nil {
			if s, ok := v.(string); ok {
				gone[s] = true
			}
		}
	}
	out := list[:0:0]
	for _, e := range list {
		if s, ok := valueOf(e).(string); ok && gone[s] {
			continue
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
