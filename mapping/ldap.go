package mapping

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/scimldap/scimldap/store"
)

// DefaultAttributes is the LDAP attribute ← SCIM attribute path table used
// when a tenant overrides nothing. It follows the table UC suites expect
// from a cloud LDAP fed by Entra ID. A value may list alternatives
// separated by "|": the first that has a value wins (cn falls back to the
// userName). "manager" is special: its value is the manager's DN.
var DefaultAttributes = map[string]string{
	"uid":                      "userName",
	"cn":                       "displayName|userName",
	"displayName":              "displayName",
	"mail":                     `emails[type eq "work"].value`,
	"givenName":                "name.givenName",
	"sn":                       "name.familyName",
	"preferredLanguage":        "preferredLanguage",
	"telephoneNumber":          `phoneNumbers[type eq "work"].value`,
	"mobile":                   `phoneNumbers[type eq "mobile"].value`,
	"facsimileTelephoneNumber": `phoneNumbers[type eq "fax"].value`,
	"departmentNumber":         SchemaEnterprise + ":department",
	"department":               SchemaEnterprise + ":department",
	"street":                   `addresses[type eq "work"].streetAddress`,
	"l":                        `addresses[type eq "work"].locality`,
	"st":                       `addresses[type eq "work"].region`,
	"postalCode":               `addresses[type eq "work"].postalCode`,
	"c":                        `addresses[type eq "work"].country`,
	"title":                    "title",
	"employeeNumber":           SchemaEnterprise + ":employeeNumber",
	"o":                        SchemaEnterprise + ":organization",
	"manager":                  SchemaEnterprise + ":manager",
}

// Config is one tenant's LDAP view, from appliance.toml.
type Config struct {
	Suffix string // e.g. "dc=scimldap"
	// Attributes overrides DefaultAttributes: LDAP name → SCIM path; an
	// empty path removes the attribute.
	Attributes map[string]string
	// CustomFields names the LDAP attributes of custom fields 1..n; empty
	// means custom1 … custom10.
	CustomFields []string
	ShowDisabled bool   // show active=false users, with enabled: FALSE
	ScopeFilter  string // LDAP filter selecting the users shown; checked by package ldap
	ADProfile    bool   // add Active Directory attributes and object classes
}

// Options is a compiled Config. The zero value is not usable; build it
// with NewOptions.
type Options struct {
	Suffix       string
	ShowDisabled bool
	ScopeFilter  string
	ADProfile    bool
	rules        []attrRule
	custom       []string
	uidRule      *attrRule
	fingerprint  string
}

// Fingerprint identifies the configuration o was compiled from: two
// Options build the same entries from the same users exactly when their
// fingerprints are equal (within one build of the appliance).
func (o Options) Fingerprint() string { return o.fingerprint }

type attrRule struct {
	name    string
	getters []getter // alternatives
	manager bool
}

type getter func(u *store.User) []string

// NewOptions compiles cfg. Errors name the key below the tenant's table,
// e.g. `attributes.mail: unknown SCIM attribute "emial"`.
func NewOptions(cfg Config) (Options, error) {
	o := Options{Suffix: cfg.Suffix, ShowDisabled: cfg.ShowDisabled, ScopeFilter: cfg.ScopeFilter, ADProfile: cfg.ADProfile}
	canon, err := json.Marshal(cfg) // map keys come out sorted
	if err != nil {
		return o, fmt.Errorf("fingerprint: %w", err)
	}
	sum := sha256.Sum256(canon)
	o.fingerprint = hex.EncodeToString(sum[:])
	table := map[string]string{}
	for k, v := range DefaultAttributes {
		table[k] = v
	}
	for k, v := range cfg.Attributes {
		if !validLDAPName(k) {
			return o, fmt.Errorf("attributes.%s: %q is not a valid LDAP attribute name (letters, digits and '-', starting with a letter)", k, k)
		}
		for dk := range table { // attribute names are case-insensitive
			if strings.EqualFold(dk, k) {
				delete(table, dk)
			}
		}
		if v != "" {
			table[k] = v
		}
	}
	if _, ok := table["uid"]; !ok {
		return o, fmt.Errorf("attributes.uid: uid cannot be removed: it names every user entry (uid=…,ou=people,…)")
	}
	names := make([]string, 0, len(table))
	for k := range table {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		r := attrRule{name: name}
		for _, alt := range strings.Split(table[name], "|") {
			alt = strings.TrimSpace(alt)
			if strings.EqualFold(alt, SchemaEnterprise+":manager") || strings.EqualFold(alt, "manager") {
				r.manager = true
				continue
			}
			g, err := compileGetter(alt)
			if err != nil {
				return o, fmt.Errorf("attributes.%s: %v", name, err)
			}
			r.getters = append(r.getters, g)
		}
		o.rules = append(o.rules, r)
	}
	for i := range o.rules {
		if o.rules[i].name == "uid" {
			o.uidRule = &o.rules[i]
		}
	}
	o.custom = cfg.CustomFields
	if len(o.custom) == 0 {
		for i := 1; i <= 10; i++ {
			o.custom = append(o.custom, "custom"+strconv.Itoa(i))
		}
	}
	for i, n := range o.custom {
		if !validLDAPName(n) {
			return o, fmt.Errorf("custom_fields[%d]: %q is not a valid LDAP attribute name", i, n)
		}
	}
	return o, nil
}

var ldapName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9-]*$`)

func validLDAPName(s string) bool { return ldapName.MatchString(s) }

// pathRE reads the SCIM paths the table accepts: [urn:…:]attr[.sub] and
// attr[type eq "x"].sub.
var pathRE = regexp.MustCompile(`^(?:(urn:[^\[\]]+):)?([A-Za-z][A-Za-z0-9_$-]*)(?:\[\s*(type|primary)\s+eq\s+("[^"]*"|true)\s*\])?(?:\.([A-Za-z][A-Za-z0-9_$-]*))?$`)

// compileGetter turns a SCIM path into a function reading it from the
// model. Unknown core attributes are errors; paths into an admin's own
// extension schema read the stored extension JSON.
func compileGetter(path string) (getter, error) {
	m := pathRE.FindStringSubmatch(path)
	if m == nil {
		return nil, fmt.Errorf("%q is not a SCIM attribute path such as title, name.givenName, emails[type eq \"work\"].value or urn:…:User:department", path)
	}
	urn, attr, fkey, fval, sub := m[1], m[2], m[3], strings.Trim(m[4], `"`), m[5]
	if urn != "" && !strings.EqualFold(urn, SchemaUser) && !strings.EqualFold(urn, SchemaEnterprise) {
		return extensionGetter(urn, attr, sub), nil
	}
	if strings.EqualFold(urn, SchemaEnterprise) || urn == "" && EnterpriseSchema.Attr(attr) != nil && UserSchema.Attr(attr) == nil {
		a := EnterpriseSchema.Attr(attr)
		if a == nil || a.Name == "manager" || sub != "" {
			return nil, fmt.Errorf("unknown enterprise attribute %q", attr)
		}
		var field func(e *store.Enterprise) string
		switch a.Name {
		case "employeeNumber":
			field = func(e *store.Enterprise) string { return e.EmployeeNumber }
		case "costCenter":
			field = func(e *store.Enterprise) string { return e.CostCenter }
		case "organization":
			field = func(e *store.Enterprise) string { return e.Organization }
		case "division":
			field = func(e *store.Enterprise) string { return e.Division }
		default:
			field = func(e *store.Enterprise) string { return e.Department }
		}
		return func(u *store.User) []string { return nonEmpty(field(&u.Enterprise)) }, nil
	}
	a := Lookup(&UserSchema, attr)
	if a == nil || a.Name == "meta" || a.Name == "password" || a.Name == "groups" {
		return nil, fmt.Errorf("unknown or unmappable SCIM attribute %q", attr)
	}
	if sub != "" && a.Sub(sub) == nil {
		return nil, fmt.Errorf("attribute %q has no sub-attribute %q", a.Name, sub)
	}
	if fkey != "" && !a.MultiValued {
		return nil, fmt.Errorf("attribute %q is not multi-valued; it takes no [filter]", a.Name)
	}
	sel := func(typ string, primary bool) bool {
		switch fkey {
		case "type":
			return strings.EqualFold(typ, fval)
		case "primary":
			return primary
		}
		return true
	}
	if a.Name == "addresses" {
		if sub == "" {
			sub = "formatted"
		}
		var field func(a *store.Address) string
		switch a.Sub(sub).Name {
		case "formatted":
			field = func(a *store.Address) string { return a.Formatted }
		case "streetAddress":
			field = func(a *store.Address) string { return a.StreetAddress }
		case "locality":
			field = func(a *store.Address) string { return a.Locality }
		case "region":
			field = func(a *store.Address) string { return a.Region }
		case "postalCode":
			field = func(a *store.Address) string { return a.PostalCode }
		case "country":
			field = func(a *store.Address) string { return a.Country }
		case "type":
			field = func(a *store.Address) string { return a.Type }
		default: // primary: not a string
			field = func(*store.Address) string { return "" }
		}
		return func(u *store.User) []string {
			var out []string
			for i := range u.Addresses {
				if ad := &u.Addresses[i]; sel(ad.Type, ad.Primary) {
					if v := field(ad); v != "" {
						out = append(out, v)
					}
				}
			}
			return out
		}, nil
	}
	if a.MultiValued {
		if sub == "" {
			sub = "value"
		}
		var field func(v *store.MultiValue) string
		switch a.Sub(sub).Name {
		case "value":
			field = func(v *store.MultiValue) string { return v.Value }
		case "display":
			field = func(v *store.MultiValue) string { return v.Display }
		case "type":
			field = func(v *store.MultiValue) string { return v.Type }
		default: // primary: not a string
			field = func(*store.MultiValue) string { return "" }
		}
		list := map[string]func(u *store.User) []store.MultiValue{
			"emails": func(u *store.User) []store.MultiValue { return u.Emails }, "phoneNumbers": func(u *store.User) []store.MultiValue { return u.PhoneNumbers },
			"ims": func(u *store.User) []store.MultiValue { return u.IMs }, "photos": func(u *store.User) []store.MultiValue { return u.Photos },
			"entitlements": func(u *store.User) []store.MultiValue { return u.Entitlements }, "roles": func(u *store.User) []store.MultiValue { return u.Roles },
			"x509Certificates": func(u *store.User) []store.MultiValue { return u.X509Certificates },
		}[a.Name]
		return func(u *store.User) []string {
			var out []string
			vs := list(u)
			for i := range vs {
				if v := &vs[i]; sel(v.Type, v.Primary) {
					if s := field(v); s != "" {
						out = append(out, s)
					}
				}
			}
			return out
		}, nil
	}
	if a.Name == "name" {
		if sub == "" {
			sub = "formatted"
		}
		var field func(n *store.Name) string
		switch a.Sub(sub).Name {
		case "formatted":
			field = func(n *store.Name) string { return n.Formatted }
		case "familyName":
			field = func(n *store.Name) string { return n.FamilyName }
		case "givenName":
			field = func(n *store.Name) string { return n.GivenName }
		case "middleName":
			field = func(n *store.Name) string { return n.MiddleName }
		case "honorificPrefix":
			field = func(n *store.Name) string { return n.HonorificPrefix }
		default:
			field = func(n *store.Name) string { return n.HonorificSuffix }
		}
		return func(u *store.User) []string { return nonEmpty(field(&u.Name)) }, nil
	}
	name := a.Name
	return func(u *store.User) []string {
		switch name {
		case "id":
			return nonEmpty(u.ID)
		case "externalId":
			return nonEmpty(u.ExternalID)
		case "userName":
			return nonEmpty(u.UserName)
		case "displayName":
			return nonEmpty(u.DisplayName)
		case "nickName":
			return nonEmpty(u.NickName)
		case "profileUrl":
			return nonEmpty(u.ProfileURL)
		case "title":
			return nonEmpty(u.Title)
		case "userType":
			return nonEmpty(u.UserType)
		case "preferredLanguage":
			return nonEmpty(u.PreferredLanguage)
		case "locale":
			return nonEmpty(u.Locale)
		case "timezone":
			return nonEmpty(u.Timezone)
		case "active":
			return []string{strings.ToUpper(strconv.FormatBool(u.Active))}
		}
		return nil
	}, nil
}

func extensionGetter(urn, attr, sub string) getter {
	return func(u *store.User) []string {
		var raw json.RawMessage
		for k, v := range u.Extensions {
			if strings.EqualFold(k, urn) {
				raw = v
			}
		}
		if raw == nil {
			return nil
		}
		var obj map[string]any
		if json.Unmarshal(raw, &obj) != nil {
			return nil
		}
		var out []string
		for k, v := range obj {
			if !strings.EqualFold(k, attr) {
				continue
			}
			for _, e := range flatten(v) {
				if sub != "" {
					m, ok := e.(map[string]any)
					if !ok {
						continue
					}
					for mk, mv := range m {
						if strings.EqualFold(mk, sub) {
							out = append(out, scalar(mv)...)
						}
					}
					continue
				}
				out = append(out, scalar(e)...)
			}
		}
		return out
	}
}

func flatten(v any) []any {
	if l, ok := v.([]any); ok {
		return l
	}
	return []any{v}
}

func scalar(v any) []string {
	switch x := v.(type) {
	case string:
		return nonEmpty(x)
	case float64:
		return []string{strconv.FormatFloat(x, 'f', -1, 64)}
	case bool:
		return []string{strings.ToUpper(strconv.FormatBool(x))}
	}
	return nil
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

// Attr is one LDAP attribute of an entry.
type Attr struct {
	Name   string
	Values []string
}

// Entry is an LDAP view of a user or group. Attributes appear in a stable
// order: objectClass first, then the mapped attributes.
type Entry struct {
	DN    string
	Attrs []Attr
	// Operational attributes, returned only when asked for (or with "+").
	Operational []Attr
}

// TenantDN returns o=<tenant>,<suffix>.
func (o Options) TenantDN(tenant string) string { return "o=" + EscapeDNValue(tenant) + "," + o.Suffix }

// UserRDNValue returns the uid of u, which names its entry, or "" when the
// uid mapping yields nothing.
func (o Options) UserRDNValue(u *store.User) string {
	for _, g := range o.uidRule.getters {
		if v := g(u); len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

// UserDN returns the DN of u's entry.
func (o Options) UserDN(tenant string, u *store.User) string {
	return "uid=" + EscapeDNValue(o.UserRDNValue(u)) + ",ou=people," + o.TenantDN(tenant)
}

// GroupDN returns the DN of g's entry.
func (o Options) GroupDN(tenant string, g *store.Group) string {
	return "cn=" + EscapeDNValue(g.DisplayName) + ",ou=groups," + o.TenantDN(tenant)
}

// AccountDN returns the bind DN of service account name.
func (o Options) AccountDN(tenant, name string) string {
	return "uid=" + EscapeDNValue(name) + ",ou=admin," + o.TenantDN(tenant)
}

// Visible reports whether u appears in the directory at all (before the
// scope filter): disabled users are hidden unless ShowDisabled is set.
func (o Options) Visible(u *store.User) bool { return u.Active || o.ShowDisabled }

// UserEntry builds the LDAP entry of u. managerDN is the DN of u's manager
// ("" if none or not visible); groupDNs are the DNs of u's groups.
func (o Options) UserEntry(tenant string, u *store.User, managerDN string, groupDNs []string) Entry {
	e := Entry{DN: o.UserDN(tenant, u)}
	classes := []string{"top", "person", "organizationalPerson", "inetOrgPerson"}
	if o.ADProfile {
		classes = append(classes, "user")
	}
	e.Attrs = append(e.Attrs, Attr{"objectClass", classes})
	for i := range o.rules {
		r := &o.rules[i]
		if r.manager {
			if managerDN != "" {
				e.Attrs = append(e.Attrs, Attr{r.name, []string{managerDN}})
			}
			continue
		}
		for _, g := range r.getters {
			if v := g(u); len(v) > 0 {
				e.Attrs = append(e.Attrs, Attr{r.name, v})
				break
			}
		}
	}
	if fields, ok, _ := ParseCustomFields(u.ExternalID); ok {
		for i, name := range o.custom {
			if v := fields[i+1]; v != "" {
				e.Attrs = append(e.Attrs, Attr{name, []string{v}})
			}
		}
	}
	e.Attrs = append(e.Attrs, Attr{"enabled", []string{strings.ToUpper(strconv.FormatBool(u.Active))}})
	if len(groupDNs) > 0 {
		e.Attrs = append(e.Attrs, Attr{"memberOf", groupDNs})
	}
	if o.ADProfile {
		uac := "512"
		if !u.Active {
			uac = "514"
		}
		sam := u.UserName
		if i := strings.IndexByte(sam, '@'); i > 0 {
			sam = sam[:i]
		}
		e.Attrs = append(e.Attrs,
			Attr{"sAMAccountName", []string{sam}},
			Attr{"userPrincipalName", []string{u.UserName}},
			Attr{"userAccountControl", []string{uac}},
			Attr{"objectGUID", []string{GUIDBytes(u.ExternalID, u.ID)}})
		if p := u.Phone("work"); p != "" {
			e.Attrs = append(e.Attrs, Attr{"ipPhone", []string{p}})
		}
		if org := u.Enterprise.Organization; org != "" {
			e.Attrs = append(e.Attrs, Attr{"company", []string{org}})
		}
	}
	e.Operational = operational(u.ID, u.Meta)
	return e
}

// GroupEntry builds the LDAP entry of g; memberDNs are the DNs of its
// visible members.
func (o Options) GroupEntry(tenant string, g *store.Group, memberDNs []string) Entry {
	e := Entry{DN: o.GroupDN(tenant, g)}
	classes := []string{"top", "groupOfNames"}
	if o.ADProfile {
		classes = append(classes, "group")
	}
	e.Attrs = append(e.Attrs, Attr{"objectClass", classes}, Attr{"cn", []string{g.DisplayName}})
	if len(memberDNs) > 0 {
		e.Attrs = append(e.Attrs, Attr{"member", memberDNs})
	}
	if g.ExternalID != "" {
		e.Attrs = append(e.Attrs, Attr{"description", []string{g.ExternalID}})
	}
	if o.ADProfile {
		e.Attrs = append(e.Attrs, Attr{"sAMAccountName", []string{g.DisplayName}}, Attr{"objectGUID", []string{GUIDBytes(g.ExternalID, g.ID)}})
	}
	e.Operational = operational(g.ID, g.Meta)
	return e
}

func operational(id string, m store.Meta) []Attr {
	return []Attr{
		{"entryUUID", []string{id}},
		{"createTimestamp", []string{GeneralizedTime(m.Created)}},
		{"modifyTimestamp", []string{GeneralizedTime(m.LastModified)}},
	}
}

// GeneralizedTime formats t as LDAP GeneralizedTime in UTC.
func GeneralizedTime(t time.Time) string { return t.UTC().Format("20060102150405Z") }

// GUIDBytes returns the 16 raw bytes of an Active Directory objectGUID for
// the first argument that is a GUID (Entra's object id in externalId, then
// the SCIM id), in AD's mixed-endian byte order.
func GUIDBytes(candidates ...string) string {
	for _, c := range candidates {
		h := strings.ReplaceAll(c, "-", "")
		if len(h) != 32 || len(c) != 36 {
			continue
		}
		b, err := hex.DecodeString(h)
		if err != nil {
			continue
		}
		b[0], b[1], b[2], b[3] = b[3], b[2], b[1], b[0]
		b[4], b[5] = b[5], b[4]
		b[6], b[7] = b[7], b[6]
		return string(b)
	}
	return ""
}

// EscapeDNValue escapes an attribute value for use in a DN (RFC 4514 §2.4).
func EscapeDNValue(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ',' || c == '+' || c == '"' || c == '\\' || c == '<' || c == '>' || c == ';' || c == '=':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '#' && i == 0, c == ' ' && (i == 0 || i == len(s)-1):
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c == 0x7f:
			fmt.Fprintf(&b, "\\%02x", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
