package ldap

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/scimldap/scimldap/store"
)

var cookieRE = regexp.MustCompile(`cookie=\S+`)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// requireTool returns the path of an external tool, skipping the test when
// it is missing, unless SCIMLDAP_REQUIRE_TOOLS is set (CI), which makes a
// missing tool a failure.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	for _, p := range []string{name, "/usr/sbin/" + name} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Getenv("SCIMLDAP_REQUIRE_TOOLS") != "" {
		t.Fatalf("%s is required (SCIMLDAP_REQUIRE_TOOLS is set) but not installed", name)
	}
	t.Skipf("%s not installed", name)
	return ""
}

// slapdAttrs are the attributes OpenLDAP's core, cosine and inetorgperson
// schemas allow on our entries; the rest (custom fields, AD names) stay
// out of the comparison.
var slapdAttrs = map[string]bool{"objectclass": true, "uid": true, "cn": true, "sn": true, "givenname": true, "displayname": true, "mail": true,
	"telephonenumber": true, "mobile": true, "facsimiletelephonenumber": true, "preferredlanguage": true, "departmentnumber": true, "street": true,
	"l": true, "st": true, "postalcode": true, "title": true, "employeenumber": true, "o": true, "ou": true, "description": true, "manager": true,
	"member": true, "department": true, "enabled": true, "memberof": true,
	"custom1": true, "custom2": true, "custom3": true, "custom4": true, "custom5": true,
	"custom6": true, "custom7": true, "custom8": true, "custom9": true, "custom10": true}

// extraSchema defines for slapd the attributes scimldap serves by default
// that OpenLDAP's standard schemas lack, so that both servers hold the
// same entries. slapadd runs without schema checking, as no standard
// object class allows them.
func extraSchema() string {
	var b strings.Builder
	def := func(i int, name, rule string) {
		fmt.Fprintf(&b, "attributetype ( 1.3.6.1.4.1.99999.9.%d NAME '%s' %s )\n", i, name, rule)
	}
	str := "EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15"
	def(1, "department", str)
	def(2, "enabled", "EQUALITY booleanMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.7 SINGLE-VALUE")
	def(3, "memberOf", "EQUALITY distinguishedNameMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.12")
	for i := 1; i <= 10; i++ {
		def(10+i, fmt.Sprintf("custom%d", i), str)
	}
	return b.String()
}

type slapd struct {
	addr   string
	rootDN string
	pw     string
	cmd    *exec.Cmd
}

// startSlapd runs a throwaway slapd (mdb backend, equality and substring
// indexes on uid, cn, sn, mail, telephoneNumber) on a loopback port from a
// temp dir, loaded with ldif. It never touches the system instance.
func startSlapd(t testing.TB, ldif []byte) *slapd {
	t.Helper()
	bin := requireTool(t, "slapd")
	slapadd := requireTool(t, "slapadd")
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "db"), 0o700)
	extra := filepath.Join(dir, "scimldap.schema")
	os.WriteFile(extra, []byte(extraSchema()), 0o600)
	conf := fmt.Sprintf(`include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include %[1]s/scimldap.schema
pidfile %[1]s/slapd.pid
argsfile %[1]s/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
sizelimit unlimited
timelimit unlimited
database mdb
suffix "dc=scimldap"
rootdn "cn=admin,dc=scimldap"
rootpw secret
directory %[1]s/db
maxsize 8589934592
index objectClass eq
index uid,cn,sn,mail,telephoneNumber eq,sub
limits * size=unlimited time=unlimited
`, dir)
	confPath := filepath.Join(dir, "slapd.conf")
	os.WriteFile(confPath, []byte(conf), 0o600)
	ldifPath := filepath.Join(dir, "data.ldif")
	os.WriteFile(ldifPath, ldif, 0o600)
	if out, err := exec.Command(slapadd, "-q", "-s", "-f", confPath, "-l", ldifPath).CombinedOutput(); err != nil {
		t.Fatalf("slapadd: %v\n%s", err, out)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "-f", confPath, "-h", "ldap://"+addr+"/", "-d", "0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	s := &slapd{addr: addr, rootDN: "cn=admin,dc=scimldap", pw: "secret", cmd: cmd}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if l, err := goldap.DialURL("ldap://" + addr); err == nil {
			l.Close()
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("slapd did not start: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *slapd) bound(t testing.TB) *goldap.Conn {
	t.Helper()
	l, err := goldap.DialURL("ldap://" + s.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if err := l.Bind(s.rootDN, s.pw); err != nil {
		t.Fatal(err)
	}
	return l
}

// exportLDIF dumps the tenant's tree from scimldap as LDIF that slapd
// accepts: the suffix, and each entry with the attributes slapd knows.
func exportLDIF(t testing.TB, l *goldap.Conn) []byte {
	t.Helper()
	res, err := l.SearchWithPaging(goldap.NewSearchRequest("o=acme,dc=scimldap", goldap.ScopeWholeSubtree, 0, 0, 0, false, "(objectClass=*)", []string{"*"}, nil), 1000)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	b.WriteString("dn: dc=scimldap\nobjectClass: top\nobjectClass: dcObject\nobjectClass: organization\ndc: scimldap\no: scimldap\n\n")
	for _, e := range res.Entries {
		fmt.Fprintf(&b, "dn: %s\n", e.DN)
		for _, a := range e.Attributes {
			if !slapdAttrs[strings.ToLower(a.Name)] {
				continue
			}
			for _, v := range a.Values {
				if strings.EqualFold(a.Name, "objectClass") && strings.EqualFold(v, "user") {
					continue
				}
				if utf8.ValidString(v) && !strings.ContainsAny(v, "\n\r") && !strings.HasPrefix(v, " ") && !strings.HasPrefix(v, ":") && !strings.HasPrefix(v, "<") {
					fmt.Fprintf(&b, "%s: %s\n", a.Name, v)
				} else {
					fmt.Fprintf(&b, "%s:: %s\n", a.Name, base64.StdEncoding.EncodeToString([]byte(v)))
				}
			}
		}
		b.WriteString("\n")
	}
	return b.Bytes()
}

// synthUsers adds users shaped like Entra's: names, work and mobile phones
// in mixed formats, departments, cities, a few without optional values.
func synthUsers(t testing.TB, st *store.Store, tenant string, n int) {
	t.Helper()
	given := []string{"Mario", "Anna", "Rosa", "Luca", "Giulia", "Ross", "Marco", "Sara", "Paolo", "Elena", "John", "Ana María"}
	family := []string{"Rossi", "Bianchi", "Russo", "Ferrari", "Esposito", "Romano", "Colombo", "Ricci", "Marino", "Greco", "Brosnan", "O'Neil"}
	depts := []string{"Sales", "R&D", "Support", "Temp", "Marketing"}
	cities := []string{"Rome", "Milan", "NYC", "Turin"}
	us := make([]store.User, n)
	for i := range us {
		g, f := given[i%len(given)], family[(i/len(given))%len(family)]
		u := store.User{UserName: fmt.Sprintf("u%06d@acme.test", i), Active: true,
			DisplayName: fmt.Sprintf("%s %s %d", g, f, i), Name: store.Name{GivenName: g, FamilyName: f},
			Emails:       []store.MultiValue{{Value: fmt.Sprintf("%s.%s%d@Acme.test", strings.ToLower(strings.Fields(g)[0]), strings.ToLower(f), i), Type: "work"}},
			PhoneNumbers: []store.MultiValue{{Value: fmt.Sprintf("+39 06 %07d", i), Type: "work"}},
			Enterprise:   store.Enterprise{Department: depts[i%len(depts)], EmployeeNumber: fmt.Sprint(100000 + i)},
			Addresses:    []store.Address{{Locality: cities[i%len(cities)], Type: "work"}},
			Title:        []string{"Engineer", "Manager", "", "Director"}[i%4],
		}
		if i%3 == 0 {
			u.PhoneNumbers = append(u.PhoneNumbers, store.MultiValue{Value: fmt.Sprintf("+39-333-%07d", i), Type: "mobile"})
		}
		us[i] = u
	}
	createUsers(t, st, tenant, us)
}

// createUsers writes users through the store with 8 concurrent writers,
// as provisioning does, so that large loads take seconds, not minutes.
func createUsers(t testing.TB, st *store.Store, tenant string, us []store.User) {
	t.Helper()
	errc := make(chan error, 8)
	for w := 0; w < 8; w++ {
		go func(w int) {
			for i := w; i < len(us); i += 8 {
				if _, err := st.CreateUser(t.Context(), tenant, us[i]); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}(w)
	}
	for w := 0; w < 8; w++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

// differentialFilters have one meaning under RFC 4511 and OpenLDAP's
// schema, so both servers must select the same entries. Ordering matches
// on name attributes are left out: OpenLDAP's schema gives cn, sn and
// givenName no ORDERING rule, while scimldap serves them (Poly phones
// send them).
var differentialFilters = []string{
	"(objectClass=*)", "(objectClass=inetOrgPerson)", "(objectclass=organizationalUnit)", "(uid=u000007@acme.test)", "(UID=U000007@ACME.TEST)",
	"(cn=*ros*)", "(|(cn=*ros*)(sn=*ros*))", "(sn=rossi)", "(sn=Ro*)", "(sn=*i)", "(givenName=ana*)", "(givenName=ana maría)", "(cn=*Mar*Ros*)",
	"(mail=*@acme.test)", "(mail=MARIO*)", "(telephoneNumber=+39 06 0000042)", "(telephoneNumber=+39060000042)", "(telephoneNumber=*0000042)",
	"(|(telephoneNumber=+39060000042)(mobile=+39060000042))", "(mobile=+393330000042)", "(mobile=*)", "(!(mobile=*))", "(title=*)",
	"(&(departmentNumber=Sales)(l=NYC))", "(!(departmentNumber=Temp))", "(|(departmentNumber=Sales)(departmentNumber=Marketing))",
	"(&(department=Sales)(l=NYC))", "(!(department=Temp))", "(department=r&*)", "(enabled=TRUE)", "(!(enabled=FALSE))",
	"(&(objectClass=inetOrgPerson)(!(title=Engineer)))", "(employeeNumber=100042)", "(employeeNumber=10004*)", "(&)", "(|)",
	"(|(IMHandle=foo*)(sn=Greco))", "(&(IMHandle=foo*)(sn=Greco))", "(!(IMHandle=x))", "(|(o=foo*)(cn=foo*)(ou=foo*)(sn=foo*)(mail=foo*)(givenname=foo*)(telephoneNumber=foo*))",
	"(ou:dn:=people)", "(sn:caseExactMatch:=Rossi)", "(sn:caseExactMatch:=rossi)", "(cn:2.5.13.2:=mario rossi 0)",
	"(displayName=*o'neil*)", "(sn=O'Neil)", "(l=Rome)", "(&(l=Rome)(departmentNumber=R&D))", "(description=*)",
}

// TestDifferentialAgainstSlapd loads the same users into scimldap and a
// local slapd and checks that a corpus of filters selects the same entries
// from both.
func TestDifferentialAgainstSlapd(t *testing.T) {
	requireTool(t, "slapd")
	ts := newTestServer(t, nil, nil)
	synthUsers(t, ts.st, "acme", 300)
	ours := ts.bound(t)
	sl := startSlapd(t, exportLDIF(t, ours))
	theirs := sl.bound(t)
	for _, f := range differentialFilters {
		a := normDNs(t, ours, f)
		b := normDNs(t, theirs, f)
		if strings.Join(a, "\n") != strings.Join(b, "\n") {
			t.Errorf("filter %s: scimldap %d entries, slapd %d\nonly scimldap: %v\nonly slapd: %v", f, len(a), len(b), diff(a, b), diff(b, a))
		}
	}
	// The attributes slapd learns from extraSchema really reached it.
	for _, f := range []string{"(department=Sales)", "(enabled=TRUE)"} {
		if len(normDNs(t, theirs, f)) == 0 {
			t.Errorf("slapd has no entry for %s", f)
		}
	}
}

func normDNs(t testing.TB, l *goldap.Conn, filter string) []string {
	t.Helper()
	res, err := l.SearchWithPaging(goldap.NewSearchRequest("o=acme,dc=scimldap", goldap.ScopeWholeSubtree, 0, 0, 0, false, filter, []string{"1.1"}, nil), 1000)
	if err != nil {
		t.Fatalf("search %s: %v", filter, err)
	}
	var out []string
	for _, e := range res.Entries {
		n, _ := normDN(e.DN)
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func diff(a, b []string) []string {
	in := map[string]bool{}
	for _, x := range b {
		in[x] = true
	}
	var out []string
	for _, x := range a {
		if !in[x] && len(out) < 5 {
			out = append(out, x)
		}
	}
	return out
}

// TestLdapsearch drives the server with OpenLDAP's ldapsearch the way the
// field does: a UC suite's nightly base-DN sync over LDAPS, the same paged
// at 500, and a phone-book lookup. Output is compared with golden files.
func TestLdapsearch(t *testing.T) {
	bin := requireTool(t, "ldapsearch")
	ts := newTestServer(t, nil, nil)
	ts.addUsers(t, "acme", 12, func(i int, u *store.User) {
		if i == 5 {
			u.Name.FamilyName, u.DisplayName = "Rossi", "Mario Rossi"
			u.ExternalID = "ImagicleCustomFields$$$Custom1=Rome$$$Custom2=R&D Manager"
		}
		if i == 6 {
			u.Active = false
		}
	})
	run := func(name string, args ...string) {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"-LLL", "-o", "ldif-wrap=no", "-D", ts.bindDN, "-w", ts.pw}, args...)...)
		cmd.Env = append(os.Environ(), "LDAPTLS_REQCERT=never", "LDAPCONF=/dev/null", "LDAPRC=/dev/null")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("ldapsearch %s: %v\n%s", name, err, out)
		}
		// Cookies are random; that one is present on every page is kept.
		out = cookieRE.ReplaceAll(out, []byte("cookie=<next page>"))
		golden := filepath.Join("testdata", name+".ldif")
		if *update {
			os.WriteFile(golden, out, 0o644)
			return
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%v (run with -update to create it)", err)
		}
		if !bytes.Equal(out, want) {
			t.Errorf("ldapsearch %s output differs from %s:\n%s", name, golden, out)
		}
	}
	run("ucsuite_sync", "-H", "ldaps://"+ts.tlsA, "-b", people, "(objectClass=inetOrgPerson)",
		"uid", "displayName", "cn", "mail", "givenName", "sn", "preferredLanguage", "telephoneNumber", "departmentNumber", "mobile", "street", "facsimileTelephoneNumber", "custom1", "custom2")
	run("ucsuite_sync_paged", "-H", "ldaps://"+ts.tlsA, "-E", "pr=5/noprompt", "-b", people, "(objectClass=inetOrgPerson)", "uid")
	run("phonebook", "-H", "ldap://"+ts.plain, "-ZZ", "-z", "50", "-b", "o=acme,dc=scimldap", "(|(cn=*ross*)(sn=*ross*)(telephoneNumber=*ross*))", "cn", "telephoneNumber", "mobile")
	_ = tls.VersionTLS12
}
