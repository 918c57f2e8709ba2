package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/scimldap/scimldap/store"
)

// TestStartupWithManyUsers measures start-up with SCIMLDAP_BENCH_STARTUP_USERS
// stored users (e.g. 1000000): time until SCIM and LDAP listen, and until
// the first LDAP search is answered (the tenant's directory view is then
// loaded). It runs only when that variable is set.
func TestStartupWithManyUsers(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("SCIMLDAP_BENCH_STARTUP_USERS"))
	if n == 0 {
		t.Skip("set SCIMLDAP_BENCH_STARTUP_USERS to run")
	}
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	reuse := os.Getenv("SCIMLDAP_BENCH_STARTUP_DIR") // keeps the stored users between runs
	if reuse != "" {
		cfg.DataDir = reuse
	}
	cfg.LogLevel = "error"
	cfg.SCIM.Addr, cfg.LDAP.Addr, cfg.LDAP.LDAPSAddr = "127.0.0.1:0", "127.0.0.1:0", ""
	cfg.TLS.ACMEHTTPAddr = ""
	if reuse != "" {
		if b, err := os.ReadFile(filepath.Join(reuse, "bench-creds.json")); err == nil {
			var creds tenantCreds
			if err := json.Unmarshal(b, &creds); err != nil {
				t.Fatal(err)
			}
			measureStartup(t, &cfg, creds, n)
			return
		}
	}
	st, err := openStore(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := (&admin{st: st, cfg: &cfg}).tenantAdd(context.Background(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 64; w++ { // many writers: large commit groups
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				name := fmt.Sprintf("u%07d@acme.test", i)
				_, err := st.CreateUser(context.Background(), "acme", store.User{UserName: name, Active: true, DisplayName: "User " + name,
					Name: store.Name{GivenName: "Given", FamilyName: fmt.Sprintf("Family%d", i%5000)}, Emails: []store.MultiValue{{Value: name, Type: "work"}},
					PhoneNumbers: []store.MultiValue{{Value: fmt.Sprintf("+39 06 %07d", i), Type: "work"}}, Enterprise: store.Enterprise{Department: "Sales"}})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	st.Close()
	t.Logf("stored %d users in %s", n, time.Since(began).Round(time.Second))
	if reuse != "" {
		b, _ := json.Marshal(creds)
		if err := os.WriteFile(filepath.Join(reuse, "bench-creds.json"), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	measureStartup(t, &cfg, creds, n)
}

func measureStartup(t *testing.T, cfg *Config, creds tenantCreds, n int) {
	// The first start after a crash, or with another build, rebuilds the
	// view from the store: remove any snapshot to measure that.
	if err := os.RemoveAll(filepath.Join(cfg.DataDir, "ldap-views")); err != nil {
		t.Fatal(err)
	}
	for _, how := range []string{"rebuilt from the store", "loaded from the snapshot saved at shutdown"} {
		began := time.Now()
		a, err := start(context.Background(), cfg, io.Discard, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		listening := time.Since(began)
		l, err := goldap.DialURL("ldap://" + a.ldapAddr.String())
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Bind(creds.BindDN, creds.Password); err != nil {
			t.Fatal(err)
		}
		res, err := l.Search(goldap.NewSearchRequest("ou=people,"+creds.BaseDN, goldap.ScopeWholeSubtree, 0, 0, 0, false, "(uid=u0000042@acme.test)", nil, nil))
		if err != nil || len(res.Entries) != 1 {
			t.Fatalf("first search: %v %v", res, err)
		}
		answered := time.Since(began)
		l.Close()
		began = time.Now()
		a.shutdown()
		t.Logf("start-up with %d stored users, view %s: SCIM and LDAP listening after %s; first LDAP search answered after %s; shutdown (saving the view) took %s",
			n, how, listening.Round(time.Millisecond), answered.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	}
}
