package scim

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestAuthAndLimits(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxBodyBytes = 2048
	env := newTestEnv(t, cfg)
	req := func(token, method, path string, body io.Reader) *http.Response {
		r, _ := http.NewRequest(method, env.srv.URL+path, body)
		if token != "" {
			r.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := env.srv.Client().Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for _, tt := range []struct {
		name, token, path string
		want              int
	}{
		{"no token", "", "/scim/v2/acme/Users", 401},
		{"wrong token", "nope", "/scim/v2/acme/Users", 401},
		{"token of no tenant", env.token, "/scim/v2/ghost/Users", 401},
		{"healthz needs no token", "", "/healthz", 200},
		{"unknown path", env.token, "/nothing", 404},
		{"tenant name in another case", env.token, "/scim/v2/ACME/users", 200},
	} {
		resp := req(tt.token, "GET", tt.path, nil)
		if resp.StatusCode != tt.want {
			t.Errorf("%s: %d; want %d", tt.name, resp.StatusCode, tt.want)
		}
		if tt.want == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: WWW-Authenticate = %q", tt.name, resp.Header.Get("WWW-Authenticate"))
		}
	}
	big := `{"userName":"x","title":"` + strings.Repeat("a", 4096) + `"}`
	if resp := req(env.token, "POST", "/scim/v2/acme/Users", strings.NewReader(big)); resp.StatusCode != 413 {
		t.Errorf("oversized body: %d; want 413", resp.StatusCode)
	}
}

// slowBody holds a request slot open until released.
type slowBody struct{ release chan struct{} }

func (b *slowBody) Read(p []byte) (int, error) {
	<-b.release
	return 0, io.EOF
}

func TestOverloadGets429WithRetryAfter(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxInFlight = 1
	cfg.QueueWait = 50 * time.Millisecond
	env := newTestEnv(t, cfg)
	hold := &slowBody{release: make(chan struct{})}
	go func() {
		r, _ := http.NewRequest("POST", env.srv.URL+"/scim/v2/acme/Users", hold)
		r.Header.Set("Authorization", "Bearer "+env.token)
		if resp, err := env.srv.Client().Do(r); err == nil {
			resp.Body.Close()
		}
	}()
	time.Sleep(100 * time.Millisecond) // the slow request now holds the only slot
	r, _ := http.NewRequest("GET", env.srv.URL+"/scim/v2/acme/Users", nil)
	r.Header.Set("Authorization", "Bearer "+env.token)
	resp, err := env.srv.Client().Do(r)
	close(hold.release)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || !bytes.Contains(body, []byte(`"status":"429"`)) {
		t.Fatalf("overload: %d %q %s; want 429 with Retry-After and an error body", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
}

func TestPanicBecomesA500ForThatRequestOnly(t *testing.T) {
	var logs bytes.Buffer
	h := NewHandler(nil, DefaultConfig(), slog.New(slog.NewTextHandler(&logs, nil))) // a nil store panics
	srv := httptest.NewServer(h)
	defer srv.Close()
	r, _ := http.NewRequest("GET", srv.URL+"/scim/v2/acme/Users", nil)
	r.Header.Set("Authorization", "Bearer x")
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 500 || !bytes.Contains(body, []byte(`"status":"500"`)) || bytes.Contains(body, []byte("nil pointer")) {
		t.Fatalf("panic: %d %s; want a generic SCIM 500", resp.StatusCode, body)
	}
	if !strings.Contains(logs.String(), "panic in handler") {
		t.Fatalf("panic not logged: %s", logs.String())
	}
	if resp, err := http.Get(srv.URL + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("server after a panic: %v", err)
	}
}

// TestWritesRefusedByTheStoreGet503: when the store accepts no writes (it
// is closed, or its log failed), a write is answered 503 with a SCIM error
// body, not a bare 500.
func TestWritesRefusedByTheStoreGet503(t *testing.T) {
	env := newTestEnv(t, DefaultConfig())
	if st, _, body := env.do(t, "GET", "/Users", nil, nil); st != 200 { // caches the tenant
		t.Fatalf("list: %d %s", st, body)
	}
	env.st.Close()
	st, _, body := env.do(t, "POST", "/Users", []byte(`{"userName":"late@contoso.com"}`), nil)
	if st != 503 || !bytes.Contains(body, []byte(`"status":"503"`)) || !bytes.Contains(body, []byte("restarted")) {
		t.Fatalf("write to a closed store: %d %s; want a SCIM 503 saying to restart", st, body)
	}
}

// TestOverlongFilterIsRefused: a request's filter is limited to
// maxFilterLen bytes, with a SCIM invalidFilter error.
func TestOverlongFilterIsRefused(t *testing.T) {
	env := newTestEnv(t, DefaultConfig())
	long := `userName eq "` + strings.Repeat("a", maxFilterLen) + `"`
	st, _, body := env.do(t, "GET", "/Users?filter="+url.QueryEscape(long), nil, nil)
	if st != 400 || !bytes.Contains(body, []byte(`"scimType":"invalidFilter"`)) || !bytes.Contains(body, []byte("longer than 8192 bytes")) {
		t.Fatalf("overlong filter: %d %s; want 400 invalidFilter naming the limit", st, body)
	}
	fits := `userName eq "` + strings.Repeat("a", maxFilterLen-20) + `"`
	if st, _, body := env.do(t, "GET", "/Users?filter="+url.QueryEscape(fits), nil, nil); st != 200 {
		t.Fatalf("filter within the limit: %d %s", st, body)
	}
}
