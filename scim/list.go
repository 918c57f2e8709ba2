package scim

import (
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

const schemaListResponse = "urn:ietf:params:scim:api:messages:2.0:ListResponse"

// listQuery is a parsed list request (RFC 7644 §3.4.2). Unknown query
// parameters, such as Entra's ?aadOptscim062020, are ignored.
type listQuery struct {
	filter     Filter
	startIndex int // 1-based
	count      int
	sortBy     *AttrPath
	descending bool
	projection projection
}

// projection is the attributes / excludedAttributes selection.
type projection struct {
	attributes []AttrPath
	excluded   []AttrPath
}

func parseProjection(q url.Values) (projection, error) {
	var p projection
	var err error
	if p.attributes, err = parsePathList(q.Get("attributes"), "attributes"); err != nil {
		return p, err
	}
	if p.excluded, err = parsePathList(q.Get("excludedAttributes"), "excludedAttributes"); err != nil {
		return p, err
	}
	return p, nil
}

// parsePathList reads a comma-separated attribute list. A value filter in
// an entry (attributes=emails[type eq "work"]) selects the attribute.
func parsePathList(s, param string) ([]AttrPath, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []AttrPath
	depth, start := 0, 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) {
			switch s[i] {
			case '[':
				depth++
				continue
			case ']':
				depth--
				continue
			case ',':
				if depth > 0 {
					continue
				}
			default:
				continue
			}
		}
		item := strings.TrimSpace(s[start:i])
		start = i + 1
		if item == "" {
			continue
		}
		p, err := ParsePath(item)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "invalidPath", "%s: %q: %v", param, item, err)
		}
		p.Filter = nil
		out = append(out, p)
	}
	return out, nil
}

func (h *Handler) parseList(r *http.Request) (listQuery, error) {
	q := r.URL.Query()
	lq := listQuery{startIndex: 1, count: h.cfg.DefaultCount}
	if f := strings.TrimSpace(q.Get("filter")); f != "" {
		if len(f) > maxFilterLen {
			return lq, &FilterError{0, fmt.Sprintf("filter is longer than %d bytes", maxFilterLen)}
		}
		parsed, err := ParseFilter(f)
		if err != nil {
			return lq, err
		}
		lq.filter = parsed
	}
	if s := q.Get("startIndex"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			return lq, errorf(http.StatusBadRequest, "invalidValue", "startIndex %q is not an integer", s)
		}
		lq.startIndex = max(n, 1) // RFC 7644: less than 1 is 1
	}
	if s := q.Get("count"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			return lq, errorf(http.StatusBadRequest, "invalidValue", "count %q is not an integer", s)
		}
		lq.count = max(n, 0)
	}
	lq.count = min(lq.count, h.cfg.MaxResults)
	if s := q.Get("sortBy"); s != "" {
		p, err := ParsePath(s)
		if err != nil {
			return lq, errorf(http.StatusBadRequest, "invalidPath", "sortBy %q: %v", s, err)
		}
		lq.sortBy = &p
	}
	switch strings.ToLower(q.Get("sortOrder")) {
	case "", "ascending":
	case "descending":
		lq.descending = true
	default:
		return lq, errorf(http.StatusBadRequest, "invalidValue", "sortOrder must be ascending or descending, not %q", q.Get("sortOrder"))
	}
	var err error
	lq.projection, err = parseProjection(q)
	return lq, err
}

// sortDocs orders docs by the first value of the sortBy attribute; those
// without a value go last (RFC 7644 §3.4.2.3).
func sortDocs(docs []map[string]any, rs resourceSchemas, by AttrPath, desc bool) {
	_, def := rs.attr(by)
	caseExact := def != nil && def.CaseExact
	key := func(d map[string]any) (string, bool) {
		vs := rs.leaves(d, by)
		if len(vs) == 0 {
			return "", false
		}
		var s string
		switch x := vs[0].(type) {
		case string:
			s = x
		case bool:
			s = strconv.FormatBool(x)
		case float64:
			s = strconv.FormatFloat(x, 'f', -1, 64)
		}
		if !caseExact {
			s = strings.ToLower(s)
		}
		return s, true
	}
	keys := make([]string, len(docs))
	has := make([]bool, len(docs))
	idx := make([]int, len(docs))
	for i, d := range docs {
		keys[i], has[i] = key(d)
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool {
		i, j := idx[a], idx[b]
		if has[i] != has[j] {
			return has[i]
		}
		if desc {
			return keys[i] > keys[j]
		}
		return keys[i] < keys[j]
	})
	sorted := make([]map[string]any, len(docs))
	for a, i := range idx {
		sorted[a] = docs[i]
	}
	copy(docs, sorted)
}

// apply returns doc restricted by the projection. id and schemas are always
// returned (RFC 7643 §7 "returned: always").
func (p projection) apply(doc map[string]any, rs resourceSchemas) map[string]any {
	if len(p.attributes) > 0 {
		out := map[string]any{"id": doc["id"], "schemas": doc["schemas"]}
		for _, a := range p.attributes {
			copyPath(out, doc, rs, a)
		}
		doc = out
	}
	for _, a := range p.excluded {
		if strings.EqualFold(a.Attr, "id") && a.Schema == "" {
			continue
		}
		c, _ := rs.container(doc, a)
		if c == nil {
			continue
		}
		v, k, ok := getFold(c, a.Attr)
		if !ok {
			continue
		}
		if a.Sub == "" {
			delete(c, k)
			continue
		}
		for _, e := range asList(v) {
			if m, ok := e.(map[string]any); ok {
				if _, sk, ok := getFold(m, a.Sub); ok {
					delete(m, sk)
				}
			}
		}
	}
	return doc
}

// copyPath copies the attribute (or sub-attribute) p from src into dst.
func copyPath(dst, src map[string]any, rs resourceSchemas, p AttrPath) {
	c, extKey := rs.container(src, p)
	if c == nil {
		return
	}
	v, k, ok := getFold(c, p.Attr)
	if !ok {
		return
	}
	target := dst
	if extKey != "" {
		m, _ := dst[extKey].(map[string]any)
		if m == nil {
			m = map[string]any{}
			dst[extKey] = m
		}
		target = m
	}
	if p.Sub == "" {
		target[k] = v
		return
	}
	switch x := v.(type) {
	case map[string]any:
		if sv, sk, ok := getFold(x, p.Sub); ok {
			m, _ := target[k].(map[string]any)
			if m == nil {
				m = map[string]any{}
				target[k] = m
			}
			m[sk] = sv
		}
	case []any:
		out := make([]any, 0, len(x))
		for _, e := range x {
			if m, ok := e.(map[string]any); ok {
				if sv, sk, ok := getFold(m, p.Sub); ok {
					out = append(out, map[string]any{sk: sv})
				}
			}
		}
		target[k] = out
	}
}

func listResponse(docs []map[string]any, total, start int) map[string]any {
	res := make([]any, len(docs))
	for i, d := range docs {
		res[i] = d
	}
	return map[string]any{
		"schemas":      []string{schemaListResponse},
		"totalResults": total,
		"startIndex":   start,
		"itemsPerPage": len(docs),
		"Resources":    res,
	}
}

// page cuts the window [start-1, start-1+count) from docs.
func page(docs []map[string]any, start, count int) []map[string]any {
	from := start - 1
	if from >= len(docs) {
		return nil
	}
	to := min(from+count, len(docs))
	return docs[from:to]
}
