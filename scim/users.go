package scim

import (
	"errors"
	"net/http"

	"github.com/scimldap/scimldap/mapping"
	"github.com/scimldap/scimldap/store"
)

// userDoc renders u with its groups and its manager's display name.
func (h *Handler) userDoc(r *http.Request, t *tenantCtx, u *store.User) (map[string]any, error) {
	groups, err := h.store.GroupsOf(r.Context(), t.name, u.ID)
	if err != nil {
		return nil, err
	}
	var mgr *store.User
	if id := u.Enterprise.Manager; id != "" {
		if m, err := h.store.User(r.Context(), t.name, id); err == nil {
			mgr = &m
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
	}
	return mapping.UserResource(u, t.links, groups, mgr), nil
}

func (h *Handler) writeUser(w http.ResponseWriter, r *http.Request, t *tenantCtx, u *store.User, status int) error {
	proj, err := parseProjection(r.URL.Query())
	if err != nil {
		return err
	}
	doc, err := h.userDoc(r, t, u)
	if err != nil {
		return err
	}
	w.Header().Set("ETag", mapping.ETag(u.Meta.Version))
	if status == http.StatusCreated {
		w.Header().Set("Location", t.links.Base+"/Users/"+u.ID)
	}
	writeJSON(w, status, proj.apply(doc, userSchemas))
	return nil
}

// userFromBody reads and checks a POST or PUT body.
func (h *Handler) userFromBody(r *http.Request, t *tenantCtx) (store.User, error) {
	doc, err := readResource(r)
	if err != nil {
		return store.User{}, err
	}
	u, err := mapping.UserFromResource(doc)
	if err != nil {
		return u, err
	}
	if u.UserName == "" {
		return u, errorf(http.StatusBadRequest, "invalidValue", "userName is required: every User needs a userName (Entra's default mapping sends userPrincipalName)")
	}
	return u, checkUser(&u, t.opts)
}

func (h *Handler) createUser(w http.ResponseWriter, r *http.Request, t *tenantCtx) error {
	u, err := h.userFromBody(r, t)
	if err != nil {
		return err
	}
	u, err = h.store.CreateUser(r.Context(), t.name, u)
	if err != nil {
		return err
	}
	return h.writeUser(w, r, t, &u, http.StatusCreated)
}

func (h *Handler) getUser(w http.ResponseWriter, r *http.Request, t *tenantCtx) error {
	u, err := h.store.User(r.Context(), t.name, r.PathValue("id"))
	if err != nil {
		return notFound(err, "User", r.PathValue("id"))
	}
	return h.writeUser(w, r, t, &u, http.StatusOK)
}

func notFound(err error, kind, id string) error {
	if errors.Is(err, store.ErrNotFound) {
		return errorf(http.StatusNotFound, "", "%s %s not found", kind, id)
	}
	return err
}

func (h *Handler) replaceUser(w http.ResponseWriter, r *http.Request, t *tenantCtx) error {
	id := r.PathValue("id")
	ver, err := ifMatch(r)
	if err != nil {
		return err
	}
	nu, err := h.userFromBody(r, t)
	if err != nil {
		return err
	}
	u, err := h.store.UpdateUser(r.Context(), t.name, id, ver, func(u *store.User) error {
		*u = nu
		return nil
	})
	if err != nil {
		return notFound(err, "User", id)
	}
	return h.writeUser(w, r, t, &u, http.StatusOK)
}

// patchUser applies a PatchOp request atomically: the operations run on a
// copy of the resource, and the result is stored only if every one of them
// applies and nothing changed the user meanwhile.
func (h *Handler) patchUser(w http.ResponseWriter, r *http.Request, t *tenantCtx) error {
	id := r.PathValue("id")
	ver, ops, err := readPatch(r)
	if err != nil {
		return err
	}
	u, err := h.store.UpdateUser(r.Context(), t.name, id, ver, func(u *store.User) error {
		doc := mapping.UserResource(u, t.links, nil, nil)
		if err := applyPatch(doc, userSchemas, ops); err != nil {
			return err
		}
		nu, err := mapping.UserFromResource(doc)
		if err != nil {
			return err
		}
		if nu.UserName == "" {
			return errorf(http.StatusBadRequest, "mutability", "userName is required and cannot be removed")
		}
		if err := checkUser(&nu, t.opts); err != nil {
			return err
		}
		*u = nu
		return nil
	})
	if err != nil {
		return notFound(err, "User", id)
	}
	return patched(w, r, u.Meta.Version, func() error { return h.writeUser(w, r, t, &u, http.StatusOK) })
}

func (h *Handler) deleteUser(w http.ResponseWriter, r *http.Request, t *tenantCtx) error {
	id := r.PathValue("id")
	if err := h.store.DeleteUser(r.Context(), t.name, id); err != nil {
		return notFound(err, "User", id)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *Handler) listUsers(w http.ResponseWriter, r *http.Request, t *tenantCtx) error {
	lq, err := h.parseList(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	var docs []map[string]any
	total := 0
	keep := func(u *store.User, doc map[string]any) {
		total++
		// Without sorting only the requested window is kept in memory.
		if lq.sortBy != nil || total >= lq.startIndex && total < lq.startIndex+lq.count {
			docs = append(docs, doc)
		}
	}
	lookups, planned := []lookup(nil), false
	if lq.filter != nil {
		lookups, planned = planUsers(lq.filter)
	}
	switch {
	case planned:
		seen := map[string]bool{}
		for _, lk := range lookups {
			var us []store.User
			if lk.index == "" {
				u, err := h.store.User(ctx, t.name, lk.value)
				if err == nil {
					us = []store.User{u}
				} else if !errors.Is(err, store.ErrNotFound) {
					return err
				}
			} else if us, err = h.store.LookupUsers(ctx, t.name, lk.index, lk.value); err != nil {
				return err
			}
			for i := range us {
				if seen[us[i].ID] {
					continue
				}
				seen[us[i].ID] = true
				doc := mapping.UserResource(&us[i], t.links, nil, nil)
				if userSchemas.Match(doc, lq.filter) {
					keep(&us[i], doc)
				}
			}
		}
	case lq.filter == nil && lq.sortBy == nil:
		n, err := h.store.CountUsers(ctx, t.name)
		if err != nil {
			return err
		}
		i := 0
		err = h.store.ScanUsers(ctx, t.name, func(u *store.User) error {
			i++
			if i < lq.startIndex {
				return nil
			}
			if len(docs) >= lq.count {
				return store.ErrStop
			}
			docs = append(docs, mapping.UserResource(u, t.links, nil, nil))
			return nil
		})
		if err != nil {
			return err
		}
		total = n
	default:
		err := h.store.ScanUsers(ctx, t.name, func(u *store.User) error {
			doc := mapping.UserResource(u, t.links, nil, nil)
			if lq.filter == nil || userSchemas.Match(doc, lq.filter) {
				keep(u, doc)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if lq.sortBy != nil {
		sortDocs(docs, userSchemas, *lq.sortBy, lq.descending)
		docs = page(docs, lq.startIndex, lq.count)
	}
	for i, d := range docs {
		docs[i] = lq.projection.apply(d, userSchemas)
	}
	writeJSON(w, http.StatusOK, listResponse(docs, total, lq.startIndex))
	return nil
}
