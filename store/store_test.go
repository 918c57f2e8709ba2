package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func openTest(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "scimldap.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	_, tok := NewSecret()
	if _, err := s.CreateTenant(context.Background(), "Acme", tok); err != nil {
		t.Fatal(err)
	}
	return s, path
}

func TestUserLifecycleSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
	u, err := s.CreateUser(ctx, "acme", User{UserName: "Joy@Contoso.com", ExternalID: "ext-1", Active: true,
		Emails: []MultiValue{{Value: "Joy@Contoso.com", Type: "work", Primary: true}}})
	if err != nil {
		t.Fatal(err)
	}
	if u.ID == "" || u.Meta.Version != 1 || u.Meta.Created.IsZero() {
		t.Fatalf("CreateUser = %+v; want id, version 1 and created set", u)
	}
	u2, err := s.UpdateUser(ctx, "acme", u.ID, 1, func(x *User) error { x.UserName = "joy.young@contoso.com"; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if u2.Meta.Version != 2 || u2.Meta.Created != u.Meta.Created {
		t.Fatalf("UpdateUser meta = %+v; want version 2, same created", u2.Meta)
	}
	if _, err := s.UpdateUser(ctx, "acme", u.ID, 1, func(*User) error { return nil }); !errors.Is(err, ErrPrecondition) {
		t.Fatalf("UpdateUser with stale version: err = %v; want ErrPrecondition", err)
	}
	s.Close()

	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.LookupUsers(ctx, "ACME", IndexUserName, "JOY.YOUNG@contoso.com")
	if err != nil || len(got) != 1 || got[0].ID != u.ID {
		t.Fatalf("LookupUsers after reopen = %v, %v; want the renamed user", got, err)
	}
	if old, _ := s.LookupUsers(ctx, "acme", IndexUserName, "joy@contoso.com"); len(old) != 0 {
		t.Fatalf("old userName still indexed: %v", old)
	}
	if err := s.DeleteUser(ctx, "acme", u.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.User(ctx, "acme", u.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("User after delete: err = %v; want ErrNotFound", err)
	}
	if err := s.DeleteUser(ctx, "acme", u.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second DeleteUser: err = %v; want ErrNotFound", err)
	}
}

func TestUniqueness(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	s.SetRules("acme", Rules{UniqueEmail: true, UniquePhone: true, UniqueExternalID: true})
	base, err := s.CreateUser(ctx, "acme", User{UserName: "alice", ExternalID: "e1",
		Emails:       []MultiValue{{Value: "alice@x.test", Type: "work"}},
		PhoneNumbers: []MultiValue{{Value: "+1 555 0100", Type: "work"}}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		u    User
		attr string
	}{
		{"userName other case", User{UserName: "ALICE"}, "userName"},
		{"externalId", User{UserName: "b", ExternalID: "e1"}, "externalId"},
		{"email other case", User{UserName: "c", Emails: []MultiValue{{Value: "Alice@X.test", Type: "home"}}}, "emails.value"},
		{"phone formatted differently", User{UserName: "d", PhoneNumbers: []MultiValue{{Value: "+15550100", Type: "mobile"}}}, "phoneNumbers.value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.CreateUser(ctx, "acme", tt.u)
			var ce *ConflictError
			if !errors.As(err, &ce) || ce.Attribute != tt.attr || ce.HolderID != base.ID {
				t.Fatalf("CreateUser(%+v) err = %v; want conflict on %s held by %s", tt.u, err, tt.attr, base.ID)
			}
		})
	}
	// Without the rules the same values are accepted (userName stays unique).
	s.SetRules("acme", Rules{})
	if _, err := s.CreateUser(ctx, "acme", User{UserName: "e", ExternalID: "e1"}); err != nil {
		t.Fatalf("duplicate externalId without rule: %v", err)
	}
	if _, err := s.CreateUser(ctx, "acme", User{UserName: " "}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("blank userName: err = %v; want ErrInvalid", err)
	}
}

func TestTenantIsolation(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	_, tok := NewSecret()
	if _, err := s.CreateTenant(ctx, "other", tok); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateTenant(ctx, "ACME", tok); !errors.Is(err, ErrConflict) {
		t.Fatalf("tenant name differing in case: err = %v; want ErrConflict", err)
	}
	u, err := s.CreateUser(ctx, "acme", User{UserName: "same"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateUser(ctx, "other", User{UserName: "same"}); err != nil {
		t.Fatalf("same userName in another tenant: %v", err)
	}
	if _, err := s.User(ctx, "other", u.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("reading acme's user through tenant other: err = %v; want ErrNotFound", err)
	}
	if err := s.DeleteTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.User(ctx, "acme", u.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("user of deleted tenant: err = %v", err)
	}
}

func TestGroupMembership(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	a, _ := s.CreateUser(ctx, "acme", User{UserName: "a"})
	b, _ := s.CreateUser(ctx, "acme", User{UserName: "b"})
	g, err := s.CreateGroup(ctx, "acme", Group{DisplayName: "Sales", Members: []Member{{ID: a.ID}, {ID: a.ID}, {ID: "not-yet"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Members) != 2 {
		t.Fatalf("members = %v; want a and the dangling id, deduplicated", g.Members)
	}
	if _, err := s.CreateGroup(ctx, "acme", Group{DisplayName: "SALES"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate group name: err = %v; want ErrConflict", err)
	}
	g, err = s.UpdateGroup(ctx, "acme", g.ID, 0, func(x *Group) error {
		x.Members = append(x.Members, Member{ID: b.ID, Display: "Bee"})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	of, _ := s.GroupsOf(ctx, "acme", b.ID)
	if len(of) != 1 || of[0].ID != g.ID {
		t.Fatalf("GroupsOf(b) = %v; want [Sales]", of)
	}
	if err := s.DeleteUser(ctx, "acme", a.ID); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Group(ctx, "acme", g.ID, true)
	if len(got.Members) != 2 || got.Meta.Version <= g.Meta.Version {
		t.Fatalf("after deleting a: members %v version %d; want 2 members and a new version", got.Members, got.Meta.Version)
	}
	for _, m := range got.Members {
		if m.ID == b.ID && m.Display != "Bee" {
			t.Fatalf("member display = %q; want Bee", m.Display)
		}
	}
	if err := s.DeleteGroup(ctx, "acme", g.ID); err != nil {
		t.Fatal(err)
	}
	if of, _ := s.GroupsOf(ctx, "acme", b.ID); len(of) != 0 {
		t.Fatalf("GroupsOf after group delete = %v", of)
	}
}

func TestConcurrentCreatesAreAllDurable(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
	var wg sync.WaitGroup
	ids := make(chan string, 200)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				u, err := s.CreateUser(ctx, "acme", User{UserName: string(rune('a'+w)) + "-" + string(rune('A'+i))})
				if err != nil {
					t.Error(err)
					return
				}
				ids <- u.ID
			}
		}(w)
	}
	wg.Wait()
	close(ids)
	s.Close()
	s2, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	n := 0
	for id := range ids {
		if _, err := s2.User(ctx, "acme", id); err != nil {
			t.Fatalf("acknowledged user %s lost: %v", id, err)
		}
		n++
	}
	if c, _ := s2.CountUsers(ctx, "acme"); c != n || n != 200 {
		t.Fatalf("CountUsers = %d, acknowledged %d; want 200", c, n)
	}
}

func TestSchemaVersionGuard(t *testing.T) {
	path := filepath.Join(t.TempDir(), "future.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		b, _ := tx.CreateBucket(bucketMeta)
		return b.Put(keySchema, u64(SchemaVersion+1))
	})
	db.Close()
	if _, err := Open(path, Options{}); err == nil {
		t.Fatal("Open of a newer schema succeeded; want an error")
	}
	// A second process cannot open a file in use.
	s, _ := openTest(t)
	if _, err := Open(s.Path(), Options{Timeout: 50e6}); err == nil {
		t.Fatal("second Open of a locked file succeeded")
	}
}

func TestBackupIsAUsableDatabase(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	u, _ := s.CreateUser(ctx, "acme", User{UserName: "kept"})
	var buf bytes.Buffer
	if _, err := s.Backup(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.User(ctx, "acme", u.ID); err != nil {
		t.Fatalf("user missing from backup: %v", err)
	}
}

func TestSecretsAndNames(t *testing.T) {
	plain, sec := NewSecret()
	if len(plain) < 43 || !sec.Verify(plain) || sec.Verify(plain+"x") || (Secret{}).Verify("") {
		t.Fatalf("secret round trip failed")
	}
	for _, tt := range []struct {
		name string
		ok   bool
	}{{"default", true}, {"ACME-INC", true}, {"", false}, {"a b", false}, {"x.y", false}, {"abcdefghijabcdefghijabcdefghij12345", true}, {"abcdefghijabcdefghijabcdefghij123456", false}} {
		if err := ValidateTenantName(tt.name); (err == nil) != tt.ok {
			t.Errorf("ValidateTenantName(%q) = %v; want ok=%v", tt.name, err, tt.ok)
		}
	}
	if NormalizePhone("+1 (555) 010-0199") != "+15550100199" {
		t.Errorf("NormalizePhone = %q", NormalizePhone("+1 (555) 010-0199"))
	}
}

func TestIDsSortByCreation(t *testing.T) {
	prev := NewID()
	for i := 0; i < 20000; i++ {
		id := NewID()
		if id <= prev {
			t.Fatalf("NewID() = %s after %s; want increasing ids", id, prev)
		}
		if id[14] != '7' || !strings.ContainsRune("89ab", rune(id[19])) {
			t.Fatalf("NewID() = %s is not a version 7 UUID", id)
		}
		prev = id
	}
}

func TestReleaseMemoryKeepsData(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	u, _ := s.CreateUser(ctx, "acme", User{UserName: "kept"})
	if err := s.ReleaseMemory(); err != nil {
		t.Fatal(err)
	}
	if got, err := s.User(ctx, "acme", u.ID); err != nil || got.UserName != "kept" {
		t.Fatalf("after ReleaseMemory: %+v, %v", got, err)
	}
	if _, err := s.CreateUser(ctx, "acme", User{UserName: "new"}); err != nil {
		t.Fatal(err)
	}
}

func TestScanUsersConcurrently(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	want := map[string]bool{}
	for i := 0; i < 700; i++ {
		u, err := s.CreateUser(ctx, "acme", User{UserName: "u" + strconv.Itoa(i)})
		if err != nil {
			t.Fatal(err)
		}
		want[u.ID] = true
	}
	var mu sync.Mutex
	seen := map[string]int{}
	if err := s.ScanUsersConcurrently(ctx, "acme", 3, func(u *User) error {
		mu.Lock()
		seen[u.ID]++
		mu.Unlock()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for id := range want {
		if seen[id] != 1 {
			t.Fatalf("user %s seen %d times", id, seen[id])
		}
	}
	boom := errors.New("boom")
	if err := s.ScanUsersConcurrently(ctx, "acme", 2, func(*User) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("error from fn: %v", err)
	}
	if err := s.ScanUsersConcurrently(ctx, "ghost", 2, func(*User) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown tenant: %v", err)
	}
}

// TestTenantVersions checks what a cache of a tenant relies on: the
// tenant's version changes with every write to its users and groups and
// with nothing else, survives a reopen, and a restored copy that is
// written to again never repeats a version.
func TestTenantVersions(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
	_, tok := NewSecret()
	if _, err := s.CreateTenant(ctx, "other", tok); err != nil {
		t.Fatal(err)
	}
	ver := func(s *Store, tenant string) string {
		t.Helper()
		v, err := s.TenantVersion(ctx, tenant)
		if err != nil || v == "" {
			t.Fatalf("TenantVersion(%s) = %q, %v", tenant, v, err)
		}
		return v
	}
	seen := map[string]bool{}
	fresh := func(s *Store, tenant, after string) string {
		t.Helper()
		v := ver(s, tenant)
		if seen[v] {
			t.Fatalf("%s: version %q repeated %s", tenant, v, after)
		}
		seen[v] = true
		return v
	}
	fresh(s, "acme", "at creation")
	other := fresh(s, "other", "at creation")
	u, err := s.CreateUser(ctx, "acme", User{UserName: "a"})
	if err != nil {
		t.Fatal(err)
	}
	fresh(s, "acme", "after a create")
	if _, err := s.UpdateUser(ctx, "acme", u.ID, 0, func(u *User) error { u.Title = "x"; return nil }); err != nil {
		t.Fatal(err)
	}
	fresh(s, "acme", "after an update")
	g, err := s.CreateGroup(ctx, "acme", Group{DisplayName: "g", Members: []Member{{ID: u.ID}}})
	if err != nil {
		t.Fatal(err)
	}
	fresh(s, "acme", "after a group create")
	if _, err := s.UpdateGroup(ctx, "acme", g.ID, 0, func(g *Group) error { g.Members = nil; return nil }); err != nil {
		t.Fatal(err)
	}
	fresh(s, "acme", "after a group update")
	if err := s.DeleteGroup(ctx, "acme", g.ID); err != nil {
		t.Fatal(err)
	}
	acme := fresh(s, "acme", "after a group delete")
	if ver(s, "other") != other {
		t.Fatal("writes to acme changed other's version")
	}
	// Token and service accounts are not part of the directory's data.
	_, tok = NewSecret()
	if err := s.SetTenantToken(ctx, "acme", tok); err != nil {
		t.Fatal(err)
	}
	if err := s.PutAccount(ctx, "acme", Account{Name: "reader", Password: tok}); err != nil {
		t.Fatal(err)
	}
	if ver(s, "acme") != acme {
		t.Fatal("a token or account write changed the tenant's version")
	}
	if _, err := s.TenantVersion(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("TenantVersion of an unknown tenant: %v", err)
	}

	backup := filepath.Join(t.TempDir(), "copy.db")
	f, err := os.Create(backup)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Backup(ctx, f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	s.Close()
	s = reopen(t, path)
	if ver(s, "acme") != acme {
		t.Fatal("reopening changed the version")
	}
	if err := s.DeleteUser(ctx, "acme", u.ID); err != nil {
		t.Fatal(err)
	}
	fresh(s, "acme", "after a delete in a new session")
	s.Close()

	// The copy is where the original was; written to, it must not arrive
	// at any version the original had.
	c := reopen(t, backup)
	if ver(c, "acme") != acme {
		t.Fatal("the copy does not start at the original's version")
	}
	if err := c.DeleteUser(ctx, "acme", u.ID); err != nil {
		t.Fatal(err)
	}
	fresh(c, "acme", "in a written copy")
}

// TestQuiesceWaitsForWritesAndTheirWatchers checks that inside Quiesce
// every acknowledged write has been reported and no write commits.
func TestQuiesceWaitsForWritesAndTheirWatchers(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	var mu sync.Mutex
	seen := 0
	s.Watch(func(Change) { mu.Lock(); seen++; mu.Unlock() })
	var wg sync.WaitGroup
	var acked sync.Map
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; j < 20; j++ {
				u, err := s.CreateUser(ctx, "acme", User{UserName: strconv.Itoa(i) + "-" + strconv.Itoa(j)})
				if err != nil {
					t.Error(err)
					return
				}
				acked.Store(u.ID, true)
			}
		}(i)
	}
	for k := 0; k < 10; k++ {
		err := s.Quiesce(func() error {
			v1, _ := s.Version(ctx)
			n := 0
			acked.Range(func(any, any) bool { n++; return true })
			mu.Lock()
			reported := seen
			mu.Unlock()
			if reported < n {
				t.Errorf("inside Quiesce: %d writes acknowledged, %d reported", n, reported)
			}
			if v2, _ := s.Version(ctx); v1 != v2 {
				t.Errorf("a write committed inside Quiesce")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
}

// TestGroupUpdateKeepsIndexesAndMembers updates a group three ways: its
// members alone (the name stays found), its members changed in place (the
// change is stored), and a rename (the index follows).
func TestGroupUpdateKeepsIndexesAndMembers(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	a, _ := s.CreateUser(ctx, "acme", User{UserName: "a"})
	b, _ := s.CreateUser(ctx, "acme", User{UserName: "b"})
	g, err := s.CreateGroup(ctx, "acme", Group{DisplayName: "Sales", Members: []Member{{ID: a.ID, Display: "A"}}})
	if err != nil {
		t.Fatal(err)
	}
	named := func(name string) int {
		gs, err := s.LookupGroups(ctx, "acme", IndexGroupName, NormalizeIndexValue(IndexGroupName, name))
		if err != nil {
			t.Fatal(err)
		}
		return len(gs)
	}
	for _, step := range []struct {
		name        string
		fn          func(*Group)
		wantMembers []Member
		found, gone string
	}{
		{"add a member", func(x *Group) { x.Members = append(x.Members, Member{ID: b.ID, Display: "B"}) },
			[]Member{{ID: a.ID, Kind: KindUser, Display: "A"}, {ID: b.ID, Kind: KindUser, Display: "B"}}, "sales", ""},
		{"replace a member in place", func(x *Group) { x.Members[0] = Member{ID: b.ID, Display: "Bee"}; x.Members = x.Members[:1] },
			[]Member{{ID: b.ID, Kind: KindUser, Display: "Bee"}}, "SALES", ""},
		{"rename", func(x *Group) { x.DisplayName = "Marketing" },
			[]Member{{ID: b.ID, Kind: KindUser, Display: "Bee"}}, "marketing", "sales"},
	} {
		if _, err := s.UpdateGroup(ctx, "acme", g.ID, 0, func(x *Group) error { step.fn(x); return nil }); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		got, err := s.Group(ctx, "acme", g.ID, true)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(got.Members, func(x, y Member) int { return strings.Compare(x.Display, y.Display) })
		if !slices.Equal(got.Members, step.wantMembers) {
			t.Errorf("%s: members %v; want %v", step.name, got.Members, step.wantMembers)
		}
		if named(step.found) != 1 {
			t.Errorf("%s: no group named %q", step.name, step.found)
		}
		if step.gone != "" && named(step.gone) != 0 {
			t.Errorf("%s: a group is still named %q", step.name, step.gone)
		}
	}
	if of, _ := s.GroupsOf(ctx, "acme", a.ID); len(of) != 0 {
		t.Errorf("a is still a member of %v", of)
	}
}
