package scim

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/scimldap/scimldap/mapping"
	"github.com/scimldap/scimldap/store"
)

// readPatch reads what every PATCH starts with: If-Match and the PatchOp
// body.
func readPatch(r *http.Request) (version uint64, ops []PatchOp, err error) {
	if version, err = ifMatch(r); err != nil {
		return 0, nil, err
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return 0, nil, fmt.Errorf("read body: %w", err)
	}
	ops, err = ParsePatch(body)
	return version, ops, err
}

// patched answers a successful PATCH: 204 with the new ETag, or 200 with
// the resource when the request names attributes to return (RFC 7644
// §3.5.2).
func patched(w http.ResponseWriter, r *http.Request, version uint64, writeBody func() error) error {
	if wantsBody(r) {
		return writeBody()
	}
	w.Header().Set("ETag", mapping.ETag(version))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// wantMembers reports whether a response needs the members list; Entra
// reads groups with excludedAttributes=members so large groups stay cheap.
func wantMembers(p projection) bool {
	for _, a := range p.excluded {
		if strings.EqualFold(a.Attr, "members") && a.Sub == "" {
			return false
		}
	}
	if len(p.attributes) == 0 {
		return true
	}
	for _, a := range p.attributes {
		if strings.EqualFold(a.Attr, "members") {
			return true
		}
	}
	return false
}

func (h *Handler) writeGroup(w http.ResponseWriter, r *http.Request, t *tenantCtx, g *store.Group, status int) error {
	proj, err := parseProjection(r.URL.Query())
	if err != nil {
		return err
	}
	if !wantMembers(proj) {
		g.Members = nil
	}
	w.Header().Set("ETag", mapping.ETag(g.Meta.Version))
	if status == http.StatusCreated {
		w.Header().Set("Location", t.links.Base+"/Groups/"+g.ID)
	}
	writeJSON(w, status, proj.apply(mapping.GroupResource(g, t.links), groupSchemas))
	return nil
}

func groupFromBody(r *http.Request) (store.Group, error) {
	doc, err := readResource(r)
	if err != nil {
		return store.Group{}, err
	}
	g, err := mapping.GroupFromResource(doc)
	if err != nil {
		return g, err
	}
	if strings.TrimSpace(g.DisplayName) == "" {
		return g, errorf(http.StatusBadRequest, "invalidValue", "displayName is required: every Group needs a displayName")
	}
	return g, nil
}

func (h *Handler) createGroup(w http.ResponseWriter, r *http.Request, t *tenantCtx) error {
	g, err := groupFromBody(r)
	if err != nil {
		return err
	}
	g, err = h.store.CreateGroup(r.Context(), t.name, g)
	if err != nil {
		return err
	}
	return h.writeGroup(w, r, t, &g, http.StatusCreated)
}

func (h *Handler) getGroup(w http.ResponseWriter, r *http.Request, t *tenantCtx) error {
	id := r.PathValue("id")
	proj, err := parseProjection(r.URL.Query())
	if err != nil {
		return err
	}
	g, err := h.store.Group(r.Context(), t.name, id, wantMembers(proj))
	if err != nil {
		return notFound(err, "Group", id)
	}
	return h.writeGroup(w, r, t, &g, http.StatusOK)
}

func (h *Handler) replaceGroup(w http.ResponseWriter, r *http.Request, t *tenantCtx) error {
	id := r.PathValue("id")
	ver, err := ifMatch(r)
	if err != nil {
		return err
	}
	ng, err := groupFromBody(r)
	if err != nil {
		return err
	}
	g, err := h.store.UpdateGroup(r.Context(), t.name, id, ver, func(g *store.Group) error {
		*g = ng
		return nil
	})
	if err != nil {
		return notFound(err, "Group", id)
	}
	return h.writeGroup(w, r, t, &g, http.StatusOK)
}

// patchGroup applies a PatchOp request atomically and answers 204: Entra
// does not want member lists back (unless attributes are asked for).
func (h *Handler) patchGroup(w http.ResponseWriter, r *http.Request, t *tenantCtx) error {
	id := r.PathValue("id")
	ver, ops, err := readPatch(r)
	if err != nil {
		return err
	}
	g, err := h.store.UpdateGroup(r.Context(), t.name, id, ver, func(g *store.Group) error {
		doc := mapping.GroupResource(g, t.links)
		if err := applyPatch(doc, groupSchemas, ops); err != nil {
			return err
		}
		ng, err := mapping.GroupFromResource(doc)
		if err != nil {
			return err
		}
		if strings.TrimSpace(ng.DisplayName) == "" {
			return errorf(http.StatusBadRequest, "mutability", "displayName is required and cannot be removed")
		}
		*g = ng
		return nil
	})
	if err != nil {
		return notFound(err, "Group", id)
	}
	return patched(w, r, g.Meta.Version, func() error { return h.writeGroup(w, r, t, &g, http.StatusOK) })
}

func (h *Handler) deleteGroup(w http.ResponseWriter, r *http.Request, t *tenantCtx) error {
	id := r.PathValue("id")
	if err := h.store.DeleteGroup(r.Context(), t.name, id); err != nil {
		return notFound(err, "Group", id)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// filterNeedsMembers reports whether evaluating f reads the members list.
func filterNeedsMembers(f Filter) bool {
	return f != nil && strings.Contains(strings.ToLower(f.String()), "members")
}

func (h *Handler) listGroups(w http.ResponseWriter, r *http.Request, t *tenantCtx) error {
	lq, err := h.parseList(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	withMembers := wantMembers(lq.projection)
	loadMembers := withMembers || filterNeedsMembers(lq.filter)
	var docs []map[string]any
	total := 0
	consider := func(g *store.Group) {
		doc := mapping.GroupResource(g, t.links)
		if lq.filter != nil && !groupSchemas.Match(doc, lq.filter) {
			return
		}
		total++
		if lq.sortBy != nil || total >= lq.startIndex && total < lq.startIndex+lq.count {
			if !withMembers {
				delete(doc, "members")
			}
			docs = append(docs, doc)
		}
	}
	lookups, planned := []lookup(nil), false
	if lq.filter != nil {
		lookups, planned = planGroups(lq.filter)
	}
	if planned {
		seen := map[string]bool{}
		for _, lk := range lookups {
			var gs []store.Group
			if lk.index == "" {
				g, err := h.store.Group(ctx, t.name, lk.value, false)
				if err == nil {
					gs = []store.Group{g}
				} else if !errors.Is(err, store.ErrNotFound) {
					return err
				}
			} else if gs, err = h.store.LookupGroups(ctx, t.name, lk.index, lk.value); err != nil {
				return err
			}
			for i := range gs {
				if seen[gs[i].ID] {
					continue
				}
				seen[gs[i].ID] = true
				if loadMembers {
					if gs[i], err = h.store.Group(ctx, t.name, gs[i].ID, true); err != nil {
						return err
					}
				}
				consider(&gs[i])
			}
		}
	} else {
		err := h.store.ScanGroups(ctx, t.name, loadMembers, func(g *store.Group) error {
			consider(g)
			return nil
		})
		if err != nil {
			return err
		}
	}
	if lq.sortBy != nil {
		sortDocs(docs, groupSchemas, *lq.sortBy, lq.descending)
		docs = page(docs, lq.startIndex, lq.count)
	}
	for i, d := range docs {
		docs[i] = lq.projection.apply(d, groupSchemas)
	}
	writeJSON(w, http.StatusOK, listResponse(docs, total, lq.startIndex))
	return nil
}
