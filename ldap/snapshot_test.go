package ldap

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/scimldap/scimldap/mapping"
	"github.com/scimldap/scimldap/store"
)

// lockedBuffer collects a server's log lines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// dumpTree returns every entry under acme's base with all user and
// operational attributes, one canonical string per entry.
func dumpTree(t *testing.T, ts *testServer) []string {
	t.Helper()
	l := ts.dial(t)
	if err := l.Bind(ts.bindDN, ts.pw); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range search(t, l, "o=acme,dc=scimldap", goldap.ScopeWholeSubtree, "(objectClass=*)", "*", "+") {
		var attrs []string
		for _, a := range e.Attributes {
			vals := append([]string(nil), a.Values...)
			sort.Strings(vals)
			attrs = append(attrs, strings.ToLower(a.Name)+"="+strings.Join(vals, "|"))
		}
		sort.Strings(attrs)
		out = append(out, e.DN+"\n  "+strings.Join(attrs, "\n  "))
	}
	sort.Strings(out)
	return out
}

// TestViewSnapshot checks that a restart serves exactly what a full load
// would, from the snapshot written at shutdown, and that any doubt about
// the snapshot (a write while the server was down, other options, a
// damaged file) makes the server rebuild from the store instead.
func TestViewSnapshot(t *testing.T) {
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "db")
	views := filepath.Join(dir, "views")
	st, err := store.Open(dbPath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pw := seedTenants(t, st)
	ctx := context.Background()
	var users []store.User
	for i := 0; i < 60; i++ {
		u := store.User{UserName: fmt.Sprintf("user%02d@acme.test", i), Active: i != 7, DisplayName: fmt.Sprintf("User %02d", i),
			Name:         store.Name{GivenName: "Given", FamilyName: fmt.Sprintf("Family%d", i%9)},
			Emails:       []store.MultiValue{{Value: fmt.Sprintf("user%02d@acme.test", i), Type: "work"}},
			PhoneNumbers: []store.MultiValue{{Value: fmt.Sprintf("+49 30 %06d", i), Type: "work"}},
			ExternalID:   fmt.Sprintf("ImagicleCustomFields$$$Custom1=c%d$$$Custom2=x", i)}
		if i > 0 {
			u.Enterprise.Manager = users[i/2].ID
		}
		if u, err = st.CreateUser(ctx, "acme", u); err != nil {
			t.Fatal(err)
		}
		users = append(users, u)
	}
	sales, err := st.CreateGroup(ctx, "acme", store.Group{DisplayName: "Sales", Members: []store.Member{{ID: users[1].ID}, {ID: users[2].ID}, {ID: users[7].ID}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateGroup(ctx, "acme", store.Group{DisplayName: "All", Members: []store.Member{{ID: sales.ID}, {ID: users[3].ID}}}); err != nil {
		t.Fatal(err)
	}
	opts := map[string]mapping.Config{"acme": {ScopeFilter: "(!(uid=user5*))"}}
	withViews := func(c *Config) { c.ViewDir = views }

	// restart stops the running server, reopens the store (after edit, if
	// any, runs on it with no server) and starts a new server.
	var ts *testServer
	var logs *lockedBuffer
	start := func(opts map[string]mapping.Config) {
		logs = &lockedBuffer{}
		ts = serveStore(t, st, dir, withViews, opts, logs)
		ts.pw = pw
		t.Cleanup(func() { ts.shutdown(t) })
	}
	restart := func(opts map[string]mapping.Config, edit func(*store.Store)) {
		t.Helper()
		if err := ts.shutdown(t); err != nil {
			t.Fatalf("shutdown: %v", err)
		}
		st.Close()
		if st, err = store.Open(dbPath, store.Options{}); err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			edit(st)
			st.Close()
			if st, err = store.Open(dbPath, store.Options{}); err != nil {
				t.Fatal(err)
			}
		}
		start(opts)
	}
	t.Cleanup(func() { st.Close() })
	fromSnapshot := func() bool { return strings.Contains(logs.String(), "LDAP view loaded from snapshot") }

	start(opts)
	want := dumpTree(t, ts)
	if fromSnapshot() {
		t.Fatal("first start used a snapshot")
	}
	if len(want) < 50 {
		t.Fatalf("only %d entries", len(want))
	}

	// restartFromSnapshot restarts and checks that the server loaded its
	// saved view and serves the tree it served before.
	restartFromSnapshotAfter := func(t *testing.T, edit func(*store.Store)) {
		t.Helper()
		restart(opts, edit)
		got := dumpTree(t, ts)
		if !fromSnapshot() {
			t.Fatalf("snapshot not used; log:\n%s", logs)
		}
		if d := treeDiff(want, got); d != "" {
			t.Fatalf("tree after restart differs:\n%s", d)
		}
	}
	restartFromSnapshot := func(t *testing.T) { t.Helper(); restartFromSnapshotAfter(t, nil) }

	t.Run("restart uses the snapshot and serves the same tree", func(t *testing.T) {
		restartFromSnapshot(t)
		if _, err := os.Stat(filepath.Join(views, "acme.view")); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("writes after a snapshot load reach LDAP", func(t *testing.T) {
		if _, err := ts.st.UpdateUser(ctx, "acme", users[2].ID, 0, func(u *store.User) error { u.UserName = "renamed@acme.test"; return nil }); err != nil {
			t.Fatal(err)
		}
		if err := ts.st.DeleteUser(ctx, "acme", users[3].ID); err != nil {
			t.Fatal(err)
		}
		l := ts.bound(t)
		if e := search(t, l, people, goldap.ScopeSingleLevel, "(uid=renamed@acme.test)", "memberOf"); len(e) != 1 || e[0].GetAttributeValue("memberOf") != "cn=Sales,ou=groups,o=acme,dc=scimldap" {
			t.Fatalf("renamed user: %v", e)
		}
		if e := search(t, l, people, goldap.ScopeSingleLevel, "(uid=user03@acme.test)"); len(e) != 0 {
			t.Fatalf("deleted user still served: %v", e)
		}
		if e := search(t, l, people, goldap.ScopeSingleLevel, "(manager=uid=renamed@acme.test,"+people+")", "uid"); len(e) != 2 {
			t.Fatalf("reports of the renamed manager: %v", dns(e))
		}
		want = dumpTree(t, ts)
	})

	t.Run("the changed tree is saved at the next shutdown", restartFromSnapshot)

	t.Run("writes to another tenant, a token or an account keep the snapshot", func(t *testing.T) {
		restartFromSnapshotAfter(t, func(st *store.Store) {
			if _, err := st.CreateUser(ctx, "other", store.User{UserName: "elsewhere", Active: true}); err != nil {
				t.Fatal(err)
			}
			_, tok := store.NewSecret()
			if err := st.SetTenantToken(ctx, "acme", tok); err != nil {
				t.Fatal(err)
			}
			if err := st.PutAccount(ctx, "acme", store.Account{Name: "second", Password: tok}); err != nil {
				t.Fatal(err)
			}
		})
	})

	t.Run("a write while the server is down makes it rebuild", func(t *testing.T) {
		restart(opts, func(st *store.Store) {
			if _, err := st.CreateUser(ctx, "acme", store.User{UserName: "offline@acme.test", Active: true}); err != nil {
				t.Fatal(err)
			}
		})
		l := ts.bound(t)
		if e := search(t, l, people, goldap.ScopeSingleLevel, "(uid=offline@acme.test)"); len(e) != 1 {
			t.Fatalf("user written offline: %v", e)
		}
		if fromSnapshot() {
			t.Fatal("a stale snapshot was used")
		}
		want = dumpTree(t, ts)
	})

	t.Run("other options make it rebuild", func(t *testing.T) {
		restart(nil, nil) // no scope filter: user5x appear
		l := ts.bound(t)
		if e := search(t, l, people, goldap.ScopeSingleLevel, "(uid=user55@acme.test)"); len(e) != 1 {
			t.Fatalf("user outside the old scope: %v", e)
		}
		if fromSnapshot() {
			t.Fatal("a snapshot for other options was used")
		}
	})

	t.Run("a damaged snapshot is not used", func(t *testing.T) {
		restart(opts, nil) // back to opts: rebuilt
		_ = dumpTree(t, ts)
		restart(opts, nil) // a snapshot for opts now exists
		_ = dumpTree(t, ts)
		if !fromSnapshot() {
			t.Fatalf("snapshot not used; log:\n%s", logs)
		}
		if err := ts.shutdown(t); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(views, "acme.view")
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0x20
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		st.Close()
		if st, err = store.Open(dbPath, store.Options{}); err != nil {
			t.Fatal(err)
		}
		start(opts)
		got := dumpTree(t, ts)
		if fromSnapshot() || !strings.Contains(logs.String(), "checksum mismatch") {
			t.Fatalf("damaged snapshot: log:\n%s", logs)
		}
		if d := treeDiff(want, got); d != "" {
			t.Fatalf("tree after a rebuild differs:\n%s", d)
		}
	})

	t.Run("snapshots of removed tenants are deleted", func(t *testing.T) {
		if err := ts.st.DeleteTenant(ctx, "acme"); err != nil {
			t.Fatal(err)
		}
		if err := ts.shutdown(t); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(views, "acme.view")); !os.IsNotExist(err) {
			t.Fatalf("snapshot of a removed tenant: %v", err)
		}
	})
}

func treeDiff(want, got []string) string {
	var b strings.Builder
	w, g := map[string]bool{}, map[string]bool{}
	for _, s := range want {
		w[s] = true
	}
	for _, s := range got {
		g[s] = true
	}
	for _, s := range want {
		if !g[s] {
			fmt.Fprintf(&b, "- %s\n", s)
		}
	}
	for _, s := range got {
		if !w[s] {
			fmt.Fprintf(&b, "+ %s\n", s)
		}
	}
	return b.String()
}

// FuzzReadSnapshot feeds arbitrary snapshot bodies (with a valid checksum,
// so the decoder itself is exercised) to the loader: it must reject or
// accept them without panicking, and what it accepts must be usable.
func FuzzReadSnapshot(f *testing.F) {
	key := snapKey{tenant: "acme", storeVersion: "s/1", options: "o", binary: "b"}
	enc := func(parts ...any) []byte {
		b := []byte(snapMagic)
		for _, p := range parts {
			switch p := p.(type) {
			case int:
				b = binary.AppendUvarint(b, uint64(p))
			case string:
				b = binary.AppendUvarint(b, uint64(len(p)))
				b = append(b, p...)
			}
		}
		return b
	}
	head := []any{snapFormat, "acme", "s/1", "o", "b"}
	f.Add(enc(head...))
	f.Add(enc(append(head, 1, "uid", 1, 1, 1, "1x", "", 1, "uid=a", "uid=a", 1, 1, 0, 1, "a")...))
	f.Add(enc(append(head, 1, "uid", 1, 1, 1, "1x", "", 1, "uid=a", "uid=a", 2, 1, 0, 1, "a")...))
	f.Add(enc(append(head, 1, "uid", 1, 0, 9, "1x", "", 1, "uid=a", "uid=a", 1, 1, 0, 1, "a")...))
	f.Fuzz(func(t *testing.T, body []byte) {
		b := binary.LittleEndian.AppendUint32(append([]byte(nil), body...), crc32.Checksum(body, castagnoli))
		su, err := decodeSnapshot(b, key)
		if err != nil || su == nil {
			return
		}
		for i := range su.entries {
			e := &su.entries[i]
			for j := range e.refs {
				_ = e.view(j).vals
			}
		}
	})
}

// TestViewSavedWhenQuiet checks that a view is saved once writes pause,
// so that a start after a crash (no shutdown, no save) still loads it,
// and that starts without writes keep the saved view current.
func TestViewSavedWhenQuiet(t *testing.T) {
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "db")
	views := filepath.Join(dir, "views")
	open := func() *store.Store {
		st, err := store.Open(dbPath, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	st := open()
	pw := seedTenants(t, st)
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		if _, err := st.CreateUser(ctx, "acme", store.User{UserName: fmt.Sprintf("u%02d", i), Active: true}); err != nil {
			t.Fatal(err)
		}
	}
	tune := func(c *Config) { c.ViewDir, c.ViewSaveQuiet = views, 40*time.Millisecond }
	// crash abandons the running server without a shutdown, as kill -9
	// would, and starts a new one on the reopened store.
	var ts *testServer
	var logs *lockedBuffer
	start := func() {
		logs = &lockedBuffer{}
		ts = serveStore(t, st, dir, tune, nil, logs)
		ts.pw = pw
		old := ts
		t.Cleanup(func() { old.shutdown(t) })
	}
	crash := func() {
		ts.srv.cancel() // stops its background saving, as a dead process would
		st.Close()
		st = open()
		start()
	}
	t.Cleanup(func() { st.Close() })
	waitFor := func(what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(logs.String(), what) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the log:\n%s", what, logs)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	start()
	l := ts.bound(t)
	search(t, l, people, goldap.ScopeSingleLevel, "(uid=u01)")
	if _, err := st.CreateUser(ctx, "acme", store.User{UserName: "late", Active: true}); err != nil {
		t.Fatal(err)
	}
	waitFor("LDAP view saved")

	crash()
	l = ts.bound(t)
	if e := search(t, l, people, goldap.ScopeSingleLevel, "(uid=late)"); len(e) != 1 {
		t.Fatalf("user written before the save: %v", e)
	}
	waitFor("LDAP view loaded from snapshot")

	// No write since: the saved view stays current across another crash,
	// and nothing is written again.
	time.Sleep(200 * time.Millisecond)
	if strings.Contains(logs.String(), "LDAP view saved") {
		t.Fatalf("an unchanged view was saved again:\n%s", logs)
	}
	crash()
	l = ts.bound(t)
	search(t, l, people, goldap.ScopeSingleLevel, "(uid=late)")
	waitFor("LDAP view loaded from snapshot")
}
