// Package scimtest drives a SCIM server the way Entra ID's provisioning
// does, for benchmarks: the SCIM package's own (a server in the test) and
// the appliance's (the whole binary's start-up path, LDAP and all).
package scimtest

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net/url"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/scimldap/scimldap/store"
)

// Do sends one request to a tenant's SCIM base URL (path starts with
// /Users or /Groups) and returns the status and body.
type Do func(method, path string, body []byte) (int, []byte, error)

// ProvisionUser sends Entra's requests for user i: the matching query, the
// POST, and two PATCHes. It returns the POST's latency.
func ProvisionUser(i int64, do Do) (time.Duration, error) {
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

// LeanClient is one keep-alive HTTPS connection that writes HTTP/1.1
// requests and parses the answers with no more work than they need.
// Entra's own client runs elsewhere; net/http's client would take a sixth
// of a two-core machine from the server under test.
type LeanClient struct {
	conn *tls.Conn
	r    *bufio.Reader
	base string // the tenant's base path
	head string // Host and Authorization lines
	buf  []byte
}

// DialLean connects to a tenant's SCIM base URL.
func DialLean(baseURL, token string, cfg *tls.Config) (*LeanClient, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, err
	}
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"http/1.1"}
	conn, err := tls.Dial("tcp", u.Host, cfg)
	if err != nil {
		return nil, err
	}
	return &LeanClient{conn: conn, r: bufio.NewReaderSize(conn, 16<<10), base: u.Path,
		head: "Host: " + u.Host + "\r\nAuthorization: Bearer " + token + "\r\n"}, nil
}

// Close closes the connection.
func (c *LeanClient) Close() { c.conn.Close() }

// Do is a Do.
func (c *LeanClient) Do(method, path string, body []byte) (int, []byte, error) {
	c.buf = append(c.buf[:0], method...)
	c.buf = append(c.buf, ' ')
	c.buf = append(c.buf, c.base...)
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
		if err != nil || n < 0 {
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

// Run provisions users 1..b.N with user, on 8 concurrent clients, and
// reports users created per second, the create requests' latency
// percentiles, requests per second (requestsPerUser each) and where the
// durable writes of st spent the run. user returns its create's latency;
// an error stops that client and fails the benchmark.
func Run(b *testing.B, st *store.Store, requestsPerUser int, user func(w int, i int64) (time.Duration, error)) {
	var next atomic.Int64
	lat := make([][]time.Duration, 8)
	b.ResetTimer()
	began := time.Now()
	stats0, cpu0 := st.CommitStats(), processCPU()
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
	reportCommits(b, st.CommitStats(), stats0, processCPU()-cpu0, elapsed)
}

// reportCommits reports where durable writes spent the run: writes per
// group commit, time per commit, the share of the run the single committer
// was busy, pages written per commit, and how much of the cores the whole
// process (clients included) used.
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
