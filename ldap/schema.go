package ldap

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
	"unsafe"
)

// rule is how values of an attribute are compared.
type rule uint8

const (
	ruleCaseIgnore rule = iota // caseIgnoreMatch, with insignificant spaces folded
	ruleTelephone              // telephoneNumberMatch: spaces and dashes ignored
	ruleDN                     // distinguishedNameMatch
	ruleOctet                  // octetStringMatch
	ruleInteger                // integerMatch
	ruleTime                   // generalizedTimeMatch
	ruleBoolean                // booleanMatch
)

// attrType describes one attribute served, for matching and for the
// subschema entry.
type attrType struct {
	id          uint16
	name        string
	oid         string
	syntax      string
	rule        rule
	ordering    bool // has an ORDERING rule
	substr      bool // has a SUBSTR rule
	single      bool
	operational bool
	desc        string
}

const (
	synDirString = "1.3.6.1.4.1.1466.115.121.1.15"
	synIA5       = "1.3.6.1.4.1.1466.115.121.1.26"
	synPhone     = "1.3.6.1.4.1.1466.115.121.1.50"
	synDN        = "1.3.6.1.4.1.1466.115.121.1.12"
	synOID       = "1.3.6.1.4.1.1466.115.121.1.38"
	synOctet     = "1.3.6.1.4.1.1466.115.121.1.40"
	synInteger   = "1.3.6.1.4.1.1466.115.121.1.27"
	synTime      = "1.3.6.1.4.1.1466.115.121.1.24"
	synBoolean   = "1.3.6.1.4.1.1466.115.121.1.7"
	synUUID      = "1.3.6.1.1.16.1"
)

// oidArc is the arc under which the attributes this appliance adds are
// numbered (custom fields, enabled). It is OpenLDAP's experimental arc.
const oidArc = "1.3.6.1.4.1.4203.666.11.7"

func str(name, oid, desc string) attrType {
	return attrType{name: name, oid: oid, syntax: synDirString, rule: ruleCaseIgnore, ordering: true, substr: true, desc: desc}
}

func phone(name, oid string) attrType {
	return attrType{name: name, oid: oid, syntax: synPhone, rule: ruleTelephone, substr: true, desc: "telephone number"}
}

func dnAttr(name, oid string, op bool) attrType {
	return attrType{name: name, oid: oid, syntax: synDN, rule: ruleDN, operational: false, desc: "distinguished name"}
}

// attrTypes lists every attribute the directory serves.
var attrTypes = func() []attrType {
	ts := []attrType{
		{name: "objectClass", oid: "2.5.4.0", syntax: synOID, rule: ruleCaseIgnore, desc: "object classes of the entry"},
		str("uid", "0.9.2342.19200300.100.1.1", "user identifier"),
		str("cn", "2.5.4.3", "common name"),
		str("sn", "2.5.4.4", "surname"),
		str("givenName", "2.5.4.42", "given name"),
		str("displayName", "2.16.840.1.113730.3.1.241", "display name"),
		{name: "mail", oid: "0.9.2342.19200300.100.1.3", syntax: synIA5, rule: ruleCaseIgnore, ordering: true, substr: true, desc: "email address"},
		phone("telephoneNumber", "2.5.4.20"),
		phone("mobile", "0.9.2342.19200300.100.1.41"),
		phone("facsimileTelephoneNumber", "2.5.4.23"),
		phone("homePhone", "0.9.2342.19200300.100.1.20"),
		phone("pager", "0.9.2342.19200300.100.1.42"),
		phone("ipPhone", "1.2.840.113556.1.4.721"),
		str("preferredLanguage", "2.16.840.1.113730.3.1.39", "preferred language"),
		str("departmentNumber", "2.16.840.1.113730.3.1.2", "department"),
		str("department", "1.2.840.113556.1.2.141", "department (Active Directory name)"),
		str("street", "2.5.4.9", "street address"),
		str("l", "2.5.4.7", "locality"),
		str("st", "2.5.4.8", "state or province"),
		str("postalCode", "2.5.4.17", "postal code"),
		str("c", "2.5.4.6", "country"),
		str("title", "2.5.4.12", "title"),
		str("employeeNumber", "2.16.840.1.113730.3.1.3", "employee number"),
		str("o", "2.5.4.10", "organization"),
		str("ou", "2.5.4.11", "organizational unit"),
		str("company", "1.2.840.113556.1.2.146", "company (Active Directory name)"),
		str("description", "2.5.4.13", "description"),
		dnAttr("manager", "0.9.2342.19200300.100.1.10", false),
		dnAttr("member", "2.5.4.31", false),
		dnAttr("memberOf", "1.2.840.113556.1.2.102", false),
		{name: "enabled", oid: oidArc + ".1", syntax: synBoolean, rule: ruleBoolean, single: true, desc: "FALSE for a user disabled in Entra ID (active=false)"},
		str("sAMAccountName", "1.2.840.113556.1.4.221", "Active Directory logon name"),
		str("userPrincipalName", "1.2.840.113556.1.4.656", "Active Directory user principal name"),
		{name: "userAccountControl", oid: "1.2.840.113556.1.4.8", syntax: synInteger, rule: ruleInteger, ordering: true, single: true, desc: "512 enabled, 514 disabled"},
		{name: "objectGUID", oid: "1.2.840.113556.1.4.2", syntax: synOctet, rule: ruleOctet, single: true, desc: "16-byte GUID"},
		{name: "entryUUID", oid: "1.3.6.1.1.16.4", syntax: synUUID, rule: ruleCaseIgnore, ordering: true, single: true, operational: true, desc: "the SCIM id"},
		{name: "createTimestamp", oid: "2.5.18.1", syntax: synTime, rule: ruleTime, ordering: true, single: true, operational: true, desc: "when the resource was created"},
		{name: "modifyTimestamp", oid: "2.5.18.2", syntax: synTime, rule: ruleTime, ordering: true, single: true, operational: true, desc: "when the resource was last modified"},
		{name: "entryDN", oid: "1.3.6.1.1.20", syntax: synDN, rule: ruleDN, single: true, operational: true, desc: "the entry's DN"},
		{name: "subschemaSubentry", oid: "2.5.18.10", syntax: synDN, rule: ruleDN, single: true, operational: true, desc: "the subschema entry"},
		{name: "hasSubordinates", oid: "2.5.18.9", syntax: synBoolean, rule: ruleBoolean, single: true, operational: true, desc: "TRUE if the entry has children"},
	}
	// Attributes of the root DSE and the subschema entry (RFC 4512).
	for _, d := range [][2]string{{"namingContexts", "1.3.6.1.4.1.1466.101.120.5"}, {"defaultNamingContext", "1.2.840.113556.1.4.1004"},
		{"supportedLDAPVersion", "1.3.6.1.4.1.1466.101.120.15"}, {"supportedControl", "1.3.6.1.4.1.1466.101.120.13"},
		{"supportedExtension", "1.3.6.1.4.1.1466.101.120.7"}, {"supportedFeatures", "1.3.6.1.4.1.4203.1.3.5"},
		{"supportedSASLMechanisms", "1.3.6.1.4.1.1466.101.120.14"}, {"vendorName", "1.3.6.1.1.4"}, {"vendorVersion", "1.3.6.1.1.5"},
		{"attributeTypes", "2.5.21.5"}, {"objectClasses", "2.5.21.6"}} {
		t := str(d[0], d[1], "server information")
		t.operational = true
		ts = append(ts, t)
	}
	for i := 1; i <= 10; i++ {
		ts = append(ts, str("custom"+strconv.Itoa(i), oidArc+".2."+strconv.Itoa(i), "custom field "+strconv.Itoa(i)+" from Entra ID's externalId expression"))
	}
	for i := range ts {
		ts[i].id = uint16(i + 1)
	}
	return ts
}()

// The attribute registry also learns names that tenants map to attributes
// outside the table above, so that filters on them work; those get
// caseIgnore matching.
var (
	registryMu sync.RWMutex
	// registry maps lower-case names, and canonical spellings, to types.
	registry = func() map[string]*attrType {
		m := map[string]*attrType{}
		for i := range attrTypes {
			m[strings.ToLower(attrTypes[i].name)] = &attrTypes[i]
			m[attrTypes[i].name] = &attrTypes[i]
		}
		return m
	}()
	nextID = uint16(len(attrTypes) + 1)
)

// lookupAttr returns the type of attribute name (any case), or nil when the
// directory does not know it (a filter on it is Undefined).
func lookupAttr(name string) *attrType {
	registryMu.RLock()
	t, ok := registry[name] // names usually arrive in canonical case
	if !ok {
		t = registry[strings.ToLower(name)]
	}
	registryMu.RUnlock()
	return t
}

// registerAttr returns the type of name, adding a caseIgnore string type
// when it is new.
func registerAttr(name string) *attrType {
	if t := lookupAttr(name); t != nil {
		return t
	}
	registryMu.Lock()
	defer registryMu.Unlock()
	if t := registry[strings.ToLower(name)]; t != nil {
		return t
	}
	t := str(name, oidArc+".3."+strconv.Itoa(int(nextID)), "attribute mapped in appliance.toml")
	t.id = nextID
	nextID++
	registry[strings.ToLower(name)] = &t
	registry[name] = &t
	return &t
}

// normalize returns the comparison form of v under the attribute's rule.
func (t *attrType) normalize(v string) string {
	switch t.rule {
	case ruleCaseIgnore:
		return foldSpaces(lower(v))
	case ruleTelephone:
		return lower(strings.ReplaceAll(strings.ReplaceAll(v, " ", ""), "-", ""))
	case ruleDN:
		if n, err := normDN(v); err == nil {
			return n
		}
		return strings.ToLower(v)
	case ruleBoolean:
		return strings.ToUpper(strings.TrimSpace(v))
	case ruleTime:
		return strings.TrimSpace(v)
	case ruleInteger:
		return strings.TrimSpace(v)
	}
	return v
}

// normInto returns v normalised like normalize, without allocating when v
// is ASCII: the result is built in scratch (and then valid only until
// scratch is reused) or is v itself when v is already normal. Filters
// compare with it, so entries need not keep a normalised copy of every
// value.
func (t *attrType) normInto(scratch []byte, v string) string {
	switch t.rule {
	case ruleCaseIgnore:
		b := scratch[:0]
		clean := true // v is already lower case with single inner spaces
		space := true // at the start, spaces are dropped
		for i := 0; i < len(v); i++ {
			c := v[i]
			if c >= 0x80 {
				return foldSpaces(lower(v))
			}
			if isSpace(c) {
				if space || c != ' ' {
					clean = false
				}
				if space {
					continue
				}
				space = true
				b = append(b, ' ')
				continue
			}
			space = false
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
				clean = false
			}
			b = append(b, c)
		}
		if len(b) > 0 && b[len(b)-1] == ' ' {
			b = b[:len(b)-1]
			clean = false
		}
		if clean {
			return v
		}
		if len(b) == 0 {
			return ""
		}
		return unsafe.String(&b[0], len(b))
	case ruleTelephone:
		b := scratch[:0]
		changed := false
		for i := 0; i < len(v); i++ {
			c := v[i]
			if c >= 0x80 {
				return t.normalize(v)
			}
			switch {
			case c == ' ' || c == '-':
				changed = true
				continue
			case c >= 'A' && c <= 'Z':
				c += 'a' - 'A'
				changed = true
			}
			b = append(b, c)
		}
		if !changed {
			return v
		}
		if len(b) == 0 {
			return ""
		}
		return unsafe.String(&b[0], len(b))
	case ruleOctet:
		return v
	}
	return t.normalize(v)
}

// lower lower-cases v. Bytes that are not valid UTF-8 are kept as they are
// (strings.ToLower would turn each into a three-byte U+FFFD).
func lower(v string) string {
	if utf8.ValidString(v) {
		return strings.ToLower(v)
	}
	b := []byte(v)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// isSpace reports whether c counts as a space for caseIgnore matching:
// SPACE, and TAB, LF, VT, FF, CR, which RFC 4518 §2.2 maps to SPACE.
func isSpace(c byte) bool { return c == ' ' || c >= '\t' && c <= '\r' }

// foldSpaces trims and collapses runs of spaces (RFC 4518 insignificant
// space handling), returning v itself when nothing changes.
func foldSpaces(v string) string {
	clean := len(v) == 0 || !isSpace(v[0]) && !isSpace(v[len(v)-1])
	for i := 0; clean && i < len(v); i++ {
		if isSpace(v[i]) && (v[i] != ' ' || i+1 < len(v) && isSpace(v[i+1])) {
			clean = false
		}
	}
	if clean {
		return v
	}
	var b strings.Builder
	space := true
	for i := 0; i < len(v); i++ {
		if isSpace(v[i]) {
			if !space {
				b.WriteByte(' ')
			}
			space = true
			continue
		}
		space = false
		b.WriteByte(v[i])
	}
	out := b.String()
	return strings.TrimSuffix(out, " ")
}

// objectClasses served, for the subschema entry.
var objectClasses = []string{
	"( 2.5.6.0 NAME 'top' ABSTRACT MUST objectClass )",
	"( 2.5.6.6 NAME 'person' SUP top STRUCTURAL MUST ( sn $ cn ) MAY ( telephoneNumber $ description ) )",
	"( 2.5.6.7 NAME 'organizationalPerson' SUP person STRUCTURAL MAY ( title $ street $ l $ st $ postalCode $ facsimileTelephoneNumber $ ou ) )",
	"( 2.16.840.1.113730.3.2.2 NAME 'inetOrgPerson' SUP organizationalPerson STRUCTURAL MAY ( uid $ mail $ givenName $ displayName $ mobile $ preferredLanguage $ departmentNumber $ employeeNumber $ manager $ o $ homePhone $ pager ) )",
	"( 2.5.6.9 NAME 'groupOfNames' SUP top STRUCTURAL MUST cn MAY ( member $ description $ o $ ou ) )",
	"( 2.5.6.4 NAME 'organization' SUP top STRUCTURAL MUST o MAY description )",
	"( 2.5.6.5 NAME 'organizationalUnit' SUP top STRUCTURAL MUST ou MAY description )",
	"( 1.3.6.1.4.1.1466.101.120.111 NAME 'extensibleObject' SUP top AUXILIARY )",
	"( 1.2.840.113556.1.5.9 NAME 'user' SUP organizationalPerson STRUCTURAL MAY ( sAMAccountName $ userPrincipalName $ userAccountControl $ objectGUID $ ipPhone $ department $ company $ memberOf ) )",
	"( 1.2.840.113556.1.5.8 NAME 'group' SUP top STRUCTURAL MAY ( sAMAccountName $ objectGUID $ member ) )",
	"( " + oidArc + ".4.1 NAME 'scimldapUser' SUP top AUXILIARY MAY ( enabled $ memberOf $ custom1 $ custom2 $ custom3 $ custom4 $ custom5 $ custom6 $ custom7 $ custom8 $ custom9 $ custom10 ) )",
}

var ruleNames = map[rule][3]string{
	ruleCaseIgnore: {"caseIgnoreMatch", "caseIgnoreOrderingMatch", "caseIgnoreSubstringsMatch"},
	ruleTelephone:  {"telephoneNumberMatch", "", "telephoneNumberSubstringsMatch"},
	ruleDN:         {"distinguishedNameMatch", "", ""},
	ruleOctet:      {"octetStringMatch", "", ""},
	ruleInteger:    {"integerMatch", "integerOrderingMatch", ""},
	ruleTime:       {"generalizedTimeMatch", "generalizedTimeOrderingMatch", ""},
	ruleBoolean:    {"booleanMatch", "", ""},
}

// attributeTypeDescriptions renders the RFC 4512 descriptions of every
// attribute served.
func attributeTypeDescriptions() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	var out []string
	seen := map[uint16]bool{}
	for _, t := range registry {
		if seen[t.id] {
			continue
		}
		seen[t.id] = true
		rn := ruleNames[t.rule]
		d := fmt.Sprintf("( %s NAME '%s' DESC '%s' EQUALITY %s", t.oid, t.name, t.desc, rn[0])
		if t.ordering && rn[1] != "" {
			d += " ORDERING " + rn[1]
		}
		if t.substr && rn[2] != "" {
			d += " SUBSTR " + rn[2]
		}
		d += " SYNTAX " + t.syntax
		if t.single {
			d += " SINGLE-VALUE"
		}
		if t.operational {
			d += " NO-USER-MODIFICATION USAGE directoryOperation"
		}
		out = append(out, d+" )")
	}
	return out
}
