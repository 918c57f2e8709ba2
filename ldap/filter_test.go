package ldap

import (
	"strings"
	"testing"

	"github.com/scimldap/scimldap/mapping"
)

func testEntry() *entry {
	return newEntry(mapping.Entry{DN: "uid=jdoe,ou=people,o=acme,dc=scimldap", Attrs: []mapping.Attr{
		{Name: "objectClass", Values: []string{"top", "person", "organizationalPerson", "inetOrgPerson", "user"}},
		{Name: "uid", Values: []string{"jdoe"}},
		{Name: "cn", Values: []string{"John  Rossi Doe"}},
		{Name: "sn", Values: []string{"Doe"}},
		{Name: "givenName", Values: []string{"Ryan"}},
		{Name: "mail", Values: []string{"John.Doe@Example.com"}},
		{Name: "telephoneNumber", Values: []string{"+1 555-0100"}},
		{Name: "userAccountControl", Values: []string{"514"}},
		{Name: "manager", Values: []string{"uid=Boss,ou=people,o=acme,dc=scimldap"}},
	}, Operational: []mapping.Attr{{Name: "entryUUID", Values: []string{"01A2-B3"}}}}, "1x")
}

func TestFilterMatch(t *testing.T) {
	e := testEntry()
	tests := []struct {
		filter string
		want   tri
	}{
		{"(uid=JDOE)", trueT},
		{"(objectClass=inetOrgPerson)", trueT},
		{"(objectclass=*)", trueT},
		{"(cn=john rossi doe)", trueT}, // insignificant spaces
		{"(cn=*ros*)", trueT},
		{"(|(cn=*ros*)(sn=*ros*))", trueT},
		{"(cn=john*doe)", trueT},
		{"(cn=*doe)", trueT},
		{"(cn=jane*)", falseT},
		{"(telephoneNumber=+15550100)", trueT}, // spaces and dashes ignored
		{"(telephoneNumber=+1 555 0100)", trueT},
		{"(telephoneNumber=*5550100)", trueT},
		{"(givenName>=Ryan)", trueT},
		{"(givenName<=zz)", trueT},
		{"(givenName>=S)", falseT},
		{"(&(objectClass=*)(givenName>=Ryan)(givenName<=zz)(givenName=Ryan*))", trueT},
		{"(&)", trueT},
		{"(|)", falseT},
		{"(!(uid=jdoe))", falseT},
		{"(IMHandle=foo*)", undefined},
		{"(|(IMHandle=foo*)(sn=doe))", trueT},      // Undefined does not fail an OR
		{"(|(IMHandle=foo*)(sn=nope))", undefined}, // but is not true either
		{"(!(IMHandle=x))", undefined},
		{"(IMHandle=*)", falseT},
		{"(manager=UID=boss, ou=People,o=acme,dc=scimldap)", trueT},
		{"(manager=*boss*)", undefined}, // DN syntax has no substring rule
		{"(userAccountControl:1.2.840.113556.1.4.803:=2)", trueT},
		{"(&(objectclass=user)(!(objectclass=Computer))(!(UserAccountControl:1.2.840.113556.1.4.803:=2)))", falseT},
		{"(userAccountControl:1.2.840.113556.1.4.804:=3)", trueT},
		{"(userAccountControl:1.2.840.113556.1.4.803:=1)", falseT},
		{"(userAccountControl>=500)", trueT},
		{"(uid:dn:=jdoe)", trueT},
		{"(ou:dn:=people)", trueT},
		{"(sn:caseExactMatch:=Doe)", trueT},
		{"(sn:caseExactMatch:=doe)", falseT},
		{"(sn:9.9.9:=doe)", undefined},
		{"(entryUUID=01a2-b3)", trueT},
		{`(cn=john \2a)`, falseT},
		{"(mail=john.doe@example.COM)", trueT},
		{"(sn~=DOE)", trueT},
		{"uid=jdoe", trueT}, // a bare item, as some clients send
	}
	for _, tt := range tests {
		f, err := ParseFilter(tt.filter)
		if err != nil {
			t.Fatalf("ParseFilter(%q): %v", tt.filter, err)
		}
		if got := f.match(e); got != tt.want {
			t.Errorf("match(%q) = %d; want %d", tt.filter, got, tt.want)
		}
	}
}

var badFilters = []string{"", "(", "()", "(uid=a", "(uid=a))", "(&(uid=a)", "(uid~a)", "(=a)", "(uid=\\zz)", "(uid=a(b)",
	"(:=a)", "(a b=c)", strings.Repeat("(!", 100) + "(a=b)" + strings.Repeat(")", 100)}

func TestFilterErrors(t *testing.T) {
	for _, s := range badFilters {
		if _, err := ParseFilter(s); err == nil {
			t.Errorf("ParseFilter(%q) succeeded; want an error", s)
		}
	}
	_, err := ParseFilter("(&(department=Sales)(l=NYC)")
	if err == nil || !strings.Contains(err.Error(), "position 27") {
		t.Fatalf("error %v; want the position of the missing parenthesis", err)
	}
}

func FuzzParseFilter(f *testing.F) {
	for _, s := range append(badFilters, "(|(cn=*ros*)(sn=*ros*))", "(&(objectclass=user)(!(UserAccountControl:1.2.840.113556.1.4.803:=2)))",
		"(givenName>=Ryan)", `(cn=a\2ab*c*d)`, "(uid:dn:caseExactMatch:=x)", "(|(o=foo*)(IMHandle=foo*))") {
		f.Add(s)
	}
	e := testEntry()
	f.Fuzz(func(t *testing.T, s string) {
		flt, err := ParseFilter(s)
		if err != nil {
			return
		}
		got := flt.match(e)
		if len(flt.String()) > 16384 {
			return // escaping made the printed form longer than a filter may be
		}
		again, err := ParseFilter(flt.String())
		if err != nil {
			t.Fatalf("ParseFilter(%q).String() = %q does not parse: %v", s, flt.String(), err)
		}
		if again.match(e) != got {
			t.Fatalf("%q and its printed form %q evaluate differently", s, flt.String())
		}
	})
}

func TestParseDN(t *testing.T) {
	tests := []struct{ in, norm string }{
		{"", ""},
		{"uid=jdoe,ou=people,o=acme,dc=scimldap", "uid=jdoe,ou=people,o=acme,dc=scimldap"},
		{"UID=JDoe , OU=People,O=Acme, DC=scimldap", "uid=jdoe,ou=people,o=acme,dc=scimldap"},
		{`cn=Doe\, John,ou=x`, `cn=doe\, john,ou=x`},
		{`cn=a\2cb,ou=x`, `cn=a\,b,ou=x`},
		{`cn=a+sn=b,ou=x`, `cn=a,ou=x`},
		{`cn=\ lead,ou=x`, `cn=\ lead,ou=x`},
	}
	for _, tt := range tests {
		got, err := normDN(tt.in)
		if err != nil || got != tt.norm {
			t.Errorf("normDN(%q) = %q, %v; want %q", tt.in, got, err, tt.norm)
		}
	}
	for _, bad := range []string{"nodn", "a=b,", "=x", `a=b\`, ",a=b"} {
		if _, err := normDN(bad); err == nil {
			t.Errorf("normDN(%q) succeeded; want an error", bad)
		}
	}
	if !isUnder("uid=a,ou=p,o=t", "o=t") || isUnder("o=tt", "o=t") || parentOf(`cn=a\,b,ou=x`) != "ou=x" {
		t.Fatal("isUnder/parentOf")
	}
	if m := mapping.EscapeDNValue("Doe, John+#"); m != `Doe\, John\+#` {
		t.Fatalf("EscapeDNValue = %q", m)
	}
}

func FuzzParseDN(f *testing.F) {
	for _, s := range []string{"uid=jdoe,ou=people,o=acme,dc=scimldap", `cn=Doe\, John`, `cn=#0403414243`, `a=b+c=d,e=f`, `cn=\ x\ ,o=y`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := normDN(s)
		if err != nil {
			return
		}
		if len(n) > 4096 {
			return // lower-casing made it longer than a DN may be
		}
		// A normalised DN is a fixed point.
		n2, err := normDN(n)
		if err != nil || n2 != n {
			t.Fatalf("normDN(%q) = %q; normDN of that = %q, %v", s, n, n2, err)
		}
	})
}

func TestNormIntoMatchesNormalize(t *testing.T) {
	types := []*attrType{lookupAttr("cn"), lookupAttr("telephoneNumber"), lookupAttr("manager"), lookupAttr("objectGUID"), lookupAttr("enabled")}
	for _, v := range []string{"", " ", "abc", "ABC", "  Mario   Rossi ", "a b", "Ana María", "+39 06-123 4567", "uid=A, ou=B", "\x00x", "İstanbul", "true "} {
		for _, ty := range types {
			var scratch [8]byte
			if got, want := ty.normInto(scratch[:0], v), ty.normalize(v); got != want {
				t.Errorf("%s.normInto(%q) = %q; normalize = %q", ty.name, v, got, want)
			}
		}
	}
}

func FuzzNormalize(f *testing.F) {
	f.Add("  Mario   Rossi ", "+39 06-12")
	f.Fuzz(func(t *testing.T, a, b string) {
		for _, ty := range []*attrType{lookupAttr("cn"), lookupAttr("mobile")} {
			for _, v := range []string{a, b} {
				var scratch [16]byte
				if got, want := ty.normInto(scratch[:0], v), ty.normalize(v); got != want {
					t.Fatalf("%s.normInto(%q) = %q; normalize = %q", ty.name, v, got, want)
				}
			}
		}
	})
}
