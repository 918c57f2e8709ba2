package ldap

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/scimldap/scimldap/mapping"
	"github.com/scimldap/scimldap/store"
	apptls "github.com/scimldap/scimldap/tls"
)

type testServer struct {
	srv         *Server
	st          *store.Store
	plain, tlsA string
	bindDN, pw  string
	stopped     bool
}

// newTestServer starts the LDAP server on loopback with tenant "acme"
// (service account "reader") and the given per-tenant options.
func newTestServer(t testing.TB, tune func(*Config), opts map[string]mapping.Config) *testServer {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pw := seedTenants(t, st)
	ts := serveStore(t, st, dir, tune, opts, io.Discard)
	ts.pw = pw
	t.Cleanup(func() { ts.shutdown(t) })
	return ts
}

// seedTenants creates tenants "acme" and "other" and acme's service
// account "reader", returning its password.
func seedTenants(t testing.TB, st *store.Store) string {
	t.Helper()
	ctx := context.Background()
	for _, name := range []string{"acme", "other"} {
		_, tok := store.NewSecret()
		if _, err := st.CreateTenant(ctx, name, tok); err != nil {
			t.Fatal(err)
		}
	}
	pw, hash := store.NewSecret()
	if err := st.PutAccount(ctx, "acme", store.Account{Name: "reader", Password: hash}); err != nil {
		t.Fatal(err)
	}
	return pw
}

// serveStore starts a server over st on loopback ports, logging to logs.
func serveStore(t testing.TB, st *store.Store, dir string, tune func(*Config), opts map[string]mapping.Config, logs io.Writer) *testServer {
	t.Helper()
	certs, err := apptls.New(apptls.Config{Mode: apptls.ModeSelfSigned}, dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Tenant = func(name string) mapping.Options {
		c := opts[name]
		c.Suffix = cfg.Suffix
		o, err := mapping.NewOptions(c)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	if tune != nil {
		tune(&cfg)
	}
	srv, err := New(st, cfg, certs.Config(), slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{srv: srv, st: st, bindDN: "uid=reader,ou=admin,o=acme,dc=scimldap"}
	for _, ldaps := range []bool{false, true} {
		ln, err := srv.Listen("127.0.0.1:0", ldaps)
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln, ldaps)
		if ldaps {
			ts.tlsA = ln.Addr().String()
		} else {
			ts.plain = ln.Addr().String()
		}
	}
	return ts
}

// shutdown stops the server once; later calls do nothing.
func (ts *testServer) shutdown(t testing.TB) error {
	if ts.stopped {
		return nil
	}
	ts.stopped = true
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return ts.srv.Shutdown(ctx)
}

func (ts *testServer) dial(t testing.TB) *goldap.Conn {
	t.Helper()
	l, err := goldap.DialURL("ldap://" + ts.plain)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func (ts *testServer) bound(t testing.TB) *goldap.Conn {
	t.Helper()
	l := ts.dial(t)
	if err := l.Bind(ts.bindDN, ts.pw); err != nil {
		t.Fatal(err)
	}
	return l
}

func (ts *testServer) addUsers(t testing.TB, tenant string, n int, mod func(i int, u *store.User)) []store.User {
	t.Helper()
	var out []store.User
	for i := 0; i < n; i++ {
		u := store.User{UserName: fmt.Sprintf("user%04d@acme.test", i), Active: true, DisplayName: fmt.Sprintf("User %04d", i),
			Name:         store.Name{GivenName: "Given", FamilyName: fmt.Sprintf("Family%04d", i)},
			Emails:       []store.MultiValue{{Value: fmt.Sprintf("user%04d@acme.test", i), Type: "work"}},
			PhoneNumbers: []store.MultiValue{{Value: fmt.Sprintf("+49 30 %06d", i), Type: "work"}}}
		if mod != nil {
			mod(i, &u)
		}
		u, err := ts.st.CreateUser(context.Background(), tenant, u)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, u)
	}
	return out
}

func search(t testing.TB, l *goldap.Conn, base string, scope int, filter string, attrs ...string) []*goldap.Entry {
	t.Helper()
	res, err := l.Search(goldap.NewSearchRequest(base, scope, 0, 0, 0, false, filter, attrs, nil))
	if err != nil {
		t.Fatalf("search %s %s: %v", base, filter, err)
	}
	return res.Entries
}

func dns(es []*goldap.Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.DN)
	}
	sort.Strings(out)
	return out
}

const people = "ou=people,o=acme,dc=scimldap"

func TestBindPolicy(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	l := ts.dial(t)
	// Anonymous: root DSE yes, directory no.
	if err := l.UnauthenticatedBind(""); err != nil {
		t.Fatal(err)
	}
	root := search(t, l, "", goldap.ScopeBaseObject, "(objectClass=*)", "*")
	if len(root) != 1 || root[0].GetAttributeValue("supportedLDAPVersion") != "3" || !contains(root[0].GetAttributeValues("supportedControl"), oidPaging) {
		t.Fatalf("root DSE = %v", root)
	}
	schema := search(t, l, "cn=Subschema", goldap.ScopeBaseObject, "(objectClass=*)", "attributeTypes", "objectClasses")
	if len(schema) != 1 || len(schema[0].GetAttributeValues("attributeTypes")) < 30 {
		t.Fatalf("subschema = %v", schema)
	}
	_, err := l.Search(goldap.NewSearchRequest(people, goldap.ScopeWholeSubtree, 0, 0, 0, false, "(uid=*)", nil, nil))
	if !goldap.IsErrorWithCode(err, goldap.LDAPResultInsufficientAccessRights) {
		t.Fatalf("anonymous search: %v; want insufficientAccessRights", err)
	}
	// A name with an empty password is refused, not treated as anonymous.
	if err := l.UnauthenticatedBind(ts.bindDN); !goldap.IsErrorWithCode(err, goldap.LDAPResultUnwillingToPerform) {
		t.Fatalf("unauthenticated bind: %v; want unwillingToPerform", err)
	}
	if err := l.Bind(ts.bindDN, "wrong"); !goldap.IsErrorWithCode(err, goldap.LDAPResultInvalidCredentials) {
		t.Fatalf("wrong password: %v; want invalidCredentials", err)
	}
	if err := l.Bind("uid=reader,ou=admin,o=other,dc=scimldap", ts.pw); !goldap.IsErrorWithCode(err, goldap.LDAPResultInvalidCredentials) {
		t.Fatalf("account of another tenant: %v", err)
	}
	if err := l.Bind("reader@acme", ts.pw); err != nil {
		t.Fatalf("friendly bind form: %v", err)
	}
	if err := l.Bind("UID=Reader, OU=Admin, O=ACME, DC=scimldap", ts.pw); err != nil {
		t.Fatalf("DN in another case: %v", err)
	}
	if err := l.Bind(helloPrefix+"x", "x"); !goldap.IsErrorWithCode(err, goldap.LDAPResultInvalidCredentials) {
		t.Fatalf("reserved hello name: %v", err)
	}
	who, err := l.WhoAmI(nil)
	if err != nil || who.AuthzID != "dn:uid=reader,ou=admin,o=acme,dc=scimldap" {
		t.Fatalf("WhoAmI = %v, %v", who, err)
	}
}

func TestFailedBindsAreThrottled(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	l := ts.dial(t)
	for i := 0; i < 3; i++ {
		l.Bind(ts.bindDN, "wrong")
	}
	began := time.Now()
	l.Bind(ts.bindDN, "wrong")
	if d := time.Since(began); d < 200*time.Millisecond {
		t.Fatalf("fourth failed bind answered in %s; want it delayed", d)
	}
	if err := l.Bind(ts.bindDN, ts.pw); err != nil { // still possible, and resets
		t.Fatal(err)
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func TestSearchScopesFiltersAndAttributes(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	us := ts.addUsers(t, "acme", 20, func(i int, u *store.User) {
		if i == 3 {
			u.Name.FamilyName, u.DisplayName = "Rossi", "Mario Rossi"
		}
		if i == 4 {
			u.Name.GivenName = "Ross"
		}
	})
	ctx := context.Background()
	g, err := ts.st.CreateGroup(ctx, "acme", store.Group{DisplayName: "Sales", Members: []store.Member{{ID: us[3].ID}, {ID: us[4].ID}}})
	if err != nil {
		t.Fatal(err)
	}
	l := ts.bound(t)
	tests := []struct {
		base   string
		scope  int
		filter string
		want   int
	}{
		{people, goldap.ScopeSingleLevel, "(objectClass=inetOrgPerson)", 20},
		{"o=acme,dc=scimldap", goldap.ScopeSingleLevel, "(objectClass=*)", 3}, // people, groups, admin
		{"o=acme,dc=scimldap", goldap.ScopeWholeSubtree, "(objectClass=*)", 1 + 3 + 20 + 1},
		{"dc=scimldap", goldap.ScopeWholeSubtree, "(objectClass=inetOrgPerson)", 20},
		{"dc=scimldap", goldap.ScopeSingleLevel, "(objectClass=*)", 1},
		{"dc=scimldap", goldap.ScopeBaseObject, "(objectClass=*)", 1},
		{people, goldap.ScopeBaseObject, "(objectClass=*)", 1},
		{people, goldap.ScopeWholeSubtree, "(|(cn=*ros*)(sn=*ros*)(givenName=*ros*))", 2},
		{people, goldap.ScopeWholeSubtree, "(uid=USER0007@acme.test)", 1},
		{people, goldap.ScopeWholeSubtree, "(telephoneNumber=+4930000011)", 1},
		{people, goldap.ScopeWholeSubtree, "(|(telephoneNumber=+49 30 000012)(mobile=+49 30 000012))", 1},
		{people, goldap.ScopeWholeSubtree, "(&(objectClass=inetOrgPerson)(!(sn=Family*)))", 1},
		{people, goldap.ScopeWholeSubtree, "(|(IMHandle=ros*)(sn=ros*))", 1},
		{people, goldap.ScopeWholeSubtree, "(memberOf=cn=Sales,ou=groups,o=acme,dc=scimldap)", 2},
		{"ou=groups,o=acme,dc=scimldap", goldap.ScopeWholeSubtree, "(member=uid=user0003@acme.test,ou=people,o=acme,dc=scimldap)", 1},
		{people, goldap.ScopeWholeSubtree, "(&)", 21},
		{people, goldap.ScopeWholeSubtree, "(|)", 0},
		{people, goldap.ScopeWholeSubtree, "(entryUUID=" + us[5].ID + ")", 1},
	}
	for _, tt := range tests {
		if got := search(t, l, tt.base, tt.scope, tt.filter); len(got) != tt.want {
			t.Errorf("search(%s, %d, %s) = %d entries %v; want %d", tt.base, tt.scope, tt.filter, len(got), dns(got), tt.want)
		}
	}
	e := search(t, l, people, goldap.ScopeWholeSubtree, "(uid=user0003@acme.test)", "cn", "memberOf", "+")[0]
	if e.GetAttributeValue("cn") != "Mario Rossi" || e.GetAttributeValue("memberOf") != "cn=Sales,ou=groups,o=acme,dc=scimldap" ||
		e.GetAttributeValue("entryUUID") != us[3].ID || e.GetAttributeValue("createTimestamp") == "" || e.GetAttributeValue("sn") != "" {
		t.Fatalf("attribute selection: %v", e.Attributes)
	}
	if e := search(t, l, people, goldap.ScopeWholeSubtree, "(uid=user0003@acme.test)", "1.1")[0]; len(e.Attributes) != 0 {
		t.Fatalf(`"1.1" returned %v`, e.Attributes)
	}
	res, err := l.Search(goldap.NewSearchRequest(people, goldap.ScopeWholeSubtree, 0, 0, 0, true, "(uid=user0003@acme.test)", []string{"sn"}, nil))
	if err != nil || len(res.Entries[0].Attributes) != 1 || len(res.Entries[0].Attributes[0].Values) != 0 {
		t.Fatalf("typesOnly: %v %v", res, err)
	}
	// A SCIM change is visible to the next search: rename, group, delete.
	if _, err := ts.st.UpdateUser(ctx, "acme", us[3].ID, 0, func(u *store.User) error { u.UserName = "mario@acme.test"; return nil }); err != nil {
		t.Fatal(err)
	}
	grp := search(t, l, "ou=groups,o=acme,dc=scimldap", goldap.ScopeSingleLevel, "(cn=sales)", "member")
	if !contains(grp[0].GetAttributeValues("member"), "uid=mario@acme.test,ou=people,o=acme,dc=scimldap") {
		t.Fatalf("group after rename: %v", grp[0].GetAttributeValues("member"))
	}
	if _, err := ts.st.UpdateGroup(ctx, "acme", g.ID, 0, func(g *store.Group) error { g.Members = g.Members[:1]; return nil }); err != nil {
		t.Fatal(err)
	}
	if got := search(t, l, people, goldap.ScopeWholeSubtree, "(memberOf=cn=sales,ou=groups,o=acme,dc=scimldap)"); len(got) != 1 {
		t.Fatalf("memberOf after removal: %v", dns(got))
	}
	if err := ts.st.DeleteUser(ctx, "acme", us[0].ID); err != nil {
		t.Fatal(err)
	}
	if got := search(t, l, people, goldap.ScopeSingleLevel, "(objectClass=*)"); len(got) != 19 {
		t.Fatalf("after delete: %d entries", len(got))
	}
	// Errors.
	_, err = l.Search(goldap.NewSearchRequest("ou=nope,o=acme,dc=scimldap", goldap.ScopeWholeSubtree, 0, 0, 0, false, "(objectClass=*)", nil, nil))
	if !goldap.IsErrorWithCode(err, goldap.LDAPResultNoSuchObject) {
		t.Fatalf("missing base: %v", err)
	}
	_, err = l.Search(goldap.NewSearchRequest("o=other,dc=scimldap", goldap.ScopeWholeSubtree, 0, 0, 0, false, "(objectClass=*)", nil, nil))
	if !goldap.IsErrorWithCode(err, goldap.LDAPResultNoSuchObject) {
		t.Fatalf("other tenant's base: %v; want noSuchObject", err)
	}
	_, err = l.Search(goldap.NewSearchRequest("not a dn", goldap.ScopeWholeSubtree, 0, 0, 0, false, "(objectClass=*)", nil, nil))
	if !goldap.IsErrorWithCode(err, goldap.LDAPResultInvalidDNSyntax) {
		t.Fatalf("bad base: %v", err)
	}
}

func TestPagingReturnsEveryEntryOnce(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	ts.addUsers(t, "acme", 1234, nil)
	l := ts.bound(t)
	for _, size := range []uint32{1, 7, 100, 500, 5000} {
		res, err := l.SearchWithPaging(goldap.NewSearchRequest(people, goldap.ScopeSingleLevel, 0, 0, 0, false, "(objectClass=inetOrgPerson)", []string{"uid"}, nil), size)
		if err != nil {
			t.Fatalf("page size %d: %v", size, err)
		}
		seen := map[string]bool{}
		for _, e := range res.Entries {
			if seen[e.DN] {
				t.Fatalf("page size %d: %s returned twice", size, e.DN)
			}
			seen[e.DN] = true
		}
		if len(seen) != 1234 {
			t.Fatalf("page size %d: %d entries; want 1234", size, len(seen))
		}
	}
	// Page by page by hand: the control is on every page, the last has an
	// empty cookie, and a stale cookie is refused.
	paging := goldap.NewControlPaging(500)
	pages := 0
	var first []byte
	for {
		res, err := l.Search(goldap.NewSearchRequest(people, goldap.ScopeSingleLevel, 0, 0, 0, false, "(objectClass=*)", []string{"1.1"}, []goldap.Control{paging}))
		if err != nil {
			t.Fatal(err)
		}
		pages++
		c, ok := goldap.FindControl(res.Controls, goldap.ControlTypePaging).(*goldap.ControlPaging)
		if !ok {
			t.Fatalf("page %d has no paged-results control", pages)
		}
		if pages == 1 {
			first = c.Cookie
		}
		if len(c.Cookie) == 0 {
			break
		}
		paging.SetCookie(c.Cookie)
	}
	if pages != 3 {
		t.Fatalf("%d pages of 500 for 1234 entries; want 3", pages)
	}
	paging.SetCookie(first)
	_, err := l.Search(goldap.NewSearchRequest(people, goldap.ScopeSingleLevel, 0, 0, 0, false, "(objectClass=*)", nil, []goldap.Control{paging}))
	if !goldap.IsErrorWithCode(err, goldap.LDAPResultUnwillingToPerform) {
		t.Fatalf("reused cookie: %v", err)
	}
	// Sorted and paged: every entry once, in order.
	sortCtl := goldap.NewControlServerSideSortingWithSortKeys([]*goldap.SortKey{{AttributeType: "sn", Reverse: true}})
	res, err := l.SearchWithPaging(goldap.NewSearchRequest(people, goldap.ScopeSingleLevel, 0, 0, 0, false, "(objectClass=*)", []string{"sn"}, []goldap.Control{sortCtl}), 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Entries) != 1234 || res.Entries[0].GetAttributeValue("sn") != "Family1233" || res.Entries[1233].GetAttributeValue("sn") != "Family0000" {
		t.Fatalf("sorted paging: %d entries, first %v", len(res.Entries), res.Entries[0].GetAttributeValue("sn"))
	}
}

func TestSizeAndTimeLimits(t *testing.T) {
	ts := newTestServer(t, func(c *Config) { c.SizeLimit = 50 }, nil)
	ts.addUsers(t, "acme", 120, nil)
	l := ts.bound(t)
	res, err := l.Search(goldap.NewSearchRequest(people, goldap.ScopeSingleLevel, 0, 10, 0, false, "(objectClass=*)", nil, nil))
	if !goldap.IsErrorWithCode(err, goldap.LDAPResultSizeLimitExceeded) || len(res.Entries) != 10 {
		t.Fatalf("client sizeLimit 10: %d entries, %v", len(res.Entries), err)
	}
	res, err = l.Search(goldap.NewSearchRequest(people, goldap.ScopeSingleLevel, 0, 0, 0, false, "(objectClass=*)", nil, nil))
	if !goldap.IsErrorWithCode(err, goldap.LDAPResultSizeLimitExceeded) || len(res.Entries) != 50 {
		t.Fatalf("server size_limit 50: %d entries, %v", len(res.Entries), err)
	}
	// Paging is the way past the server limit.
	res, err = l.SearchWithPaging(goldap.NewSearchRequest(people, goldap.ScopeSingleLevel, 0, 0, 0, false, "(objectClass=*)", nil, nil), 40)
	if err != nil || len(res.Entries) != 120 {
		t.Fatalf("paged past the server limit: %d, %v", len(res.Entries), err)
	}
	if res, err := l.Search(goldap.NewSearchRequest(people, goldap.ScopeSingleLevel, 0, 10, 1, false, "(uid=user000*)", nil, nil)); err != nil || len(res.Entries) != 10 {
		t.Fatalf("sizeLimit equal to the count: %d, %v", len(res.Entries), err)
	}
}

func TestTLS(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	l, err := goldap.DialURL("ldaps://"+ts.tlsA, goldap.DialWithTLSConfig(&tls.Config{InsecureSkipVerify: true}))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Bind(ts.bindDN, ts.pw); err != nil {
		t.Fatal(err)
	}
	l2 := ts.dial(t)
	if err := l2.StartTLS(&tls.Config{InsecureSkipVerify: true}); err != nil {
		t.Fatal(err)
	}
	if err := l2.Bind(ts.bindDN, ts.pw); err != nil {
		t.Fatal(err)
	}
	if st, ok := l2.TLSConnectionState(); !ok || st.Version < tls.VersionTLS12 {
		t.Fatalf("StartTLS state %v %v", st, ok)
	}
	if err := l2.StartTLS(&tls.Config{InsecureSkipVerify: true}); err == nil {
		t.Fatal("second StartTLS succeeded")
	}
	// TLS 1.1 is refused.
	c, err := tls.Dial("tcp", ts.tlsA, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11})
	if err == nil {
		c.Close()
		t.Fatal("TLS 1.1 handshake succeeded")
	}
}

func TestWritesAreRefused(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	ts.addUsers(t, "acme", 1, nil)
	l := ts.bound(t)
	dn := "uid=user0000@acme.test," + people
	errs := map[string]error{
		"add":    l.Add(goldap.NewAddRequest("uid=x,"+people, nil)),
		"modify": l.Modify(goldap.NewModifyRequest(dn, nil)),
		"delete": l.Del(goldap.NewDelRequest(dn, nil)),
		"modDN":  l.ModifyDN(goldap.NewModifyDNRequest(dn, "uid=y", true, "")),
		"passwd": func() error { _, err := l.PasswordModify(goldap.NewPasswordModifyRequest(dn, "", "x")); return err }(),
	}
	for op, err := range errs {
		want := uint16(goldap.LDAPResultUnwillingToPerform)
		if op == "passwd" {
			want = goldap.LDAPResultProtocolError
		}
		if !goldap.IsErrorWithCode(err, want) {
			t.Errorf("%s: %v; want result %d", op, err, want)
		}
	}
	ok, err := l.Compare(dn, "sn", "family0000")
	if err != nil || !ok {
		t.Fatalf("compare: %v %v", ok, err)
	}
	ok, err = l.Compare(dn, "sn", "nobody")
	if err != nil || ok {
		t.Fatalf("compare false: %v %v", ok, err)
	}
	// The connection still works after all of that.
	if got := search(t, l, people, goldap.ScopeSingleLevel, "(objectClass=*)"); len(got) != 1 {
		t.Fatalf("search after refused writes: %d", len(got))
	}
}

func TestTenantOptions(t *testing.T) {
	ts := newTestServer(t, nil, map[string]mapping.Config{"acme": {ADProfile: true, ShowDisabled: true, ScopeFilter: "(!(departmentNumber=Temp))",
		Attributes: map[string]string{"ou": mapping.SchemaEnterprise + ":division", "title": ""}}})
	ts.addUsers(t, "acme", 4, func(i int, u *store.User) {
		u.ExternalID = "7fce0092-d52e-4f76-b727-3955bd72c939"[:35] + fmt.Sprint(i)
		u.Title, u.Enterprise.Division = "Boss", "Div"
		switch i {
		case 1:
			u.Active = false
		case 2:
			u.Enterprise.Department = "Temp"
		}
	})
	l := ts.bound(t)
	cucm := "(&(objectclass=user)(!(objectclass=Computer))(!(UserAccountControl:1.2.840.113556.1.4.803:=2)))"
	if got := search(t, l, people, goldap.ScopeWholeSubtree, cucm, "sAMAccountName"); len(got) != 2 || got[0].GetAttributeValue("sAMAccountName") != "user0000" {
		t.Fatalf("CUCM AD filter: %v", dns(got))
	}
	all := search(t, l, people, goldap.ScopeWholeSubtree, "(objectClass=user)", "*")
	if len(all) != 3 { // user 2 is outside the scope filter; user 1 is shown disabled
		t.Fatalf("scope filter/show disabled: %v", dns(all))
	}
	for _, e := range all {
		if e.GetAttributeValue("ou") != "Div" || e.GetAttributeValue("title") != "" || len(e.GetRawAttributeValue("objectGUID")) != 16 {
			t.Fatalf("mapping overrides/objectGUID: %v", e.Attributes)
		}
		if e.GetAttributeValue("uid") == "user0001@acme.test" && (e.GetAttributeValue("enabled") != "FALSE" || e.GetAttributeValue("userAccountControl") != "514") {
			t.Fatalf("disabled user attributes: %v", e.Attributes)
		}
	}
}

// raw sends LDAP frames on a fresh plain connection and reads answers.
type raw struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func (ts *testServer) raw(t *testing.T) *raw {
	c, err := net.Dial("tcp", ts.plain)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &raw{t: t, c: c, r: bufio.NewReader(c)}
}

func (r *raw) send(frames ...[]byte) {
	for _, f := range frames {
		if _, err := r.c.Write(f); err != nil {
			r.t.Fatal(err)
		}
	}
}

// read returns the next message, or nil when the server closed.
func (r *raw) read() *envelope {
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := readFrame(r.r, 1<<24)
	if err != nil {
		return nil
	}
	e, err := parseEnvelope(f)
	if err != nil {
		r.t.Fatalf("bad frame from server: %x", f)
	}
	return &e
}

func resultCode(e *envelope) int64 {
	kids, _ := children(e.op.body)
	return decodeInt(kids[0].body)
}

func msg(id int64, op []byte) []byte {
	return appendTLV(nil, 0x30, append(encodeInt(0x02, id), op...))
}

func bindReq(version int64, name string, auth []byte) []byte {
	body := append(encodeInt(0x02, version), appendTLV(nil, 0x04, []byte(name))...)
	return appendTLV(nil, tagBindRequest, append(body, auth...))
}

func rootSearchReq() []byte {
	body := appendTLV(nil, 0x04, nil)
	body = append(body, encodeInt(0x0a, 0)...) // base
	body = append(body, encodeInt(0x0a, 0)...) // never deref
	body = append(body, encodeInt(0x02, 0)...)
	body = append(body, encodeInt(0x02, 0)...)
	body = append(body, appendTLV(nil, 0x01, []byte{0})...)
	body = append(body, appendTLV(nil, 0x87, []byte("objectClass"))...)
	body = append(body, appendTLV(nil, 0x30, nil)...)
	return appendTLV(nil, tagSearchRequest, body)
}

// expectRootDSE checks that the connection still answers a search.
func (r *raw) expectRootDSE(id int64) {
	r.send(msg(id, rootSearchReq()))
	for {
		e := r.read()
		if e == nil {
			r.t.Fatalf("connection closed; want the root DSE (message %d)", id)
		}
		if e.id == id && e.op.tag == tagSearchDone {
			if resultCode(e) != 0 {
				r.t.Fatalf("root DSE search result %d", resultCode(e))
			}
			return
		}
	}
}

// The defects gldap v0.1.14 has on the wire, each fixed in the guard.
func TestGuardRegressions(t *testing.T) {
	ts := newTestServer(t, func(c *Config) { c.MaxMessageBytes = 4096 }, nil)
	ts.addUsers(t, "acme", 30, nil)

	t.Run("abandon keeps the session", func(t *testing.T) {
		r := ts.raw(t)
		r.send([]byte{0x30, 0x06, 0x02, 0x01, 0x06, 0x50, 0x01, 0x05})
		r.expectRootDSE(7)
	})
	t.Run("abandon stops a running search", func(t *testing.T) {
		l := ts.bound(t)
		ctx, cancel := context.WithCancel(context.Background())
		resp := l.SearchAsync(ctx, goldap.NewSearchRequest(people, goldap.ScopeSingleLevel, 0, 0, 0, false, "(objectClass=*)", nil, nil), 1)
		resp.Next()
		cancel() // go-ldap sends an AbandonRequest
		for resp.Next() {
		}
		if got := search(t, l, people, goldap.ScopeSingleLevel, "(objectClass=*)"); len(got) != 30 {
			t.Fatalf("search after abandon: %d", len(got))
		}
	})
	t.Run("compare is answered", func(t *testing.T) {
		r := ts.raw(t)
		ava := appendTLV(nil, 0x30, append(appendTLV(nil, 0x04, []byte("cn")), appendTLV(nil, 0x04, []byte("x"))...))
		r.send(msg(2, appendTLV(nil, tagCompareRequest, append(appendTLV(nil, 0x04, []byte(people)), ava...))))
		if e := r.read(); e == nil || e.op.tag != tagCompareResponse || resultCode(e) != resInsufficientAccess {
			t.Fatalf("compare before bind: %+v", e)
		}
		r.expectRootDSE(3)
	})
	t.Run("modifyDN is refused, not dropped", func(t *testing.T) {
		r := ts.raw(t)
		body := append(appendTLV(nil, 0x04, []byte("uid=a,"+people)), appendTLV(nil, 0x04, []byte("uid=b"))...)
		body = append(body, appendTLV(nil, 0x01, []byte{0xff})...)
		r.send(msg(2, appendTLV(nil, tagModDNRequest, body)))
		if e := r.read(); e == nil || e.op.tag != tagModDNResponse || resultCode(e) != resUnwillingToPerform {
			t.Fatalf("modDN: %+v", e)
		}
		r.expectRootDSE(3)
	})
	t.Run("SASL bind gets authMethodNotSupported", func(t *testing.T) {
		r := ts.raw(t)
		r.send(msg(1, bindReq(3, "", appendTLV(nil, 0xa3, appendTLV(nil, 0x04, []byte("EXTERNAL"))))))
		if e := r.read(); e == nil || e.op.tag != tagBindResponse || resultCode(e) != resAuthMethodNotSupported {
			t.Fatalf("SASL bind: %+v", e)
		}
		r.expectRootDSE(2)
	})
	t.Run("LDAPv2 bind is refused cleanly", func(t *testing.T) {
		r := ts.raw(t)
		r.send(msg(1, bindReq(2, "", appendTLV(nil, 0x80, nil))))
		if e := r.read(); e == nil || resultCode(e) != resProtocolError {
			t.Fatalf("v2 bind: %+v", e)
		}
		r.expectRootDSE(2)
	})
	t.Run("unknown extended operation", func(t *testing.T) {
		r := ts.raw(t)
		r.send(msg(1, appendTLV(nil, tagExtendedRequest, appendTLV(nil, 0x80, []byte("1.2.3.4")))))
		if e := r.read(); e == nil || e.op.tag != tagExtendedResp || resultCode(e) != resProtocolError {
			t.Fatalf("unknown extended op: %+v", e)
		}
		r.expectRootDSE(2)
	})
	t.Run("oversized message ends only that session", func(t *testing.T) {
		r := ts.raw(t)
		big := msg(1, appendTLV(nil, tagSearchRequest, make([]byte, 8192)))
		r.send(big)
		e := r.read()
		if e == nil || e.id != 0 || e.op.tag != tagExtendedResp {
			t.Fatalf("want a notice of disconnection, got %+v", e)
		}
		if r.read() != nil {
			t.Fatal("connection still open after an oversized message")
		}
		ts.raw(t).expectRootDSE(1)
	})
	t.Run("deep BER nesting is refused", func(t *testing.T) {
		r := ts.raw(t)
		inner := []byte{0x04, 0x00}
		for i := 0; i < 200; i++ {
			inner = appendTLV(nil, 0x30, inner)
		}
		r.send(msg(1, appendTLV(nil, tagSearchRequest, inner)))
		if e := r.read(); e == nil || e.id != 0 {
			t.Fatalf("want a notice of disconnection, got %+v", e)
		}
		ts.raw(t).expectRootDSE(1)
	})
	t.Run("indefinite length is refused", func(t *testing.T) {
		r := ts.raw(t)
		r.send([]byte{0x30, 0x80, 0x30, 0x80, 0x30, 0x80, 0, 0, 0, 0, 0, 0})
		if e := r.read(); e == nil || e.id != 0 {
			t.Fatalf("want a notice of disconnection, got %+v", e)
		}
		ts.raw(t).expectRootDSE(1)
	})
	t.Run("malformed control does not take the server down", func(t *testing.T) {
		r := ts.raw(t)
		search := rootSearchReq()
		ctrl := appendTLV(nil, 0xa0, appendTLV(nil, 0x30, appendTLV(nil, 0x04, []byte(oidPaging))))
		r.send(appendTLV(nil, 0x30, append(append(encodeInt(0x02, 1), search...), ctrl...)))
		r.read() // whatever gldap makes of it, this session may end
		ts.raw(t).expectRootDSE(1)
	})
	t.Run("a panicking handler answers other and the process lives", func(t *testing.T) {
		l := ts.bound(t)
		dir := ts.srv.dir
		ts.srv.dir = nil // the search handler will dereference nil
		_, err := l.Search(goldap.NewSearchRequest(people, goldap.ScopeSingleLevel, 0, 0, 0, false, "(objectClass=*)", nil, nil))
		ts.srv.dir = dir
		if !goldap.IsErrorWithCode(err, goldap.LDAPResultOther) {
			t.Fatalf("search with a panicking handler: %v; want result 80", err)
		}
		if got := search(t, l, people, goldap.ScopeSingleLevel, "(objectClass=*)"); len(got) != 30 {
			t.Fatalf("same connection afterwards: %d", len(got))
		}
	})
}

func TestIdleTimeoutAndConnectionCap(t *testing.T) {
	ts := newTestServer(t, func(c *Config) { c.IdleTimeout = 300 * time.Millisecond; c.MaxConnections = 3 }, nil)
	r := ts.raw(t)
	time.Sleep(700 * time.Millisecond)
	if r.read() != nil {
		t.Fatal("idle connection was not closed")
	}
	time.Sleep(50 * time.Millisecond)
	for i := 0; i < 3; i++ { // each stays open until the test ends
		ts.raw(t).expectRootDSE(1)
	}
	extra := ts.raw(t)
	if e := extra.read(); e == nil || e.id != 0 || resultCode(e) != resBusy {
		t.Fatalf("connection over the cap: %+v; want a busy notice", e)
	}
}

func TestShutdownWithIdleClients(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	for i := 0; i < 5; i++ {
		ts.raw(t).expectRootDSE(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	began := time.Now()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with idle clients: %v after %s", err, time.Since(began))
	}
}

var _ = strings.Contains

func TestTimeLimit(t *testing.T) {
	ts := newTestServer(t, func(c *Config) { c.TimeLimit = time.Nanosecond }, nil)
	ts.addUsers(t, "acme", 50, nil)
	l := ts.bound(t)
	_, err := l.Search(goldap.NewSearchRequest(people, goldap.ScopeSingleLevel, 0, 0, 0, false, "(objectClass=*)", nil, nil))
	if !goldap.IsErrorWithCode(err, goldap.LDAPResultTimeLimitExceeded) {
		t.Fatalf("search past the time limit: %v; want timeLimitExceeded", err)
	}
	// The connection stays usable.
	if _, err := l.Search(goldap.NewSearchRequest("", goldap.ScopeBaseObject, 0, 0, 0, false, "(objectClass=*)", nil, nil)); err != nil && !goldap.IsErrorWithCode(err, goldap.LDAPResultTimeLimitExceeded) {
		t.Fatalf("after the time limit: %v", err)
	}
}

// TestManagersAfterLoad checks manager DNs built while a view loads, when
// managers may be stored after or before their reports.
func TestManagersAfterLoad(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	us := ts.addUsers(t, "acme", 40, nil)
	ctx := context.Background()
	for i := range us {
		mgr := us[(i+1)%len(us)] // some managers created before, some after
		if _, err := ts.st.UpdateUser(ctx, "acme", us[i].ID, 0, func(u *store.User) error { u.Enterprise.Manager = mgr.ID; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	l := ts.bound(t) // the first search loads the view
	for i, u := range us {
		e := search(t, l, people, goldap.ScopeSingleLevel, "(entryUUID="+u.ID+")", "manager")
		want := "uid=" + us[(i+1)%len(us)].UserName + "," + people
		if len(e) != 1 || e[0].GetAttributeValue("manager") != want {
			t.Fatalf("manager of %s = %v; want %s", u.UserName, e, want)
		}
	}
}

// TestNestedGroupRename checks that renaming or deleting a group that is
// a member of another group updates the parent's member DNs at once.
func TestNestedGroupRename(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	us := ts.addUsers(t, "acme", 2, nil)
	ctx := context.Background()
	sales, err := ts.st.CreateGroup(ctx, "acme", store.Group{DisplayName: "Sales", Members: []store.Member{{ID: us[0].ID}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.st.CreateGroup(ctx, "acme", store.Group{DisplayName: "All", Members: []store.Member{{ID: sales.ID}, {ID: us[1].ID}}}); err != nil {
		t.Fatal(err)
	}
	l := ts.bound(t)
	groups := "ou=groups,o=acme,dc=scimldap"
	members := func() []string {
		e := search(t, l, groups, goldap.ScopeSingleLevel, "(cn=All)", "member")
		if len(e) != 1 {
			t.Fatalf("group All: %v", e)
		}
		return e[0].GetAttributeValues("member")
	}
	if m := members(); !contains(m, "cn=Sales,"+groups) {
		t.Fatalf("members of All: %v", m)
	}
	if _, err := ts.st.UpdateGroup(ctx, "acme", sales.ID, 0, func(g *store.Group) error { g.DisplayName = "Field Sales"; return nil }); err != nil {
		t.Fatal(err)
	}
	if m := members(); !contains(m, "cn=Field Sales,"+groups) || contains(m, "cn=Sales,"+groups) {
		t.Fatalf("members of All after renaming Sales: %v", m)
	}
	if e := search(t, l, people, goldap.ScopeSingleLevel, "(uid="+us[0].UserName+")", "memberOf"); len(e) != 1 || e[0].GetAttributeValue("memberOf") != "cn=Field Sales,"+groups {
		t.Fatalf("memberOf after the rename: %v", e)
	}
	if err := ts.st.DeleteGroup(ctx, "acme", sales.ID); err != nil {
		t.Fatal(err)
	}
	if m := members(); len(m) != 1 || contains(m, "cn=Field Sales,"+groups) {
		t.Fatalf("members of All after deleting Sales: %v", m)
	}
}
