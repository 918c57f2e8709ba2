package scim

import (
	"strings"

	"github.com/scimldap/scimldap/mapping"
	"github.com/scimldap/scimldap/store"
)

// lookup is one index probe that yields candidates for a filter.
type lookup struct {
	index store.Index // "" means by id
	value string
}

// planUsers returns index probes whose union is a superset of the users
// matching f, or ok=false when f needs a scan. Candidates are always checked
// against the whole filter afterwards, so a plan only has to be complete,
// not exact. Entra's matching queries (userName eq, externalId eq,
// emails[type eq "work"].value eq, id eq … and manager eq …) all plan.
func planUsers(f Filter) ([]lookup, bool) {
	return plan(f, func(p AttrPath) (store.Index, bool) {
		ent := strings.EqualFold(p.Schema, mapping.SchemaEnterprise)
		if p.Schema != "" && !ent && !strings.EqualFold(p.Schema, mapping.SchemaUser) {
			return "", false
		}
		attr := strings.ToLower(p.Attr)
		sub := strings.ToLower(p.Sub)
		if ent || p.Schema == "" && attr == "employeenumber" {
			return store.IndexEmployeeNumber, attr == "employeenumber" && sub == ""
		}
		switch {
		case attr == "id" && sub == "" && p.Filter == nil:
			return "", true
		case attr == "username" && sub == "" && p.Filter == nil:
			return store.IndexUserName, true
		case attr == "externalid" && sub == "" && p.Filter == nil:
			return store.IndexExternalID, true
		case attr == "displayname" && sub == "" && p.Filter == nil:
			return store.IndexDisplayName, true
		case attr == "emails" && (sub == "" || sub == "value"):
			return store.IndexEmail, true
		case attr == "phonenumbers" && (sub == "" || sub == "value"):
			return store.IndexPhone, true
		}
		return "", false
	})
}

// planGroups is planUsers for groups: displayName, externalId and id.
func planGroups(f Filter) ([]lookup, bool) {
	return plan(f, func(p AttrPath) (store.Index, bool) {
		if p.Schema != "" && !strings.EqualFold(p.Schema, mapping.SchemaGroup) || p.Sub != "" || p.Filter != nil {
			return "", false
		}
		switch strings.ToLower(p.Attr) {
		case "id":
			return "", true
		case "displayname":
			return store.IndexGroupName, true
		case "externalid":
			return store.IndexGroupExternal, true
		}
		return "", false
	})
}

func plan(f Filter, indexFor func(AttrPath) (store.Index, bool)) ([]lookup, bool) {
	switch x := f.(type) {
	case *CompareExpr:
		if x.Op != "eq" {
			return nil, false
		}
		v, ok := x.Value.(string)
		if !ok {
			if x.Raw == "" {
				return nil, false
			}
			v = x.Raw
		}
		idx, ok := indexFor(x.Path)
		if !ok {
			return nil, false
		}
		return []lookup{{idx, v}}, true
	case *LogicalExpr:
		l, lok := plan(x.Left, indexFor)
		r, rok := plan(x.Right, indexFor)
		if x.Op == "and" {
			switch {
			case lok && rok && len(r) < len(l):
				return r, true
			case lok:
				return l, true
			case rok:
				return r, true
			}
			return nil, false
		}
		if lok && rok {
			return append(l, r...), true
		}
	}
	return nil, false
}
