package scim

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/scimldap/scimldap/store"
)

// BenchmarkProvision provisions b.N users the way Entra ID does (matching
// query, POST, then two PATCHes) with 8 concurrent clients over real HTTPS,
// and reports durable creates per second and create latency percentiles.
//
// Each client is one keep-alive HTTP/1.1 connection over TLS that writes
// Entra's requests and reads the answers itself (leanClient): Entra's own
// client runs elsewhere, and net/http's client would take a sixth of this
// machine's two cores from the server under test. BenchmarkProvisionNetHTTP
// is the same flow through net/http's client.
func BenchmarkProvision(b *testing.B) {
	env := newTestEnv(b, DefaultConfig())
	clients := make([]*leanClient, 8)
	for w := range clients {
		c, err := dialLean(env)
		if err != nil {
			b.Fatal(err)
		}
		defer c.close()
		clients[w] = c
	}
	runClients(b, env, 4, func(w int, i int64) (time.Duration, error) {
		return provisionUser(i, clients[w].do)
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
	runClients(b, env, 4, func(_ int, i int64) (time.Duration, error) {
		return provisionUser(i, do)
	})
}

// provisionUser sends Entra's requests for user i: the matching query, the
// POST, and two PATCHes. It returns the POST's latency.
func provisionUser(i int64, do func(method, path string, body []byte) (int, []byte, error)) (time.Duration, error) {
	name := fmt.Sprintf("bench%07d@contoso.com", i)
	if st, body, err := do("GET", "/Users?filter="+url.QueryEscape(`userName eq "`+name+`"`), nil); err != nil || st != 200 || !bytes.Contains(body, []byte(`"totalResults":0`)) {
		return 0, fmt.Errorf("match: %d %v %s", st, err, body)
	}
	t0 := time.Now()
	st, body, err := do("POST", "/Users", fmt.Appendf(nil, `{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User","urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
		"externalId":"%d","userName":"%s","active":true,"displayName":"Bench User %d",
		"emails":[{"primary":true,"type":"work","value":"%s"}],"name":{"familyName":"User","givenName":"Bench"},
		"phoneNumbers":[{"type":"work","value":"+1 555 %07d"}],"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":{"department":"Sales"}}`, i, name, i, name, i))
	created := time.Since(t0)
	if err != nil || st != 201 {
		return 0, fmt.Errorf("create: %d %v %s", st, err, body)
	}
	_, rest, ok := bytes.Cut(body, []byte(`"id":"`))
	id, _, _ := bytes.Cut(rest, []byte(`"`))
	if !ok || len(id) == 0 {
		return 0, fmt.Errorf("create: no id in %s", body)
	}
	for _, op := range []string{`{"op":"Replace","path":"title","value":"Engineer"}`, `{"op":"Replace","path":"active","value":"False"}`} {
		if st, body, err := do("PATCH", "/Users/"+string(id), []byte(`{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[`+op+`]}`)); err != nil || st != 204 {
			return 0, fmt.Errorf("patch: %d %v %s", st, err, body)
		}
	}
	return created, nil
}

// leanClient is one keep-alive HTTPS connection that writes HTTP/1.1
// requests and parses the answers with no more work than they need.
type leanClient struct {
	conn *tls.Conn
	r    *bufio.Reader
	head string // Host and Authorization lines
	buf  []byte
}

func dialLean(env *testEnv) (*leanClient, error) {
	u, _ := url.Parse(env.srv.URL)
	cfg := env.srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	conn, err := tls.Dial("tcp", u.Host, cfg)
	if err != nil {
		return nil, err
	}
	return &leanClient{conn: conn, r: bufio.NewReaderSize(conn, 16<<10),
		head: "Host: " + u.Host + "\r\nAuthorization: Bearer " + env.token + "\r\n"}, nil
}

func (c *leanClient) close() { c.conn.Close() }

func (c *leanClient) do(method, path string, body []byte) (int, []byte, error) {
	c.buf = append(c.buf[:0], method...)
	c.buf = append(c.buf, " /scim/v2/acme"...)
	c.buf = append(c.buf, path...)
	c.buf = append(c.buf, " HTTP/1.1\r\n"...)
	c.buf = append(c.buf, c.head...)
	if body != nil {
		c.buf = append(c.buf, "Content-Type: application/scim+json\r\nContent-Length: "...)
		c.buf = strconv.AppendInt(c.buf, int64(len(body)), 10)
		c.buf = append(c.buf, "\r\n"...)
	}
	c.buf = append(c.buf, "\r\n"...)
	c.buf = append(c.buf, body...)
	if _, err := c.conn.Write(c.buf); err != nil {
		return 0, nil, err
	}
	line, err := c.r.ReadSlice('\n')
	if err != nil || len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, nil, fmt.Errorf("status line %q: %v", line, err)
	}
	status, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, nil, fmt.Errorf("status line %q", line)
	}
	length, chunked := 0, false
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return 0, nil, err
		}
		if len(bytes.TrimSpace(line)) == 0 {
			break
		}
		k, v, _ := bytes.Cut(line, []byte(":"))
		switch {
		case bytes.EqualFold(k, []byte("Content-Length")):
			length, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
		case bytes.EqualFold(k, []byte("Transfer-Encoding")):
			chunked = true
		}
	}
	if !chunked {
		out := make([]byte, length)
		_, err := io.ReadFull(c.r, out)
		return status, out, err
	}
	var out []byte
	for {
		line, err := c.r.ReadSlice('\n')
		if err != nil {
			return 0, nil, err
		}
		n, err := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 64)
		if err != nil {
			return 0, nil, fmt.Errorf("chunk size %q", line)
		}
		chunk := make([]byte, n+2) // and its CRLF
		if _, err := io.ReadFull(c.r, chunk); err != nil {
			return 0, nil, err
		}
		if n == 0 {
			return status, out, nil
		}
		out = append(out, chunk[:n]...)
	}
}

// runClients provisions users 1..b.N with user, on 8 concurrent clients,
// and reports users created per second, the create requests' latency
// percentiles, requests per second (requestsPerUser each) and where the
// durable writes spent the run. user returns its create's latency; an
// error stops that client and fails the benchmark.
func runClients(b *testing.B, env *testEnv, requestsPerUser int, user func(w int, i int64) (time.Duration, error)) {
	var next atomic.Int64
	lat := make([][]time.Duration, 8)
	b.ResetTimer()
	began := time.Now()
	stats0, cpu0 := env.st.CommitStats(), processCPU()
	var wg sync.WaitGroup
	for w := range lat {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				d, err := user(w, i)
				if err != nil {
					b.Error(err)
					return
				}
				lat[w] = append(lat[w], d)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(began)
	b.StopTimer()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) == 0 {
		return
	}
	slices.Sort(all)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "creates/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-create-ms")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-create-ms")
	b.ReportMetric(float64(b.N*requestsPerUser)/elapsed.Seconds(), "requests/s")
	reportCommits(b, env.st.CommitStats(), stats0, processCPU()-cpu0, elapsed)
}

// reportCommits reports where durable writes spent the run: writes per
// group commit, time per commit, the share of the run the single committer
// was busy, pages written per commit, and how much of the 2 cores the
// whole process (clients included) used.
func reportCommits(b *testing.B, now, before store.CommitStats, cpu, elapsed time.Duration) {
	commits := float64(now.Commits - before.Commits)
	if commits == 0 {
		return
	}
	busy := now.Busy - before.Busy
	b.ReportMetric(float64(now.Writes-before.Writes)/commits, "writes/commit")
	b.ReportMetric(float64(busy.Microseconds())/commits, "µs/commit")
	if syncs := float64(now.Syncs - before.Syncs); syncs > 0 {
		b.ReportMetric(float64((now.Logging-before.Logging).Microseconds())/syncs, "µs/log-sync")
	}
	b.ReportMetric(float64(now.Checkpoints-before.Checkpoints)/elapsed.Seconds(), "checkpoints/s")
	b.ReportMetric(100*busy.Seconds()/elapsed.Seconds(), "committer-busy-%")
	b.ReportMetric(float64(now.Pages-before.Pages)/commits, "pages/commit")
	b.ReportMetric(100*cpu.Seconds()/elapsed.Seconds()/float64(runtime.GOMAXPROCS(0)), "cpu-%")
}

// processCPU returns this process's user+system CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkCreate measures POST /Users alone with 8 concurrent clients
// over HTTPS: durable creates per second without the rest of Entra's flow.
func BenchmarkCreate(b *testing.B) {
	env := newTestEnv(b, DefaultConfig())
	client := env.srv.Client()
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = 16
	runClients(b, env, 1, func(_ int, i int64) (time.Duration, error) {
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
