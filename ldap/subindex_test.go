package ldap

import (
	"context"
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"

	"github.com/scimldap/scimldap/store"
)

func TestAppendTrigrams(t *testing.T) {
	for _, c := range []struct {
		in       string
		all, set int // trigrams, distinct trigrams
	}{{"", 0, 0}, {"ab", 0, 0}, {"abc", 1, 1}, {"abcd", 2, 2}, {"aaaa", 2, 1}, {"rossi rossi", 9, 6}, {"é€x", 4, 4}} {
		got := appendTrigrams(nil, c.in)
		slices.Sort(got)
		if len(got) != c.all || len(slices.Compact(got)) != c.set {
			t.Errorf("appendTrigrams(%q) = %v; want %d, %d distinct", c.in, got, c.all, c.set)
		}
	}
}

// TestSubstringIndexMatchesScan checks that substring filters answered
// from the index return exactly what a scan returns, after the index was
// built with writes arriving during the build and after it.
func TestSubstringIndexMatchesScan(t *testing.T) {
	ts := newTestServer(t, nil, nil)
	r := rand.New(rand.NewSource(7))
	syll := []string{"ro", "ss", "i", "ma", "ri", "o", "An", "na", "Bro", "sn", "an", "Ö", "zé", " ", "de", "la", "-"}
	word := func() string {
		var b strings.Builder
		for n := 1 + r.Intn(4); n > 0; n-- {
			b.WriteString(syll[r.Intn(len(syll))])
		}
		return strings.TrimSpace(b.String())
	}
	mod := func(i int, u *store.User) {
		u.Name = store.Name{GivenName: word(), FamilyName: word()}
		u.DisplayName = u.Name.GivenName + " " + u.Name.FamilyName
		if i%5 == 0 {
			u.DisplayName = strings.ToUpper(u.DisplayName) + "  x"
		}
	}
	us := ts.addUsers(t, "acme", 2000, mod)
	ctx := context.Background()

	// Writes while the index is built go through the log.
	release := make(chan struct{})
	subBuildHook = func(*view) { <-release }
	defer func() { subBuildHook = nil }()
	v, err := ts.srv.dir.view(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	change := func(from int) {
		for i := from; i < from+300; i++ {
			switch i % 3 {
			case 0:
				if err := ts.st.DeleteUser(ctx, "acme", us[i].ID); err != nil {
					t.Fatal(err)
				}
			default:
				if _, err := ts.st.UpdateUser(ctx, "acme", us[i].ID, 0, func(u *store.User) error { mod(i, u); return nil }); err != nil {
					t.Fatal(err)
				}
			}
		}
		ts.addUsers(t, "acme", 100, func(i int, u *store.User) {
			mod(i, u)
			u.UserName = fmt.Sprintf("late%d-%03d@acme.test", from, i)
		})
		if err := v.sync(ctx, ts.st); err != nil {
			t.Fatal(err)
		}
	}
	change(0)
	close(release)
	<-v.subReady
	change(1000)

	results := func(f *lfilter) []string {
		var dns []string
		v.mu.RLock()
		v.run(query{base: v.tenantDN, scope: scopeSub, filter: f}, func(e *entry) bool { dns = append(dns, e.dn); return true })
		v.mu.RUnlock()
		return dns
	}
	var filters []string
	for i := 0; i < 240; i++ {
		w := strings.ToLower(word())
		switch i % 6 {
		case 0:
			filters = append(filters, fmt.Sprintf("(cn=*%s*)", w))
		case 1:
			filters = append(filters, fmt.Sprintf("(|(cn=*%s*)(sn=*%s*))", w, w))
		case 2:
			filters = append(filters, fmt.Sprintf("(sn=%s*)", w))
		case 3:
			filters = append(filters, fmt.Sprintf("(givenName=*%s)", w))
		case 4:
			filters = append(filters, fmt.Sprintf("(&(objectClass=inetOrgPerson)(displayName=*%s*%s*))", w, strings.ToLower(word())))
		case 5:
			filters = append(filters, fmt.Sprintf("(mail=*%s*)", strings.ToUpper(w)))
		}
	}
	filters = append(filters, "(cn=*zzqq*)", "(cn=*ro*)", "(cn=*)", "(cn=*ma ri*)", "(cn=*MA  RI*)")
	planned := 0
	for _, fs := range filters {
		f, err := ParseFilter(fs)
		if err != nil {
			t.Fatal(err)
		}
		v.mu.RLock()
		_, ok := v.plan(f)
		v.mu.RUnlock()
		if ok {
			planned++
		}
		withIndex := results(f)
		v.mu.Lock()
		saved := v.sub
		v.sub = nil
		v.mu.Unlock()
		scanned := results(f)
		v.mu.Lock()
		v.sub = saved
		v.mu.Unlock()
		if strings.Join(withIndex, "\n") != strings.Join(scanned, "\n") {
			t.Fatalf("%s: index %d entries, scan %d", fs, len(withIndex), len(scanned))
		}
	}
	if planned < len(filters)/2 {
		t.Fatalf("only %d of %d filters used the index", planned, len(filters))
	}
}
