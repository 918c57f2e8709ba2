// Package mapping translates between the canonical model in package store
// and the two wire views of it: SCIM resources (RFC 7643) and LDAP entries.
// It is pure: no I/O, no state beyond its configuration.
package mapping

import "strings"

// Schema URNs.
const (
	SchemaUser       = "urn:ietf:params:scim:schemas:core:2.0:User"
	SchemaGroup      = "urn:ietf:params:scim:schemas:core:2.0:Group"
	SchemaEnterprise = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
)

// Attribute describes one SCIM attribute (RFC 7643 §7). The definitions
// below drive canonicalisation of incoming JSON, the PATCH engine, filter
// evaluation and the /Schemas discovery document alike, so what is
// advertised is what is implemented.
type Attribute struct {
	Name            string      `json:"name"`
	Type            string      `json:"type"`
	MultiValued     bool        `json:"multiValued"`
	Description     string      `json:"description"`
	Required        bool        `json:"required"`
	CaseExact       bool        `json:"caseExact"`
	Mutability      string      `json:"mutability"`
	Returned        string      `json:"returned"`
	Uniqueness      string      `json:"uniqueness"`
	CanonicalValues []string    `json:"canonicalValues,omitempty"`
	ReferenceTypes  []string    `json:"referenceTypes,omitempty"`
	SubAttributes   []Attribute `json:"subAttributes,omitempty"`
}

// Schema is a SCIM schema: its URN, name and attributes.
type Schema struct {
	ID          string      `json:"id"`
	Name        string      `json:"name"`
	Description string      `json:"description"`
	Attributes  []Attribute `json:"attributes"`
}

// Sub returns the sub-attribute named name (any case), or nil.
func (a *Attribute) Sub(name string) *Attribute {
	return find(a.SubAttributes, name)
}

// Attr returns the attribute named name (any case), or nil.
func (s *Schema) Attr(name string) *Attribute {
	return find(s.Attributes, name)
}

func find(as []Attribute, name string) *Attribute {
	for i := range as {
		if strings.EqualFold(as[i].Name, name) {
			return &as[i]
		}
	}
	return nil
}

func str(name, desc string) Attribute {
	return Attribute{Name: name, Type: "string", Description: desc, Mutability: "readWrite", Returned: "default", Uniqueness: "none"}
}

func boolean(name, desc string) Attribute {
	a := str(name, desc)
	a.Type = "boolean"
	return a
}

func ref(name, desc string, types ...string) Attribute {
	a := str(name, desc)
	a.Type, a.ReferenceTypes = "reference", types
	return a
}

func complexAttr(name, desc string, multi bool, subs ...Attribute) Attribute {
	a := str(name, desc)
	a.Type, a.MultiValued, a.SubAttributes = "complex", multi, subs
	return a
}

// multi builds a standard multi-valued attribute with value, display, type
// and primary sub-attributes.
func multi(name, desc string, types []string, valueType string) Attribute {
	v := str("value", "The value of the "+name+" element.")
	if valueType != "" {
		v.Type = valueType
	}
	t := str("type", "A label indicating the attribute's function.")
	t.CanonicalValues = types
	return complexAttr(name, desc, true, v, str("display", "A human-readable name, primarily used for display purposes."), t,
		boolean("primary", "Indicates the primary or preferred value."))
}

func readOnly(a Attribute) Attribute {
	a.Mutability = "readOnly"
	for i := range a.SubAttributes {
		a.SubAttributes[i].Mutability = "readOnly"
	}
	return a
}

// UserSchema is the core User schema as served.
var UserSchema = Schema{
	ID: SchemaUser, Name: "User", Description: "User Account",
	Attributes: []Attribute{
		func() Attribute {
			a := str("userName", "Unique identifier for the User, typically used to authenticate. Unique per tenant, compared case-insensitively.")
			a.Required, a.Uniqueness = true, "server"
			return a
		}(),
		complexAttr("name", "The components of the user's real name.", false,
			str("formatted", "The full name, as displayed."), str("familyName", "The family name."),
			str("givenName", "The given name."), str("middleName", "The middle name(s)."),
			str("honorificPrefix", "The honorific prefix(es)."), str("honorificSuffix", "The honorific suffix(es).")),
		str("displayName", "The name of the User, suitable for display to end-users."),
		str("nickName", "The casual way to address the user."),
		ref("profileUrl", "A fully qualified URL pointing to a page representing the User's online profile.", "external"),
		str("title", "The user's title, such as \"Vice President\"."),
		str("userType", "Used to identify the relationship between the organization and the user."),
		str("preferredLanguage", "The User's preferred written or spoken language."),
		str("locale", "The User's default location for localizing."),
		str("timezone", "The User's time zone in the IANA Time Zone database format."),
		boolean("active", "The User's administrative status. Inactive users are kept and returned."),
		func() Attribute {
			a := str("password", "Not stored: this appliance never keeps end-user passwords.")
			a.Mutability, a.Returned = "writeOnly", "never"
			return a
		}(),
		multi("emails", "Email addresses for the user.", []string{"work", "home", "other"}, ""),
		multi("phoneNumbers", "Phone numbers for the User.", []string{"work", "home", "mobile", "fax", "pager", "other"}, ""),
		multi("ims", "Instant messaging addresses for the User.", []string{"aim", "gtalk", "icq", "xmpp", "msn", "skype", "qq", "yahoo"}, ""),
		multi("photos", "URLs of photos of the User.", []string{"photo", "thumbnail"}, "reference"),
		complexAttr("addresses", "A physical mailing address for this User.", true,
			str("formatted", "The full mailing address."), str("streetAddress", "The full street address component."),
			str("locality", "The city or locality component."), str("region", "The state or region component."),
			str("postalCode", "The zip code or postal code component."), str("country", "The country name component."),
			func() Attribute {
				a := str("type", "A label indicating the attribute's function.")
				a.CanonicalValues = []string{"work", "home", "other"}
				return a
			}(),
			boolean("primary", "Indicates the primary address.")),
		readOnly(complexAttr("groups", "A list of groups to which the user belongs, direct membership only.", true,
			str("value", "The identifier of the User's group."), ref("$ref", "The URI of the corresponding Group resource.", "Group"),
			str("display", "A human-readable name of the group."), str("type", "direct"))),
		multi("entitlements", "A list of entitlements for the User.", nil, ""),
		multi("roles", "A list of roles for the User.", nil, ""),
		func() Attribute {
			a := multi("x509Certificates", "A list of certificates issued to the User.", nil, "binary")
			a.SubAttributes[0].CaseExact = true
			return a
		}(),
	},
}

// EnterpriseSchema is the enterprise User extension as served.
var EnterpriseSchema = Schema{
	ID: SchemaEnterprise, Name: "EnterpriseUser", Description: "Enterprise User",
	Attributes: []Attribute{
		str("employeeNumber", "Numeric or alphanumeric identifier assigned to a person."),
		str("costCenter", "Identifies the name of a cost center."),
		str("organization", "Identifies the name of an organization."),
		str("division", "Identifies the name of a division."),
		str("department", "Identifies the name of a department."),
		complexAttr("manager", "The User's manager. Accepted as a bare id, an object or a one-element list; returned as an object.", false,
			str("value", "The id of the SCIM resource representing the User's manager."),
			ref("$ref", "The URI of the SCIM resource representing the User's manager.", "User"),
			readOnly(str("displayName", "The displayName of the User's manager."))),
	},
}

// GroupSchema is the core Group schema as served.
var GroupSchema = Schema{
	ID: SchemaGroup, Name: "Group", Description: "Group",
	Attributes: []Attribute{
		func() Attribute {
			a := str("displayName", "A human-readable name for the Group. Unique per tenant, compared case-insensitively.")
			a.Required, a.Uniqueness = true, "server"
			return a
		}(),
		complexAttr("members", "A list of members of the Group.", true,
			str("value", "Identifier of the member of this Group."),
			ref("$ref", "The URI corresponding to a SCIM resource that is a member of this Group.", "User", "Group"),
			str("display", "A human-readable name of the member."),
			func() Attribute {
				a := str("type", "User or Group.")
				a.CanonicalValues = []string{"User", "Group"}
				return a
			}()),
	},
}

// Common attributes every resource has (RFC 7643 §3.1).
var commonAttributes = func() []Attribute {
	id := readOnly(str("id", "Unique identifier assigned by the service provider."))
	id.CaseExact = true
	ext := str("externalId", "Identifier assigned by the provisioning client.")
	ext.CaseExact = true
	created, modified := str("created", "When the resource was added."), str("lastModified", "When the resource was last changed.")
	created.Type, modified.Type = "dateTime", "dateTime"
	meta := readOnly(complexAttr("meta", "Resource metadata.", false, str("resourceType", "The resource type."), created, modified,
		ref("location", "The URI of the resource.", "uri"), str("version", "The version (ETag) of the resource.")))
	return []Attribute{id, ext, meta}
}()

// Lookup resolves attribute name (any case) among the common attributes
// and the attributes of schema s.
func Lookup(s *Schema, name string) *Attribute {
	if a := find(commonAttributes, name); a != nil {
		return a
	}
	return s.Attr(name)
}

// CommonAttr returns the definition of a common attribute (id, externalId,
// meta), or nil.
func CommonAttr(name string) *Attribute { return find(commonAttributes, name) }
