package scimtest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// TestLeanClientReadsEveryAnswerShape checks the benchmark client against
// net/http's server: fixed-length, chunked and empty answers, one after
// another on one connection, with the request as the server saw it.
func TestLeanClientReadsEveryAnswerShape(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		seen := r.Method + " " + r.URL.RequestURI() + " " + r.Header.Get("Authorization") + " " + string(body)
		switch {
		case strings.HasSuffix(r.URL.Path, "/chunked"):
			io.WriteString(w, "part one, ")
			w.(http.Flusher).Flush()
			io.WriteString(w, seen)
		case strings.HasSuffix(r.URL.Path, "/empty"):
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("Content-Length", strconv.Itoa(len(seen)))
			w.WriteHeader(http.StatusCreated)
			io.WriteString(w, seen)
		}
	}))
	defer srv.Close()
	c, err := DialLean(srv.URL+"/scim/v2/acme", "secret", srv.Client().Transport.(*http.Transport).TLSClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		method, path, body string
		status             int
		want               string
	}{
		{"POST", "/Users", `{"userName":"a"}`, 201, `POST /scim/v2/acme/Users Bearer secret {"userName":"a"}`},
		{"GET", "/Users/chunked?filter=x", "", 200, "part one, GET /scim/v2/acme/Users/chunked?filter=x Bearer secret "},
		{"PATCH", "/Users/empty", `{}`, 204, ""},
		{"GET", "/Users", "", 201, "GET /scim/v2/acme/Users Bearer secret "},
	} {
		var body []byte
		if tc.body != "" {
			body = []byte(tc.body)
		}
		st, got, err := c.Do(tc.method, tc.path, body)
		if err != nil || st != tc.status || string(got) != tc.want {
			t.Errorf("%s %s = %d %q %v; want %d %q", tc.method, tc.path, st, got, err, tc.status, tc.want)
		}
	}
}
