package ldap

import (
	"github.com/scimldap/scimldap/mapping"
)

// rootDSE describes the server (RFC 4512 §5.1). A bound account sees its
// own tenant as the naming context; an anonymous client sees the suffix.
func (s *Server) rootDSE(id *identity) *entry {
	contexts := []string{s.cfg.Suffix}
	if id != nil {
		contexts = []string{s.cfg.Tenant(id.tenant).TenantDN(id.tenant)}
	}
	attrs := []mapping.Attr{
		{Name: "objectClass", Values: []string{"top", "extensibleObject"}},
		{Name: "namingContexts", Values: contexts},
		{Name: "defaultNamingContext", Values: contexts[:1]},
		{Name: "supportedLDAPVersion", Values: []string{"3"}},
		{Name: "supportedControl", Values: []string{oidPaging, oidSortRequest}},
		{Name: "supportedExtension", Values: []string{oidWhoAmI}},
		{Name: "supportedFeatures", Values: []string{"1.3.6.1.4.1.4203.1.5.1", "1.3.6.1.4.1.4203.1.5.2", "1.3.6.1.4.1.4203.1.5.3"}},
		{Name: "vendorName", Values: []string{"scimldap"}},
		{Name: "vendorVersion", Values: []string{"scimldap " + s.cfg.Version}},
		{Name: "subschemaSubentry", Values: []string{subschemaDN}},
	}
	if s.tlsCfg != nil {
		attrs[5].Values = append(attrs[5].Values, oidStartTLS)
	}
	// All of the root DSE's attributes are returned by "*" here, as clients
	// expect; it has no operational ones of its own.
	return newEntry(mapping.Entry{DN: "", Attrs: attrs}, "")
}

// subschema is the cn=Subschema entry: every attribute type and object
// class this directory serves.
func (s *Server) subschema() *entry {
	e := newEntry(mapping.Entry{DN: subschemaDN, Attrs: []mapping.Attr{
		{Name: "objectClass", Values: []string{"top", "subentry", "subschema", "extensibleObject"}},
		{Name: "cn", Values: []string{"Subschema"}},
		{Name: "attributeTypes", Values: attributeTypeDescriptions()},
		{Name: "objectClasses", Values: objectClasses},
	}}, "")
	return e
}

// suffixEntry is the virtual entry at the suffix above the tenants.
func (s *Server) suffixEntry() *entry {
	rdns, _ := parseDN(s.cfg.Suffix)
	attrs := []mapping.Attr{{Name: "objectClass", Values: []string{"top", "extensibleObject"}}}
	if len(rdns) > 0 {
		attrs = append(attrs, mapping.Attr{Name: rdns[0].attr, Values: []string{rdns[0].value}})
	}
	return newEntry(mapping.Entry{DN: s.cfg.Suffix, Attrs: attrs}, "")
}
