package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
)

// requireTool returns the path of an external tool, skipping the test when
// it is missing, unless SCIMLDAP_REQUIRE_TOOLS is set (as CI does), in
// which case a missing tool fails the test.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("SCIMLDAP_REQUIRE_TOOLS") != "" {
			t.Fatalf("%s is required (SCIMLDAP_REQUIRE_TOOLS is set) but not installed", name)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

// testApp starts the whole appliance on loopback ports in a temp dir.
func testApp(t testing.TB) (*app, *bytes.Buffer) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.LogLevel = "warn"
	cfg.SCIM.Addr = "127.0.0.1:0"
	cfg.LDAP.Addr = "127.0.0.1:0"
	cfg.LDAP.LDAPSAddr = "127.0.0.1:0"
	cfg.TLS.ACMEHTTPAddr = ""
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	a, err := start(context.Background(), &cfg, &out, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.shutdown)
	return a, &out
}

func (a *app) newTenant(t testing.TB, name string) tenantCreds {
	t.Helper()
	c, err := (&admin{st: a.st, cfg: a.cfg}).tenantAdd(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var insecure = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, Timeout: 10 * time.Second}

func scimDo(t *testing.T, a *app, c tenantCreds, method, path, body string) (int, map[string]any) {
	t.Helper()
	url := "https://" + a.scimAddr.String() + "/scim/v2/" + c.Tenant + path
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Content-Type", "application/scim+json")
	resp, err := insecure.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

func ldapsConn(t testing.TB, a *app, c tenantCreds) *goldap.Conn {
	t.Helper()
	l, err := goldap.DialURL("ldaps://"+a.ldapsAddr.String(), goldap.DialWithTLSConfig(&tls.Config{InsecureSkipVerify: true}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if err := l.Bind(c.BindDN, c.Password); err != nil {
		t.Fatal(err)
	}
	return l
}

// TestProvisionedUserAppearsOverLDAPS is the appliance's purpose in one
// test: a user created over SCIM is found over LDAPS, and a SCIM change is
// visible to the very next search.
func TestProvisionedUserAppearsOverLDAPS(t *testing.T) {
	a, out := testApp(t)
	if !strings.Contains(out.String(), "Secret Token:") || !strings.Contains(out.String(), "uid=reader,ou=admin,o=default,dc=scimldap") {
		t.Fatalf("first start did not print the default tenant's credentials:\n%s", out)
	}
	c := a.newTenant(t, "acme")
	status, u := scimDo(t, a, c, "POST", "/Users", `{"userName":"joy@contoso.com","displayName":"Joy Young","name":{"familyName":"Young","givenName":"Joy"},
		"phoneNumbers":[{"type":"work","value":"+1 555 0100"}],"externalId":"ImagicleCustomFields$$$Custom1=Rome"}`)
	if status != 201 {
		t.Fatalf("create: %d %v", status, u)
	}
	l := ldapsConn(t, a, c)
	search := func(filter string) []*goldap.Entry {
		res, err := l.Search(goldap.NewSearchRequest("ou=people,"+c.BaseDN, goldap.ScopeWholeSubtree, 0, 0, 0, false, filter, []string{"*", "+"}, nil))
		if err != nil {
			t.Fatalf("search %s: %v", filter, err)
		}
		return res.Entries
	}
	es := search("(telephoneNumber=+15550100)")
	if len(es) != 1 || es[0].GetAttributeValue("sn") != "Young" || es[0].GetAttributeValue("custom1") != "Rome" ||
		es[0].GetAttributeValue("entryUUID") != u["id"] {
		t.Fatalf("entries = %v; want Joy with sn, custom1 and entryUUID", es)
	}
	scimDo(t, a, c, "PATCH", "/Users/"+u["id"].(string), `{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"Replace","path":"userName","value":"joy.young@contoso.com"}]}`)
	if es := search("(uid=joy.young@contoso.com)"); len(es) != 1 || es[0].DN != "uid=joy.young@contoso.com,ou=people,o=acme,dc=scimldap" {
		t.Fatalf("after rename: %v", es)
	}
	scimDo(t, a, c, "PATCH", "/Users/"+u["id"].(string), `{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"Replace","path":"active","value":"False"}]}`)
	if es := search("(uid=*)"); len(es) != 0 {
		t.Fatalf("disabled user still listed: %v", es)
	}
	// The default tenant's account cannot read acme.
	d, err := goldap.DialURL("ldaps://"+a.ldapsAddr.String(), goldap.DialWithTLSConfig(&tls.Config{InsecureSkipVerify: true}))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	other := a.newTenant(t, "other")
	if err := d.Bind(other.BindDN, other.Password); err != nil {
		t.Fatal(err)
	}
	_, err = d.Search(goldap.NewSearchRequest(c.BaseDN, goldap.ScopeWholeSubtree, 0, 0, 0, false, "(objectClass=*)", nil, nil))
	if !goldap.IsErrorWithCode(err, goldap.LDAPResultNoSuchObject) {
		t.Fatalf("cross-tenant search: err = %v; want noSuchObject", err)
	}
}

// TestMicrosoftSCIMCollection runs Microsoft's SCIM reference test
// collection, unchanged, with newman against a fresh tenant.
func TestMicrosoftSCIMCollection(t *testing.T) {
	newman := requireTool(t, "newman")
	collection := os.Getenv("SCIMLDAP_CONFORMANCE")
	if collection == "" {
		collection = filepath.Join("..", "shared", "conformance", "PostmanCollection.json")
	}
	if _, err := os.Stat(collection); err != nil {
		if os.Getenv("SCIMLDAP_REQUIRE_TOOLS") != "" {
			t.Fatalf("conformance collection %s: %v", collection, err)
		}
		t.Skipf("conformance collection not found at %s (set SCIMLDAP_CONFORMANCE)", collection)
	}
	a, _ := testApp(t)
	c := a.newTenant(t, "conformance")
	_, port, _ := net.SplitHostPort(a.scimAddr.String())
	cmd := exec.Command(newman, "run", collection, "--insecure", "--color", "off",
		"--env-var", "Protocol=https", "--env-var", "Server=127.0.0.1", "--env-var", "Port=:"+port,
		"--env-var", "Api=scim/v2/"+c.Tenant, "--env-var", "token="+c.Token,
		"--folder", "Endpoint tests", "--folder", "User tests", "--folder", "Group tests",
		"--folder", "ComplexAttribute tests", "--folder", "User tests with garbage",
		"--folder", "Group tests with garbage", "--folder", "Teardown garbage")
	outb, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("newman failed: %v\n%s", err, outb)
	}
	t.Logf("newman summary:\n%s", tail(string(outb), 30))
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestCLIWhileServing drives the admin commands through run() while the
// server holds the database: they go over the admin socket.
func TestCLIWhileServing(t *testing.T) {
	a, _ := testApp(t)
	ctx := context.Background()
	cli := func(args ...string) string {
		var out bytes.Buffer
		if err := run(ctx, append(args, "-data", a.cfg.DataDir), &out, io.Discard); err != nil {
			t.Fatalf("scimldap %v: %v", args, err)
		}
		return out.String()
	}
	var c tenantCreds
	raw := cli("tenant", "add", "ACME-INC", "-json")
	var keys map[string]any
	json.Unmarshal([]byte(raw), &keys)
	for _, k := range []string{"tenant", "scim_url", "token", "base_dn", "bind_dn", "password"} {
		if _, ok := keys[k]; !ok || len(keys) != 6 {
			t.Fatalf("tenant add -json = %s; want exactly tenant, scim_url, token, base_dn, bind_dn, password", raw)
		}
	}
	json.Unmarshal([]byte(raw), &c)
	if c.Tenant != "acme-inc" || !strings.HasSuffix(c.SCIMURL, "/scim/v2/acme-inc") || c.BindDN != "uid=reader,ou=admin,o=acme-inc,dc=scimldap" {
		t.Fatalf("tenant add: %+v", c)
	}
	if status, _ := scimDo(t, a, c, "GET", "/Users", ""); status != 200 {
		t.Fatalf("new token: status %d", status)
	}
	var rot map[string]string
	json.Unmarshal([]byte(cli("token", "rotate", "acme-inc", "-json")), &rot)
	if status, _ := scimDo(t, a, c, "GET", "/Users", ""); status != 401 {
		t.Fatalf("old token after rotate: status %d; want 401", status)
	}
	c.Token = rot["token"]
	if status, _ := scimDo(t, a, c, "GET", "/Users", ""); status != 200 {
		t.Fatalf("rotated token: status %d; want 200", status)
	}
	var acct accountCreds
	json.Unmarshal([]byte(cli("account", "add", "acme-inc", "suite", "-json")), &acct)
	if acct.BindDN != "uid=suite,ou=admin,o=acme-inc,dc=scimldap" || len(acct.Password) < 43 {
		t.Fatalf("account add: %+v", acct)
	}
	l := ldapsConn(t, a, tenantCreds{BindDN: acct.BindDN, Password: acct.Password})
	l.Close()
	if !strings.Contains(cli("tenant", "list"), "acme-inc") {
		t.Fatal("tenant list does not show acme-inc")
	}
	backup := filepath.Join(t.TempDir(), "b.db")
	cli("backup", backup)
	if fi, err := os.Stat(backup); err != nil || fi.Size() == 0 {
		t.Fatalf("backup: %v", err)
	}
	cli("account", "remove", "acme-inc", "suite")
	cli("tenant", "remove", "acme-inc")
	if status, _ := scimDo(t, a, c, "GET", "/Users", ""); status != 401 {
		t.Fatalf("removed tenant: status %d; want 401", status)
	}
	var out bytes.Buffer
	if err := run(ctx, []string{"tenant", "add", "bad name!", "-data", a.cfg.DataDir}, &out, io.Discard); err == nil || !strings.Contains(err.Error(), "letters, digits") {
		t.Fatalf("bad tenant name: err = %v", err)
	}
}

// TestCLIWithoutServer opens the store directly when nothing serves.
func TestCLIWithoutServer(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	if err := run(context.Background(), []string{"tenant", "add", "solo", "-data", dir, "-json"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"tenant":"solo"`) {
		t.Fatalf("output %s", out.String())
	}
}

// TestShutdownWithIdleClients: SIGTERM-style cancellation returns within
// the deadline even with LDAP clients connected and idle.
func TestShutdownWithIdleClients(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.LogLevel = "error"
	cfg.SCIM.Addr, cfg.LDAP.Addr, cfg.LDAP.LDAPSAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.TLS.ACMEHTTPAddr = ""
	ctx, cancel := context.WithCancel(context.Background())
	a, err := start(ctx, &cfg, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		c, err := net.Dial("tcp", a.ldapAddr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	done := make(chan error, 1)
	go func() { done <- a.wait(ctx) }()
	time.Sleep(100 * time.Millisecond)
	began := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown took longer than 10s with idle clients")
	}
	if d := time.Since(began); d > 9*time.Second {
		t.Fatalf("shutdown took %s", d)
	}
	// The store was closed: it opens again at once.
	st, err := openStore(cfg.DataDir)
	if err != nil {
		t.Fatalf("store not released after shutdown: %v", err)
	}
	st.Close()
}

var _ = fmt.Sprint
