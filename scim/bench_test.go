package scim

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/scimldap/scimldap/scim/scimtest"
	"github.com/scimldap/scimldap/store"
)

// BenchmarkProvision provisions b.N users the way Entra ID does (matching
// query, POST, then two PATCHes) with 8 concurrent clients over real HTTPS,
// and reports durable creates per second and create latency percentiles.
// Each client is a scimtest.LeanClient; BenchmarkProvisionNetHTTP is the
// same flow through net/http's client. The appliance's BenchmarkProvision
// (package main) runs the flow against the whole appliance instead.
func BenchmarkProvision(b *testing.B) {
	env := newTestEnv(b, DefaultConfig())
	cfg := env.srv.Client().Transport.(*http.Transport).TLSClientConfig
	clients := make([]*scimtest.LeanClient, 8)
	for w := range clients {
		c, err := scimtest.DialLean(env.srv.URL+"/scim/v2/acme", env.token, cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		clients[w] = c
	}
	scimtest.Run(b, env.st, 4, func(w int, i int64) (time.Duration, error) {
		return scimtest.ProvisionUser(i, clients[w].Do)
	})
}

// BenchmarkProvisionNetHTTP is BenchmarkProvision with net/http's client.
func BenchmarkProvisionNetHTTP(b *testing.B) {
	env := newTestEnv(b, DefaultConfig())
	client := env.srv.Client()
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = 16
	do := func(method, path string, body []byte) (int, []byte, error) {
		req, _ := http.NewRequest(method, env.srv.URL+"/scim/v2/acme"+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+env.token)
		req.Header.Set("Content-Type", "application/scim+json")
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, err
		}
		out, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, out, err
	}
	scimtest.Run(b, env.st, 4, func(_ int, i int64) (time.Duration, error) {
		return scimtest.ProvisionUser(i, do)
	})
}

// BenchmarkCreate measures POST /Users alone with 8 concurrent clients
// over HTTPS: durable creates per second without the rest of Entra's flow.
func BenchmarkCreate(b *testing.B) {
	env := newTestEnv(b, DefaultConfig())
	client := env.srv.Client()
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = 16
	scimtest.Run(b, env.st, 1, func(_ int, i int64) (time.Duration, error) {
		body := fmt.Sprintf(`{"userName":"c%07d@contoso.com","active":true,"displayName":"C %d","emails":[{"type":"work","value":"c%07d@contoso.com"}]}`, i, i, i)
		req, _ := http.NewRequest("POST", env.srv.URL+"/scim/v2/acme/Users", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+env.token)
		t0 := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 201 {
			return 0, fmt.Errorf("create: %d", resp.StatusCode)
		}
		return time.Since(t0), nil
	})
}

// BenchmarkMatchQuery answers Entra's matching query (userName eq …) over
// HTTPS against SCIMLDAP_BENCH_USERS stored users (default 10000), and
// reports the process's resident memory with them loaded.
func BenchmarkMatchQuery(b *testing.B) {
	n := 10000
	if s := os.Getenv("SCIMLDAP_BENCH_USERS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	env := newTestEnv(b, DefaultConfig())
	loadUsers(b, env.st, n)
	client := env.srv.Client()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("load%07d@contoso.com", (i*7919)%n)
		req, _ := http.NewRequest("GET", env.srv.URL+"/scim/v2/acme/Users?filter="+url.QueryEscape(`userName eq "`+name+`"`), nil)
		req.Header.Set("Authorization", "Bearer "+env.token)
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !bytes.Contains(body, []byte(`"totalResults":1`)) {
			b.Fatalf("match for %s: %s", name, body)
		}
	}
	b.StopTimer()
	runtime.GC()
	b.ReportMetric(float64(rssBytes())/(1<<20), "RSS-MB")
	b.ReportMetric(float64(n), "users")
}

func loadUsers(b *testing.B, st *store.Store, n int) {
	var wg sync.WaitGroup
	var next atomic.Int64
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				name := fmt.Sprintf("load%07d@contoso.com", i)
				_, err := st.CreateUser(context.Background(), "acme", store.User{UserName: name, Active: true, DisplayName: "Load " + name,
					ExternalID: strconv.Itoa(int(i)), Emails: []store.MultiValue{{Value: name, Type: "work", Primary: true}},
					Name: store.Name{GivenName: "Load", FamilyName: "User"}, PhoneNumbers: []store.MultiValue{{Value: fmt.Sprintf("+1 555 %07d", i), Type: "work"}}})
				if err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// rssBytes reads the resident set size from /proc (Linux).
func rssBytes() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
