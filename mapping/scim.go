package mapping

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/scimldap/scimldap/store"
)

// ValueError reports an attribute whose value has the wrong shape. Path is
// the SCIM attribute path, for the error detail a client sees.
type ValueError struct {
	Path   string
	Reason string
}

func (e *ValueError) Error() string { return fmt.Sprintf("attribute %q: %s", e.Path, e.Reason) }

// ErrValue is matched by errors.Is for every *ValueError.
var ErrValue = errors.New("invalid attribute value")

// Is makes errors.Is(err, ErrValue) hold.
func (e *ValueError) Is(target error) bool { return target == ErrValue }

// TimeFormat is how SCIM timestamps are written: RFC 3339, UTC, milliseconds.
const TimeFormat = "2006-01-02T15:04:05.000Z07:00"

// Links builds resource URLs for meta.location and $ref values.
type Links struct {
	Base string // the tenant's SCIM base URL, without a trailing slash
}

func (l Links) user(id string) string  { return l.Base + "/Users/" + id }
func (l Links) group(id string) string { return l.Base + "/Groups/" + id }

// UserResource renders u as a SCIM User resource. groups are the groups that
// list u directly (for the read-only "groups" attribute); manager is the
// manager's record when known, for manager.displayName.
func UserResource(u *store.User, l Links, groups []store.Group, manager *store.User) map[string]any {
	m := map[string]any{
		"id":       u.ID,
		"userName": u.UserName,
		"active":   u.Active,
		"meta":     meta("User", l.user(u.ID), u.Meta),
	}
	schemas := []any{SchemaUser}
	setStr(m, "externalId", u.ExternalID)
	if !u.Name.IsZero() {
		n := map[string]any{}
		setStr(n, "formatted", u.Name.Formatted)
		setStr(n, "familyName", u.Name.FamilyName)
		setStr(n, "givenName", u.Name.GivenName)
		setStr(n, "middleName", u.Name.MiddleName)
		setStr(n, "honorificPrefix", u.Name.HonorificPrefix)
		setStr(n, "honorificSuffix", u.Name.HonorificSuffix)
		m["name"] = n
	}
	setStr(m, "displayName", u.DisplayName)
	setStr(m, "nickName", u.NickName)
	setStr(m, "profileUrl", u.ProfileURL)
	setStr(m, "title", u.Title)
	setStr(m, "userType", u.UserType)
	setStr(m, "preferredLanguage", u.PreferredLanguage)
	setStr(m, "locale", u.Locale)
	setStr(m, "timezone", u.Timezone)
	setMulti(m, "emails", u.Emails)
	setMulti(m, "phoneNumbers", u.PhoneNumbers)
	setMulti(m, "ims", u.IMs)
	setMulti(m, "photos", u.Photos)
	setMulti(m, "entitlements", u.Entitlements)
	setMulti(m, "roles", u.Roles)
	setMulti(m, "x509Certificates", u.X509Certificates)
	if len(u.Addresses) > 0 {
		as := make([]any, 0, len(u.Addresses))
		for _, a := range u.Addresses {
			e := map[string]any{}
			setStr(e, "formatted", a.Formatted)
			setStr(e, "streetAddress", a.StreetAddress)
			setStr(e, "locality", a.Locality)
			setStr(e, "region", a.Region)
			setStr(e, "postalCode", a.PostalCode)
			setStr(e, "country", a.Country)
			setStr(e, "type", a.Type)
			if a.Primary {
				e["primary"] = true
			}
			as = append(as, e)
		}
		m["addresses"] = as
	}
	if len(groups) > 0 {
		gs := make([]any, 0, len(groups))
		for _, g := range groups {
			gs = append(gs, map[string]any{"value": g.ID, "$ref": l.group(g.ID), "display": g.DisplayName, "type": "direct"})
		}
		m["groups"] = gs
	}
	if e := u.Enterprise; !e.IsZero() {
		x := map[string]any{}
		setStr(x, "employeeNumber", e.EmployeeNumber)
		setStr(x, "costCenter", e.CostCenter)
		setStr(x, "organization", e.Organization)
		setStr(x, "division", e.Division)
		setStr(x, "department", e.Department)
		if e.Manager != "" {
			mg := map[string]any{"value": e.Manager, "$ref": l.user(e.Manager)}
			if manager != nil && manager.DisplayName != "" {
				mg["displayName"] = manager.DisplayName
			}
			x["manager"] = mg
		}
		m[SchemaEnterprise] = x
		schemas = append(schemas, SchemaEnterprise)
	}
	m["schemas"] = addExtensions(m, schemas, u.Extensions)
	return m
}

// addExtensions puts each stored extension object into resource m under
// its schema URN and returns schemas with those URNs added.
func addExtensions(m map[string]any, schemas []any, exts map[string]json.RawMessage) []any {
	for urn, raw := range exts {
		var v any
		if json.Unmarshal(raw, &v) == nil {
			m[urn] = v
			schemas = append(schemas, urn)
		}
	}
	return schemas
}

// GroupResource renders g as a SCIM Group resource; members are included
// when g.Members is not nil.
func GroupResource(g *store.Group, l Links) map[string]any {
	m := map[string]any{
		"schemas":     []any{SchemaGroup},
		"id":          g.ID,
		"displayName": g.DisplayName,
		"meta":        meta("Group", l.group(g.ID), g.Meta),
	}
	setStr(m, "externalId", g.ExternalID)
	if g.Members != nil {
		ms := make([]any, 0, len(g.Members))
		for _, mb := range g.Members {
			e := map[string]any{"value": mb.ID, "type": string(mb.Kind)}
			if mb.Kind == store.KindGroup {
				e["$ref"] = l.group(mb.ID)
			} else {
				e["$ref"] = l.user(mb.ID)
			}
			setStr(e, "display", mb.Display)
			ms = append(ms, e)
		}
		m["members"] = ms
	}
	m["schemas"] = addExtensions(m, m["schemas"].([]any), g.Extensions)
	return m
}

func meta(kind, location string, mt store.Meta) map[string]any {
	return map[string]any{
		"resourceType": kind,
		"created":      mt.Created.UTC().Format(TimeFormat),
		"lastModified": mt.LastModified.UTC().Format(TimeFormat),
		"location":     location,
		"version":      ETag(mt.Version),
	}
}

// ETag renders a resource version as a weak entity tag.
func ETag(v uint64) string { return `W/"` + strconv.FormatUint(v, 10) + `"` }

func setStr(m map[string]any, k, v string) {
	if v != "" {
		m[k] = v
	}
}

func setMulti(m map[string]any, k string, vs []store.MultiValue) {
	if len(vs) == 0 {
		return
	}
	out := make([]any, 0, len(vs))
	for _, v := range vs {
		e := map[string]any{}
		setStr(e, "value", v.Value)
		setStr(e, "display", v.Display)
		setStr(e, "type", v.Type)
		if v.Primary {
			e["primary"] = true
		}
		out = append(out, e)
	}
	m[k] = out
}

// hasPrefixFold is strings.HasPrefix ignoring case.
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// enterpriseAliases are enterprise attributes that older Entra bodies send
// at the top level instead of under the extension URN.
var enterpriseAliases = map[string]bool{"employeenumber": true, "costcenter": true, "organization": true, "division": true, "department": true, "manager": true}

// UserFromResource reads a SCIM User resource as sent by a client (POST or
// PUT body, or the result of a PATCH) into the model. Attribute names match
// in any case; booleans sent as strings ("True") are accepted; null means
// absent; read-only and unknown attributes are ignored. Returns a
// *ValueError for a value of the wrong shape. active defaults to true.
func UserFromResource(doc map[string]any) (store.User, error) {
	core := map[string]any{}
	ent := map[string]any{}
	var ext map[string]json.RawMessage
	u := store.User{Active: true}
	for k, v := range doc {
		if v == nil {
			continue
		}
		switch {
		case strings.EqualFold(k, "schemas") || strings.EqualFold(k, "id") || strings.EqualFold(k, "meta") ||
			strings.EqualFold(k, "groups") || strings.EqualFold(k, "password"):
			// read-only, or never stored
		case strings.EqualFold(k, "externalId"):
			s, err := toString("externalId", v)
			if err != nil {
				return u, err
			}
			u.ExternalID = s
		case strings.EqualFold(k, SchemaEnterprise):
			obj, ok := v.(map[string]any)
			if !ok {
				return u, &ValueError{SchemaEnterprise, "must be an object"}
			}
			for ek, ev := range obj {
				ent[ek] = ev
			}
		case hasPrefixFold(k, SchemaEnterprise+":"):
			ent[k[len(SchemaEnterprise)+1:]] = v
		case hasPrefixFold(k, "urn:"):
			obj, ok := v.(map[string]any)
			if !ok {
				return u, &ValueError{k, "an extension schema's attributes must be sent as an object"}
			}
			raw, err := json.Marshal(obj)
			if err != nil {
				return u, &ValueError{k, err.Error()}
			}
			if ext == nil {
				ext = map[string]json.RawMessage{}
			}
			ext[k] = raw
		default:
			if a := UserSchema.Attr(k); a != nil {
				cv, err := canonical(a, a.Name, v)
				if err != nil {
					return u, err
				}
				if cv != nil {
					core[a.Name] = cv
				}
			} else if enterpriseAliases[strings.ToLower(k)] {
				ent[k] = v
			}
		}
	}
	fillCore(&u, core)
	if a, ok := core["active"].(bool); ok {
		u.Active = a
	}
	for k, v := range ent {
		if v == nil {
			continue
		}
		a := EnterpriseSchema.Attr(k)
		if a == nil {
			continue
		}
		path := SchemaEnterprise + ":" + a.Name
		if a.Name == "manager" {
			id, err := managerID(v)
			if err != nil {
				return u, &ValueError{path, err.Error()}
			}
			u.Enterprise.Manager = id
			continue
		}
		s, err := toString(path, v)
		if err != nil {
			return u, err
		}
		switch a.Name {
		case "employeeNumber":
			u.Enterprise.EmployeeNumber = s
		case "costCenter":
			u.Enterprise.CostCenter = s
		case "organization":
			u.Enterprise.Organization = s
		case "division":
			u.Enterprise.Division = s
		case "department":
			u.Enterprise.Department = s
		}
	}
	u.Extensions = ext
	return u, nil
}

// fillCore sets u's core attributes from their canonical values (see
// canonical: strings, booleans, objects of them, lists of objects), as
// decoding them as JSON into u would, without the encoding.
func fillCore(u *store.User, core map[string]any) {
	strs := map[string]*string{"userName": &u.UserName, "displayName": &u.DisplayName, "nickName": &u.NickName,
		"profileUrl": &u.ProfileURL, "title": &u.Title, "userType": &u.UserType, "preferredLanguage": &u.PreferredLanguage,
		"locale": &u.Locale, "timezone": &u.Timezone}
	multis := map[string]*[]store.MultiValue{"emails": &u.Emails, "phoneNumbers": &u.PhoneNumbers, "ims": &u.IMs,
		"photos": &u.Photos, "entitlements": &u.Entitlements, "roles": &u.Roles, "x509Certificates": &u.X509Certificates}
	for k, v := range core {
		if p := strs[k]; p != nil {
			*p, _ = v.(string)
			continue
		}
		if p := multis[k]; p != nil {
			*p = nil
			for _, it := range objects(v) {
				*p = append(*p, store.MultiValue{Value: field(it, "value"), Display: field(it, "display"), Type: field(it, "type"), Primary: it["primary"] == true})
			}
			continue
		}
		switch k {
		case "name":
			if m, ok := v.(map[string]any); ok {
				u.Name = store.Name{Formatted: field(m, "formatted"), FamilyName: field(m, "familyName"), GivenName: field(m, "givenName"),
					MiddleName: field(m, "middleName"), HonorificPrefix: field(m, "honorificPrefix"), HonorificSuffix: field(m, "honorificSuffix")}
			}
		case "addresses":
			u.Addresses = nil
			for _, it := range objects(v) {
				u.Addresses = append(u.Addresses, store.Address{Formatted: field(it, "formatted"), StreetAddress: field(it, "streetAddress"),
					Locality: field(it, "locality"), Region: field(it, "region"), PostalCode: field(it, "postalCode"), Country: field(it, "country"),
					Type: field(it, "type"), Primary: it["primary"] == true})
			}
		}
	}
}

func field(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

// objects returns the objects of a canonical multi-valued attribute.
func objects(v any) []map[string]any {
	items, _ := v.([]any)
	out := make([]map[string]any, 0, len(items))
	for _, it := range items {
		if m, ok := it.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

// managerID accepts the shapes Entra and others send for manager: a bare id,
// {"value": id} in any case, or a list holding one such object.
func managerID(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case map[string]any:
		for k, val := range x {
			if strings.EqualFold(k, "value") {
				if val == nil {
					return "", nil
				}
				s, ok := val.(string)
				if !ok {
					return "", errors.New("manager.value must be a string (the manager's id)")
				}
				return s, nil
			}
		}
		return "", nil
	case []any:
		if len(x) == 0 {
			return "", nil
		}
		return managerID(x[0])
	}
	return "", errors.New("manager must be an id, an object with a value, or a list of one such object")
}

// GroupFromResource reads a SCIM Group resource as sent by a client into the
// model, with its members. Rules as for UserFromResource.
func GroupFromResource(doc map[string]any) (store.Group, error) {
	var g store.Group
	g.Members = []store.Member{}
	for k, v := range doc {
		if v == nil {
			continue
		}
		lk := strings.ToLower(k)
		switch {
		case lk == "displayname":
			s, err := toString("displayName", v)
			if err != nil {
				return g, err
			}
			g.DisplayName = s
		case lk == "externalid":
			s, err := toString("externalId", v)
			if err != nil {
				return g, err
			}
			g.ExternalID = s
		case lk == "members":
			ms, err := Members(v)
			if err != nil {
				return g, err
			}
			g.Members = ms
		case strings.HasPrefix(lk, "urn:") && lk != strings.ToLower(SchemaGroup):
			obj, ok := v.(map[string]any)
			if !ok {
				continue // e.g. a stray schema URI; nothing to keep
			}
			raw, err := json.Marshal(obj)
			if err != nil {
				return g, &ValueError{k, err.Error()}
			}
			if g.Extensions == nil {
				g.Extensions = map[string]json.RawMessage{}
			}
			g.Extensions[k] = raw
		}
	}
	return g, nil
}

// Members reads a members value: a list of {"value": id, "display": ...}
// objects (extra keys such as "$ref": null or "name" ignored), a single such
// object, or bare id strings.
func Members(v any) ([]store.Member, error) {
	var items []any
	switch x := v.(type) {
	case []any:
		items = x
	case nil:
		return nil, nil
	default:
		items = []any{x}
	}
	out := make([]store.Member, 0, len(items))
	for _, it := range items {
		var m store.Member
		switch x := it.(type) {
		case nil:
			continue
		case string:
			m.ID = x
		case map[string]any:
			for k, val := range x {
				s, _ := val.(string)
				switch strings.ToLower(k) {
				case "value":
					if val != nil && s == "" {
						if _, isStr := val.(string); !isStr {
							return nil, &ValueError{"members.value", "must be a string (the member's id)"}
						}
					}
					m.ID = s
				case "display", "displayname":
					if m.Display == "" {
						m.Display = s
					}
				case "type":
					if strings.EqualFold(s, "group") {
						m.Kind = store.KindGroup
					} else if strings.EqualFold(s, "user") {
						m.Kind = store.KindUser
					}
				}
			}
		default:
			return nil, &ValueError{"members", "each member must be an object with a value, or an id"}
		}
		if m.ID == "" {
			return nil, &ValueError{"members.value", "a member has no value (the member's id)"}
		}
		out = append(out, m)
	}
	return out, nil
}

// canonical converts v to the shape attribute a prescribes, with sub-
// attribute names in canonical case. It returns nil for an empty value.
func canonical(a *Attribute, path string, v any) (any, error) {
	if v == nil {
		return nil, nil
	}
	if a.MultiValued {
		var items []any
		switch x := v.(type) {
		case []any:
			items = x
		default:
			items = []any{x}
		}
		out := make([]any, 0, len(items))
		for _, it := range items {
			if it == nil {
				continue
			}
			if a.Type == "complex" {
				if s, ok := it.(string); ok { // a bare value
					it = map[string]any{"value": s}
				}
			}
			cv, err := single(a, path, it)
			if err != nil {
				return nil, err
			}
			if cv != nil {
				out = append(out, cv)
			}
		}
		if len(out) == 0 {
			return nil, nil
		}
		return out, nil
	}
	return single(a, path, v)
}

func single(a *Attribute, path string, v any) (any, error) {
	switch a.Type {
	case "complex":
		obj, ok := v.(map[string]any)
		if !ok {
			return nil, &ValueError{path, "must be an object"}
		}
		out := map[string]any{}
		for k, sv := range obj {
			sa := a.Sub(k)
			if sa == nil || sv == nil {
				continue
			}
			cv, err := single(sa, path+"."+sa.Name, sv)
			if err != nil {
				return nil, err
			}
			if cv != nil {
				out[sa.Name] = cv
			}
		}
		if len(out) == 0 {
			return nil, nil
		}
		return out, nil
	case "boolean":
		return toBool(path, v)
	default:
		s, err := toString(path, v)
		if err != nil || s == "" {
			return nil, err
		}
		return s, nil
	}
}

func toString(path string, v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), nil
	case json.Number:
		return x.String(), nil
	case bool:
		return strconv.FormatBool(x), nil
	}
	return "", &ValueError{path, "must be a string"}
}

// toBool accepts JSON booleans and the strings Entra sends ("True", "false").
func toBool(path string, v any) (bool, error) {
	switch x := v.(type) {
	case bool:
		return x, nil
	case string:
		switch strings.ToLower(strings.TrimSpace(x)) {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
	}
	return false, &ValueError{path, fmt.Sprintf("must be true or false, not %v", v)}
}

// ParseTime reads a SCIM dateTime: RFC 3339 with any number of fractional
// digits (Entra sends seven) and a Z or numeric offset.
func ParseTime(s string) (time.Time, error) {
	return time.Parse(time.RFC3339Nano, s)
}
