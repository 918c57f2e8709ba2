package store

import (
	"encoding/json"
	"strings"
	"time"
)

// User is the appliance's one record of a provisioned person. SCIM resources
// and LDAP entries are views of it, built by package mapping. Every attribute
// of the RFC 7643 core User schema and of the enterprise extension has a typed
// field; attributes of any other extension schema are kept, as sent, in
// Extensions so that they read back unchanged.
type User struct {
	ID         string `json:"id"`                   // assigned here, immutable; SCIM "id"
	ExternalID string `json:"externalId,omitempty"` // usually the Entra object ID
	UserName   string `json:"userName"`             // unique per tenant, compared case-insensitively
	Active     bool   `json:"active"`

	Name              Name   `json:"name"`
	DisplayName       string `json:"displayName,omitempty"`
	NickName          string `json:"nickName,omitempty"`
	ProfileURL        string `json:"profileUrl,omitempty"`
	Title             string `json:"title,omitempty"`
	UserType          string `json:"userType,omitempty"`
	PreferredLanguage string `json:"preferredLanguage,omitempty"`
	Locale            string `json:"locale,omitempty"`
	Timezone          string `json:"timezone,omitempty"`

	Emails           []MultiValue `json:"emails,omitempty"`
	PhoneNumbers     []MultiValue `json:"phoneNumbers,omitempty"`
	IMs              []MultiValue `json:"ims,omitempty"`
	Photos           []MultiValue `json:"photos,omitempty"`
	Entitlements     []MultiValue `json:"entitlements,omitempty"`
	Roles            []MultiValue `json:"roles,omitempty"`
	X509Certificates []MultiValue `json:"x509Certificates,omitempty"`
	Addresses        []Address    `json:"addresses,omitempty"`

	Enterprise Enterprise `json:"enterprise"`

	// Extensions holds the attributes of extension schemas other than the
	// enterprise one, keyed by schema URN, each a JSON object as sent.
	Extensions map[string]json.RawMessage `json:"extensions,omitempty"`

	Meta Meta `json:"meta"`
}

// Name is the SCIM complex attribute "name".
type Name struct {
	Formatted       string `json:"formatted,omitempty"`
	FamilyName      string `json:"familyName,omitempty"`
	GivenName       string `json:"givenName,omitempty"`
	MiddleName      string `json:"middleName,omitempty"`
	HonorificPrefix string `json:"honorificPrefix,omitempty"`
	HonorificSuffix string `json:"honorificSuffix,omitempty"`
}

// IsZero reports whether no part of the name is set.
func (n Name) IsZero() bool { return n == Name{} }

// MultiValue is one element of a SCIM multi-valued attribute such as emails
// or phoneNumbers.
type MultiValue struct {
	Value   string `json:"value,omitempty"`
	Display string `json:"display,omitempty"`
	Type    string `json:"type,omitempty"`
	Primary bool   `json:"primary,omitempty"`
}

// Address is one element of the SCIM "addresses" attribute.
type Address struct {
	Formatted     string `json:"formatted,omitempty"`
	StreetAddress string `json:"streetAddress,omitempty"`
	Locality      string `json:"locality,omitempty"`
	Region        string `json:"region,omitempty"`
	PostalCode    string `json:"postalCode,omitempty"`
	Country       string `json:"country,omitempty"`
	Type          string `json:"type,omitempty"`
	Primary       bool   `json:"primary,omitempty"`
}

// Enterprise holds the attributes of the enterprise User extension
// (urn:ietf:params:scim:schemas:extension:enterprise:2.0:User).
type Enterprise struct {
	EmployeeNumber string `json:"employeeNumber,omitempty"`
	CostCenter     string `json:"costCenter,omitempty"`
	Organization   string `json:"organization,omitempty"`
	Division       string `json:"division,omitempty"`
	Department     string `json:"department,omitempty"`
	// Manager is the id of the manager's User resource in the same tenant.
	Manager string `json:"manager,omitempty"`
}

// IsZero reports whether no enterprise attribute is set.
func (e Enterprise) IsZero() bool { return e == Enterprise{} }

// Meta is the bookkeeping every resource carries.
type Meta struct {
	Created      time.Time `json:"created"`
	LastModified time.Time `json:"lastModified"`
	// Version is bumped on every write; it is the SCIM ETag.
	Version uint64 `json:"version"`
}

// Group is a provisioned group. Members are kept in their own buckets so
// that adding one member does not rewrite a large record; Members is filled
// only when the caller asks for it.
type Group struct {
	ID          string                     `json:"id"`
	ExternalID  string                     `json:"externalId,omitempty"`
	DisplayName string                     `json:"displayName"`
	Extensions  map[string]json.RawMessage `json:"extensions,omitempty"`
	Meta        Meta                       `json:"meta"`

	Members []Member `json:"-"`
}

// Member is one member of a group. Display is what the client sent with it.
// A member id that names no resource is kept: Entra may add a member before
// it provisions the user, and nothing it sent is dropped.
type Member struct {
	ID      string // the member's resource id
	Kind    Kind   // KindUser or KindGroup
	Display string
}

// Kind names a resource type.
type Kind string

// The resource kinds a tenant holds.
const (
	KindUser  Kind = "User"
	KindGroup Kind = "Group"
)

// WorkEmail returns the value of the email typed "work", else the primary
// email, else the first one, else "".
func (u *User) WorkEmail() string { return pick(u.Emails, "work") }

// Phone returns the value of the phone number of the given type, or "".
func (u *User) Phone(typ string) string {
	for _, p := range u.PhoneNumbers {
		if strings.EqualFold(p.Type, typ) {
			return p.Value
		}
	}
	return ""
}

// WorkAddress returns the address typed "work", else the primary one, else
// the first one, else a zero Address.
func (u *User) WorkAddress() Address {
	for _, a := range u.Addresses {
		if strings.EqualFold(a.Type, "work") {
			return a
		}
	}
	for _, a := range u.Addresses {
		if a.Primary {
			return a
		}
	}
	if len(u.Addresses) > 0 {
		return u.Addresses[0]
	}
	return Address{}
}

func pick(vs []MultiValue, typ string) string {
	for _, v := range vs {
		if strings.EqualFold(v.Type, typ) {
			return v.Value
		}
	}
	for _, v := range vs {
		if v.Primary {
			return v.Value
		}
	}
	if len(vs) > 0 {
		return vs[0].Value
	}
	return ""
}

// NormalizePhone reduces a telephone number to the characters that matter
// when comparing numbers: digits, and a leading "+". "+1 (555) 010-0199" and
// "+15550100199" normalise alike.
func NormalizePhone(s string) string {
	var b strings.Builder
	for i, r := range s {
		switch {
		case r >= '0' && r <= '9':
			b.WriteRune(r)
		case r == '+' && i == 0:
			b.WriteRune(r)
		}
	}
	return b.String()
}
