package scim

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/scimldap/scimldap/mapping"
	"github.com/scimldap/scimldap/store"
)

var filterCases = []struct {
	in   string
	want string // String() of the parse, or "" for an error
}{
	{`userName eq "bjensen"`, `userName eq "bjensen"`},
	{`userName Eq "bjensen"`, `userName eq "bjensen"`},
	{`externalId eq jyoung`, `externalId eq "jyoung"`},
	{`externalId eq 00123`, `externalId eq 00123`},
	{`name.familyName co "O'Malley"`, `name.familyName co "O'Malley"`},
	{`meta.lastModified gt "2011-05-13T04:42:34Z"`, `meta.lastModified gt "2011-05-13T04:42:34Z"`},
	{`title pr and userType eq "Employee"`, `(title pr and userType eq "Employee")`},
	{`title pr or userType eq "Intern"`, `(title pr or userType eq "Intern")`},
	{`a eq 1 or b eq 2 and c eq 3`, `(a eq 1 or (b eq 2 and c eq 3))`},
	{`userType eq "Employee" and (emails co "example.com" or emails.value co "example.org")`, `(userType eq "Employee" and (emails co "example.com" or emails.value co "example.org"))`},
	{`userType ne "Employee" and not (emails co "example.com" or emails.value co "example.org")`, `(userType ne "Employee" and not ((emails co "example.com" or emails.value co "example.org")))`},
	{`emails[type eq "work" and value co "@example.com"] or ims[type eq "xmpp" and value co "@foo.com"]`, `(emails[(type eq "work" and value co "@example.com")] or ims[(type eq "xmpp" and value co "@foo.com")])`},
	{`emails[type eq "work"].value eq "a@b.c"`, `emails[type eq "work"].value eq "a@b.c"`},
	{`urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "7"`, `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "7"`},
	{`urn:ietf:params:scim:schemas:core:2.0:User:name.familyName eq "x"`, `urn:ietf:params:scim:schemas:core:2.0:User:name.familyName eq "x"`},
	{`meta.Created gt 2015-10-10T14:38:21.8617979-07:00`, `meta.Created gt "2015-10-10T14:38:21.8617979-07:00"`},
	{`active eq true`, `active eq true`},
	{`x eq null`, `x eq null`},
	{`x eq "quote \" and backslash \\"`, `x eq "quote \" and backslash \\"`},
	{``, ""},
	{`userName`, ""},
	{`userName eq`, ""},
	{`userName xx "a"`, ""},
	{`(userName eq "a"`, ""},
	{`userName eq "a")`, ""},
	{`not userName eq "a"`, ""},
	{`emails[type eq "work"`, ""},
	{`userName eq "unterminated`, ""},
	{`1abc eq "a"`, ""},
	{`urn:ietf:params: eq "a"`, ""},
	{strings.Repeat("(", 100) + `a eq 1` + strings.Repeat(")", 100), ""},
}

func TestParseFilter(t *testing.T) {
	for _, tt := range filterCases {
		f, err := ParseFilter(tt.in)
		switch {
		case tt.want == "" && err == nil:
			t.Errorf("ParseFilter(%q) = %s; want an error", tt.in, f)
		case tt.want != "" && err != nil:
			t.Errorf("ParseFilter(%q) error %v; want %s", tt.in, err, tt.want)
		case tt.want != "" && f.String() != tt.want:
			t.Errorf("ParseFilter(%q) = %s; want %s", tt.in, f, tt.want)
		}
	}
}

func TestMatch(t *testing.T) {
	u := store.User{ID: "i1", UserName: "Bjensen", Active: true, ExternalID: "E-1",
		Name:         store.Name{FamilyName: "Jensen", GivenName: "Barbara"},
		Emails:       []store.MultiValue{{Value: "bjensen@example.com", Type: "work"}, {Value: "babs@jensen.org", Type: "home"}},
		Enterprise:   store.Enterprise{EmployeeNumber: "701984", Manager: "m1"},
		PhoneNumbers: []store.MultiValue{{Value: "+1 555 0100", Type: "work"}},
		Meta:         store.Meta{Created: time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)}}
	doc := mapping.UserResource(&u, mapping.Links{Base: "https://x/scim/v2/t"}, nil, nil)
	tests := []struct {
		f    string
		want bool
	}{
		{`userName eq "bjensen"`, true},
		{`externalId eq "e-1"`, false}, // externalId is case-exact
		{`externalId eq "E-1"`, true},
		{`emails[type eq "work"].value eq "BJENSEN@example.com"`, true},
		{`emails[type eq "home"].value eq "bjensen@example.com"`, false},
		{`emails co "jensen.org"`, true},
		{`emails.value ew ".org"`, true},
		{`name.familyName sw "jen"`, true},
		{`title pr`, false},
		{`not (title pr)`, true},
		{`active eq true`, true},
		{`active eq "True"`, true},
		{`active eq false`, false},
		{`title ne "x"`, true},
		{`userName ne "BJENSEN"`, false},
		{`employeeNumber eq "701984"`, true},
		{`urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value eq "m1"`, true},
		{`meta.created gt "2000-01-01T00:00:00Z"`, true},
		{`meta.created lt 2000-01-01T00:00:00.0000000+01:00`, false},
		{`userName gt "a" and userName lt "c"`, true},
		{`emails[type eq "work" and value co "example"]`, true},
		{`emails[type eq "other"]`, false},
		{`nosuch eq "x"`, false},
		{`nosuch ne "x"`, true},
	}
	for _, tt := range tests {
		f, err := ParseFilter(tt.f)
		if err != nil {
			t.Fatalf("ParseFilter(%q): %v", tt.f, err)
		}
		if got := userSchemas.Match(doc, f); got != tt.want {
			t.Errorf("Match(%q) = %v; want %v", tt.f, got, tt.want)
		}
	}
}

func FuzzParseFilter(f *testing.F) {
	for _, tt := range filterCases {
		f.Add(tt.in)
	}
	doc := mapping.UserResource(&store.User{ID: "x", UserName: "u", Emails: []store.MultiValue{{Value: "a@b", Type: "work"}}}, mapping.Links{}, nil, nil)
	f.Fuzz(func(t *testing.T, s string) {
		flt, err := ParseFilter(s)
		if err != nil {
			return
		}
		// Printing and parsing again gives the same filter.
		again, err := ParseFilter(flt.String())
		if err != nil {
			t.Fatalf("ParseFilter(%q).String() = %q does not parse: %v", s, flt.String(), err)
		}
		if again.String() != flt.String() {
			t.Fatalf("round trip of %q: %q then %q", s, flt.String(), again.String())
		}
		userSchemas.Match(doc, flt) // must not panic
		planUsers(flt)              // nor the planner
	})
}

func FuzzPatch(f *testing.F) {
	seeds := []string{
		`{"Operations":[{"op":"Replace","path":"emails[type eq \"work\"].value","value":"x@y"}]}`,
		`{"Operations":[{"op":"add","value":{"name.givenName":"A","urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager":"m"}}]}`,
		`{"Operations":[{"op":"Remove","path":"members","value":[{"value":"a"}]}]}`,
		`{"Operations":[{"op":"remove","path":"members[value eq \"a\"]"}]}`,
		`{"Operations":[{"op":"replace","path":"active","value":"False"}]}`,
		`{"Operations":[{"op":"add","path":"phoneNumbers[type eq \"mobile\"].value","value":"1"}]}`,
		`{"Operations":[{"op":"replace","path":"name","value":{"familyName":"F"}}]}`,
		`{"Operations":[{"op":"add","value":{"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":{"department":"D"}}}]}`,
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		ops, err := ParsePatch([]byte(body))
		if err != nil {
			return
		}
		u := store.User{ID: "x", UserName: "u", Emails: []store.MultiValue{{Value: "a@b", Type: "work"}}}
		doc := mapping.UserResource(&u, mapping.Links{}, nil, nil)
		if err := applyPatch(doc, userSchemas, ops); err != nil {
			return
		}
		// Whatever the patch did, the result converts back or is refused
		// with a value error, and renders again.
		nu, err := mapping.UserFromResource(doc)
		if err != nil {
			return
		}
		if _, err := json.Marshal(mapping.UserResource(&nu, mapping.Links{}, nil, nil)); err != nil {
			t.Fatal(err)
		}
		gdoc := mapping.GroupResource(&store.Group{ID: "g", DisplayName: "G", Members: []store.Member{{ID: "a"}}}, mapping.Links{})
		if applyPatch(gdoc, groupSchemas, ops) == nil {
			mapping.GroupFromResource(gdoc)
		}
	})
}
