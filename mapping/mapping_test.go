package mapping

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/scimldap/scimldap/store"
)

func sampleUser() store.User {
	return store.User{ID: "01a2", ExternalID: "ext", UserName: "joy@contoso.com", Active: true,
		Name:              store.Name{Formatted: "Joy Young", FamilyName: "Young", GivenName: "Joy"},
		DisplayName:       "Joy Young",
		Title:             "Engineer",
		PreferredLanguage: "en-US",
		Emails:            []store.MultiValue{{Value: "joy@contoso.com", Type: "work", Primary: true}},
		PhoneNumbers:      []store.MultiValue{{Value: "+1 555 0100", Type: "work"}, {Value: "+1 555 0199", Type: "mobile"}, {Value: "+1 555 0111", Type: "fax"}},
		Addresses:         []store.Address{{StreetAddress: "1 Main St", Locality: "Springfield", Region: "IL", PostalCode: "62701", Country: "US", Type: "work"}},
		Enterprise:        store.Enterprise{Department: "Sales", EmployeeNumber: "42", Organization: "Contoso", Manager: "boss"},
		Extensions:        map[string]json.RawMessage{"urn:ietf:params:scim:schemas:extension:interactsoftware:2.0:User": json.RawMessage(`{"location":"Rome"}`)},
	}
}

// A user rendered as SCIM and read back is the same user: what Entra sent
// comes back.
func TestUserRoundTrip(t *testing.T) {
	u := sampleUser()
	doc := UserResource(&u, Links{Base: "https://h/scim/v2/t"}, nil, nil)
	raw, _ := json.Marshal(doc)
	var back map[string]any
	json.Unmarshal(raw, &back)
	got, err := UserFromResource(back)
	if err != nil {
		t.Fatal(err)
	}
	got.ID = u.ID
	if !reflect.DeepEqual(got, u) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, u)
	}
	if m := doc[SchemaEnterprise].(map[string]any)["manager"].(map[string]any); m["value"] != "boss" || m["$ref"] != "https://h/scim/v2/t/Users/boss" {
		t.Fatalf("manager rendered as %v; want a complex value", m)
	}
}

func TestUserFromResourceTolerance(t *testing.T) {
	tests := []struct {
		name  string
		body  string
		check func(u store.User) bool
		err   string
	}{
		{"string booleans", `{"userName":"a","active":"False","emails":[{"value":"x","primary":"True"}]}`,
			func(u store.User) bool { return !u.Active && u.Emails[0].Primary }, ""},
		{"any case keys", `{"USERNAME":"a","Name":{"FamilyName":"F"},"urn:ietf:params:scim:schemas:extension:enterprise:2.0:user":{"Department":"D"}}`,
			func(u store.User) bool {
				return u.UserName == "a" && u.Name.FamilyName == "F" && u.Enterprise.Department == "D"
			}, ""},
		{"manager forms", `{"userName":"a","urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":{"manager":[{"value":"m","$ref":null}]}}`,
			func(u store.User) bool { return u.Enterprise.Manager == "m" }, ""},
		{"nulls and read-only", `{"userName":"a","title":null,"id":"x","meta":{"created":"x"},"groups":[{"value":"g"}],"password":"p"}`,
			func(u store.User) bool { return u.Title == "" && u.ID == "" }, ""},
		{"single object for a multi-valued attribute", `{"userName":"a","emails":{"value":"x"}}`,
			func(u store.User) bool { return len(u.Emails) == 1 }, ""},
		{"number where a string is expected", `{"userName":"a","urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":{"employeeNumber":701984}}`,
			func(u store.User) bool { return u.Enterprise.EmployeeNumber == "701984" }, ""},
		{"bad boolean", `{"userName":"a","active":"maybe"}`, nil, `attribute "active": must be true or false`},
		{"object for a string", `{"userName":{"a":1}}`, nil, `attribute "userName": must be a string`},
		{"non-object extension", `{"userName":"a","urn:x:y:User":"z"}`, nil, "must be sent as an object"},
	}
	for _, tt := range tests {
		var doc map[string]any
		if err := json.Unmarshal([]byte(tt.body), &doc); err != nil {
			t.Fatal(err)
		}
		u, err := UserFromResource(doc)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%s: err = %v; want %q", tt.name, err, tt.err)
			}
			continue
		}
		if err != nil || !tt.check(u) {
			t.Errorf("%s: %+v, %v", tt.name, u, err)
		}
	}
}

func TestCustomFields(t *testing.T) {
	tests := []struct {
		in     string
		fields map[int]string
		ok     bool
		err    string
	}{
		{"7fce0092-d52e-4f76-b727-3955bd72c939", nil, false, ""},
		{"ImagicleCustomFields$$$Custom1=$$$Custom2=R&D Manager", map[int]string{1: "", 2: "R&D Manager"}, true, ""},
		{"custom3=Rome", map[int]string{3: "Rome"}, true, ""},
		{"Custom1=a$$$custom10=b", map[int]string{1: "a", 10: "b"}, true, ""},
		{"X$$$Custom11=a", nil, true, "Custom1 to Custom10"},
		{"X$$$Custom1", nil, true, `has no "="`},
		{"X$$$Custom1=a$$$Custom1=b", nil, true, "appears twice"},
		{"X$$$Custom2=" + strings.Repeat("x", 257), nil, true, "at most 256"},
	}
	for _, tt := range tests {
		f, ok, err := ParseCustomFields(tt.in)
		if ok != tt.ok || (tt.err == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.err) {
			t.Errorf("ParseCustomFields(%q) = %v, %v, %v", tt.in, f, ok, err)
			continue
		}
		if tt.err == "" && tt.ok && !reflect.DeepEqual(f, tt.fields) {
			t.Errorf("ParseCustomFields(%q) = %v; want %v", tt.in, f, tt.fields)
		}
	}
}

func TestLDAPEntry(t *testing.T) {
	o, err := NewOptions(Config{Suffix: "dc=scimldap"})
	if err != nil {
		t.Fatal(err)
	}
	u := sampleUser()
	u.ExternalID = "ImagicleCustomFields$$$Custom1=Rome"
	e := o.UserEntry("acme", &u, "uid=boss,ou=people,o=acme,dc=scimldap", []string{"cn=g,ou=groups,o=acme,dc=scimldap"})
	got := map[string][]string{}
	for _, a := range e.Attrs {
		got[a.Name] = a.Values
	}
	want := map[string]string{"uid": "joy@contoso.com", "cn": "Joy Young", "displayName": "Joy Young", "mail": "joy@contoso.com", "givenName": "Joy",
		"sn": "Young", "preferredLanguage": "en-US", "telephoneNumber": "+1 555 0100", "mobile": "+1 555 0199", "facsimileTelephoneNumber": "+1 555 0111",
		"departmentNumber": "Sales", "street": "1 Main St", "l": "Springfield", "st": "IL", "postalCode": "62701", "c": "US", "title": "Engineer",
		"employeeNumber": "42", "o": "Contoso", "manager": "uid=boss,ou=people,o=acme,dc=scimldap", "custom1": "Rome", "enabled": "TRUE",
		"memberOf": "cn=g,ou=groups,o=acme,dc=scimldap"}
	for k, v := range want {
		if len(got[k]) != 1 || got[k][0] != v {
			t.Errorf("%s = %v; want %q", k, got[k], v)
		}
	}
	if e.DN != "uid=joy@contoso.com,ou=people,o=acme,dc=scimldap" {
		t.Errorf("DN = %s", e.DN)
	}
	u.DisplayName = ""
	for _, a := range o.UserEntry("acme", &u, "", nil).Attrs {
		if a.Name == "cn" && a.Values[0] != "joy@contoso.com" {
			t.Errorf("cn without displayName = %v; want the userName", a.Values)
		}
	}
	for key, cfg := range map[string]Config{
		"attributes.mail":   {Attributes: map[string]string{"mail": "emial"}},
		"attributes.uid":    {Attributes: map[string]string{"uid": ""}},
		"attributes.x y":    {Attributes: map[string]string{"x y": "title"}},
		"custom_fields[0]":  {CustomFields: []string{"bad name"}},
		"attributes.street": {Attributes: map[string]string{"street": "addresses[type eq \"work\"].nope"}},
	} {
		if _, err := NewOptions(cfg); err == nil || !strings.HasPrefix(err.Error(), key) {
			t.Errorf("NewOptions(%v) err = %v; want it to name %s", cfg, err, key)
		}
	}
	if g := GUIDBytes("not-a-guid", "00112233-4455-6677-8899-aabbccddeeff"); g != "\x33\x22\x11\x00\x55\x44\x77\x66\x88\x99\xaa\xbb\xcc\xdd\xee\xff" {
		t.Errorf("GUIDBytes = %x", g)
	}
}

// FuzzResources feeds arbitrary JSON to the resource readers: no panic, and
// what is accepted renders and reads back to the same record.
// checkFillCore checks that fillCore sets the core attributes of doc
// exactly as decoding their canonical values as JSON would.
func checkFillCore(t *testing.T, doc map[string]any) {
	t.Helper()
	core := map[string]any{}
	for k, v := range doc {
		switch strings.ToLower(k) {
		case "schemas", "id", "meta", "groups", "password", "externalid", "active":
			continue
		}
		if a := UserSchema.Attr(k); a != nil {
			if cv, err := canonical(a, a.Name, v); err == nil && cv != nil {
				core[a.Name] = cv
			}
		}
	}
	raw, _ := json.Marshal(core)
	var viaJSON, direct store.User
	if err := json.Unmarshal(raw, &viaJSON); err != nil {
		t.Fatalf("canonical values do not decode: %v\n%s", err, raw)
	}
	fillCore(&direct, core)
	if !reflect.DeepEqual(direct, viaJSON) {
		t.Fatalf("fillCore differs from JSON decoding of %s:\n got %+v\nwant %+v", raw, direct, viaJSON)
	}
}

func TestFillCoreMatchesJSONDecoding(t *testing.T) {
	u := sampleUser()
	u.IMs = []store.MultiValue{{Value: "joy", Type: "skype", Display: "Joy"}}
	u.Roles = []store.MultiValue{{Value: "admin", Primary: true}}
	u.Name.HonorificPrefix, u.Name.MiddleName = "Dr", "Q"
	u.NickName, u.ProfileURL, u.UserType, u.Locale, u.Timezone = "J", "https://p", "Employee", "en-US", "Europe/Rome"
	doc := UserResource(&u, Links{Base: "https://h/scim/v2/t"}, nil, nil)
	raw, _ := json.Marshal(doc)
	var back map[string]any
	json.Unmarshal(raw, &back)
	checkFillCore(t, back)
	var entra map[string]any
	json.Unmarshal([]byte(`{"userName":"a","emails":[{"value":"x","type":"work","primary":"True"}],"phoneNumbers":"+1 555","title":7,
		"addresses":[{"type":"work","streetAddress":"1 Main","country":null}],"name":{"givenName":"G","bogus":1},"x509Certificates":[{"value":"MII"}]}`), &entra)
	checkFillCore(t, entra)
}

func FuzzResources(f *testing.F) {
	f.Add(`{"userName":"a","active":"True","emails":[{"value":"x","type":"work"}],"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":{"manager":"m"}}`)
	f.Add(`{"displayName":"g","members":[{"value":"a","$ref":null},"b"]}`)
	f.Add(`{"userName":"a","name":{"givenName":1},"addresses":[null,{"country":null}]}`)
	f.Fuzz(func(t *testing.T, body string) {
		var doc map[string]any
		if json.Unmarshal([]byte(body), &doc) != nil {
			return
		}
		checkFillCore(t, doc)
		if u, err := UserFromResource(doc); err == nil {
			raw, _ := json.Marshal(UserResource(&u, Links{}, nil, nil))
			var back map[string]any
			json.Unmarshal(raw, &back)
			u2, err := UserFromResource(back)
			if err != nil {
				t.Fatalf("rendered user does not read back: %v\n%s", err, raw)
			}
			if !reflect.DeepEqual(u, u2) {
				t.Fatalf("round trip differs:\n%+v\n%+v", u, u2)
			}
			o, _ := NewOptions(Config{Suffix: "dc=x"})
			o.UserEntry("t", &u, "", nil)
		}
		if g, err := GroupFromResource(doc); err == nil {
			GroupResource(&g, Links{})
		}
	})
}
