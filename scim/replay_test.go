package scim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/scimldap/scimldap/store"
)

// A scenario is a sequence of requests with the answers they must get. The
// files under testdata/entra replay the request shapes Microsoft Entra ID
// sends (see the notes in each file) over real HTTPS.
type scenario struct {
	Note  string `json:"note"`
	Rules *struct {
		UniqueEmail bool `json:"uniqueEmail"`
		UniquePhone bool `json:"uniquePhone"`
	} `json:"rules"`
	E164  bool   `json:"e164"`
	Steps []step `json:"steps"`
}

type step struct {
	Name    string            `json:"name"`
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	Headers map[string]string `json:"headers"`
	Body    json.RawMessage   `json:"body"`
	RawBody string            `json:"rawBody"`
	Status  int               `json:"status"`
	Expect  json.RawMessage   `json:"expect"`
	Absent  []string          `json:"absent"` // top-level keys that must not be in the answer
	Save    map[string]string `json:"save"`   // variable → top-level key of the answer
	Header  map[string]string `json:"header"` // response headers that must be present (value regexp)
}

type testEnv struct {
	st     *store.Store
	srv    *httptest.Server
	token  string
	tenant string
}

func newTestEnv(t testing.TB, cfg Config) *testEnv {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	plain, sec := store.NewSecret()
	if _, err := st.CreateTenant(context.Background(), "acme", sec); err != nil {
		t.Fatal(err)
	}
	h := NewHandler(st, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	return &testEnv{st: st, srv: srv, token: plain, tenant: "acme"}
}

func (e *testEnv) do(t testing.TB, method, path string, body []byte, hdr map[string]string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+"/scim/v2/"+e.tenant+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+e.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/scim+json; charset=utf-8")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, out
}

var varRE = regexp.MustCompile(`\{\{(\w+)\}\}`)

func subst(s string, vars map[string]string) string {
	return varRE.ReplaceAllStringFunc(s, func(m string) string {
		if v, ok := vars[m[2:len(m)-2]]; ok {
			return v
		}
		return m
	})
}

func TestEntraReplay(t *testing.T) {
	files, _ := filepath.Glob("testdata/entra/*.json")
	if len(files) == 0 {
		t.Fatal("no scenarios in testdata/entra")
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".json"), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var sc scenario
			if err := json.Unmarshal(data, &sc); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			cfg := DefaultConfig()
			if sc.E164 {
				cfg.Tenants = map[string]TenantOptions{"acme": {E164: true}}
			}
			env := newTestEnv(t, cfg)
			if sc.Rules != nil {
				env.st.SetRules("acme", store.Rules{UniqueEmail: sc.Rules.UniqueEmail, UniquePhone: sc.Rules.UniquePhone})
			}
			vars := map[string]string{}
			for i, s := range sc.Steps {
				var body []byte
				if len(s.Body) > 0 {
					body = []byte(subst(string(s.Body), vars))
				} else if s.RawBody != "" {
					body = []byte(s.RawBody)
				}
				path := strings.ReplaceAll(subst(s.Path, vars), " ", "%20") // as HTTP clients send it
				status, hdr, out := env.do(t, s.Method, path, body, s.Headers)
				label := fmt.Sprintf("step %d %q (%s %s)", i, s.Name, s.Method, path)
				if status != s.Status {
					t.Fatalf("%s: status %d; want %d; body %s", label, status, s.Status, out)
				}
				for k, re := range s.Header {
					if !regexp.MustCompile(re).MatchString(hdr.Get(k)) {
						t.Errorf("%s: header %s = %q; want match of %q", label, k, hdr.Get(k), re)
					}
				}
				if len(out) == 0 {
					if len(s.Expect) > 0 {
						t.Fatalf("%s: empty body; want %s", label, s.Expect)
					}
					continue
				}
				if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "application/scim+json") {
					t.Errorf("%s: Content-Type %q; want application/scim+json", label, ct)
				}
				var got any
				if err := json.Unmarshal(out, &got); err != nil {
					t.Fatalf("%s: answer is not JSON: %s", label, out)
				}
				if len(s.Expect) > 0 {
					var want any
					if err := json.Unmarshal([]byte(subst(string(s.Expect), vars)), &want); err != nil {
						t.Fatalf("%s: bad expect: %v", label, err)
					}
					if msg := contains(got, want, "$"); msg != "" {
						t.Fatalf("%s: %s\nanswer: %s", label, msg, out)
					}
				}
				obj, _ := got.(map[string]any)
				for _, k := range s.Absent {
					if _, ok := obj[k]; ok {
						t.Fatalf("%s: answer has %q; want it absent\nanswer: %s", label, k, out)
					}
				}
				for v, k := range s.Save {
					val, ok := obj[k].(string)
					if !ok {
						t.Fatalf("%s: cannot save %q from answer %s", label, k, out)
					}
					vars[v] = val
				}
			}
		})
	}
}

// contains reports "" if got contains want: objects by subset of keys,
// arrays by every wanted element matching some element, scalars by
// equality; the special string "*" matches anything present.
func contains(got, want any, path string) string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return fmt.Sprintf("%s: got %v; want an object", path, got)
		}
		for k, wv := range w {
			gv, ok := g[k]
			if !ok {
				return fmt.Sprintf("%s.%s: missing", path, k)
			}
			if msg := contains(gv, wv, path+"."+k); msg != "" {
				return msg
			}
		}
	case []any:
		g, ok := got.([]any)
		if !ok {
			return fmt.Sprintf("%s: got %v; want an array", path, got)
		}
		for i, wv := range w {
			found := false
			for _, gv := range g {
				if contains(gv, wv, "") == "" {
					found = true
					break
				}
			}
			if !found {
				return fmt.Sprintf("%s[%d]: no element matches %v in %v", path, i, wv, g)
			}
		}
	default:
		if w == "*" && got != nil {
			return ""
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Sprintf("%s: got %v; want %v", path, got, want)
		}
	}
	return ""
}
