package main

import (
	"crypto/tls"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/scimldap/scimldap/scim/scimtest"
)

// BenchmarkProvision provisions b.N users the way Entra ID does (matching
// query, POST, two PATCHes; scimtest.ProvisionUser) with 8 concurrent
// clients over HTTPS against the whole appliance as the binary starts it:
// default configuration, self-signed TLS, the appliance's GC policy
// (gc_percent) and the LDAP servers running. An LDAPS client looks a user
// up every 20 ms meanwhile, so the tenant's directory view follows the
// writes as it does in service. It reports durable creates per second,
// the create latency percentiles and where the durable writes spent the
// run.
func BenchmarkProvision(b *testing.B) {
	a, _ := testApp(b)
	c := a.newTenant(b, "acme")
	base := "https://" + a.scimAddr.String() + "/scim/v2/" + c.Tenant
	clients := make([]*scimtest.LeanClient, 8)
	for w := range clients {
		lc, err := scimtest.DialLean(base, c.Token, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			b.Fatal(err)
		}
		defer lc.Close()
		clients[w] = lc
	}
	var created atomic.Int64
	stop := lookUpWhileProvisioning(b, ldapsConn(b, a, c), c.BaseDN, &created)
	scimtest.Run(b, a.st, 4, func(w int, i int64) (time.Duration, error) {
		d, err := scimtest.ProvisionUser(i, clients[w].Do)
		created.Store(i)
		return d, err
	})
	stop()
}

// lookUpWhileProvisioning searches for the latest user created by uid
// every 20 ms until the returned stop is called, and once more then.
func lookUpWhileProvisioning(b *testing.B, l *goldap.Conn, baseDN string, created *atomic.Int64) (stop func()) {
	lookUp := func() {
		uid := fmt.Sprintf("bench%07d@contoso.com", max(created.Load(), 1))
		req := goldap.NewSearchRequest("ou=people,"+baseDN, goldap.ScopeWholeSubtree, 0, 0, 0, false, "(uid="+uid+")", []string{"cn", "telephoneNumber"}, nil)
		if _, err := l.Search(req); err != nil {
			b.Errorf("LDAP lookup during provisioning: %v", err)
		}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				lookUp()
			}
		}
	}()
	return func() {
		close(done)
		wg.Wait()
		lookUp()
	}
}
