// Package scim serves the SCIM 2.0 API (RFC 7643, RFC 7644) that Microsoft
// Entra ID provisions into, one base URL per tenant:
// https://HOST:PORT/scim/v2/{tenant}. It accepts the request shapes Entra
// really sends, which depart from the RFC in documented ways.
package scim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/scimldap/scimldap/mapping"
	"github.com/scimldap/scimldap/store"
)

// Config is the SCIM server's part of appliance.toml.
type Config struct {
	// MaxBodyBytes bounds a request body; larger bodies get 413.
	MaxBodyBytes int64
	// MaxResults caps count on list requests (and is advertised as
	// filter.maxResults).
	MaxResults int
	// DefaultCount is the page size when a list request gives no count.
	DefaultCount int
	// MaxInFlight bounds requests served at once; past it a request waits
	// up to QueueWait for a slot, then gets 429 with Retry-After.
	MaxInFlight int
	QueueWait   time.Duration
	// RequestTimeout bounds the work done for one request.
	RequestTimeout time.Duration
	// PublicURL is the externally visible scheme://host[:port] used in
	// meta.location; empty means derive it from the request.
	PublicURL string
	// Tenants holds per-tenant options, keyed by lower-case tenant name.
	Tenants map[string]TenantOptions
}

// TenantOptions are per-tenant SCIM rules.
type TenantOptions struct {
	// E164 requires every phone number to be in E.164 form (+ and 2-15 digits).
	E164 bool
}

// DefaultConfig returns the defaults documented in appliance.toml.
func DefaultConfig() Config {
	return Config{
		MaxBodyBytes:   1 << 20,
		MaxResults:     1000,
		DefaultCount:   100,
		MaxInFlight:    512,
		QueueWait:      2 * time.Second,
		RequestTimeout: 30 * time.Second,
	}
}

// Handler is the SCIM http.Handler.
type Handler struct {
	store *store.Store
	cfg   Config
	log   *slog.Logger
	mux   *http.ServeMux
	slots chan struct{}
}

// NewHandler returns the SCIM handler over st.
func NewHandler(st *store.Store, cfg Config, log *slog.Logger) *Handler {
	h := &Handler{store: st, cfg: cfg, log: log.With("component", "scim"), mux: http.NewServeMux(),
		slots: make(chan struct{}, max(cfg.MaxInFlight, 1))}
	h.routes()
	return h
}

type tenantHandler func(w http.ResponseWriter, r *http.Request, t *tenantCtx) error

// tenantCtx is what an authenticated request knows about its tenant.
type tenantCtx struct {
	name  string
	links mapping.Links
	opts  TenantOptions
}

func (h *Handler) routes() {
	h.mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	// All routes in one table. A path names its methods; others get 405.
	routes := []struct {
		pattern string
		methods map[string]tenantHandler
	}{
		{"/Users", map[string]tenantHandler{"GET": h.listUsers, "POST": h.createUser}},
		{"/Users/{id}", map[string]tenantHandler{"GET": h.getUser, "PUT": h.replaceUser, "PATCH": h.patchUser, "DELETE": h.deleteUser}},
		{"/Groups", map[string]tenantHandler{"GET": h.listGroups, "POST": h.createGroup}},
		{"/Groups/{id}", map[string]tenantHandler{"GET": h.getGroup, "PUT": h.replaceGroup, "PATCH": h.patchGroup, "DELETE": h.deleteGroup}},
		{"/ServiceProviderConfig", map[string]tenantHandler{"GET": h.serviceProviderConfig}},
		{"/serviceConfiguration", map[string]tenantHandler{"GET": h.serviceProviderConfig}},
		{"/Schemas", map[string]tenantHandler{"GET": h.schemas}},
		{"/Schemas/{id}", map[string]tenantHandler{"GET": h.schema}},
		{"/ResourceTypes", map[string]tenantHandler{"GET": h.resourceTypes}},
		{"/ResourceTypes/{id}", map[string]tenantHandler{"GET": h.resourceType}},
		{"/health", map[string]tenantHandler{"GET": h.health}},
	}
	for _, rt := range routes {
		hf := h.tenantRoute(rt.methods)
		h.mux.HandleFunc("/scim/v2/{tenant}"+rt.pattern, hf)
		h.mux.HandleFunc("/scim/v2/{tenant}"+rt.pattern+"/{$}", hf) // Entra sends /Users/?filter=
	}
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h.writeError(w, r, errorf(http.StatusNotFound, "", "no SCIM endpoint at %s; tenant base URLs look like /scim/v2/{tenant}", r.URL.Path))
	})
}

// ServeHTTP guards every request: panics become a logged 500 for that
// request only, and past MaxInFlight requests wait briefly, then get 429.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			h.log.ErrorContext(r.Context(), "panic in handler", "method", r.Method, "path", r.URL.Path, "panic", p, "stack", string(debug.Stack()))
			h.writeError(w, r, errorf(http.StatusInternalServerError, "", "internal error; the appliance log has the details"))
		}
	}()
	select {
	case h.slots <- struct{}{}:
	default:
		t := time.NewTimer(h.cfg.QueueWait)
		select {
		case h.slots <- struct{}{}:
			t.Stop()
		case <-t.C:
			w.Header().Set("Retry-After", "1")
			h.writeError(w, r, errorf(http.StatusTooManyRequests, "", "the appliance is at capacity; retry after 1 second"))
			return
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	defer func() { <-h.slots }()
	canonicalEndpoint(r)
	h.mux.ServeHTTP(w, r)
}

// endpoints maps lower-case endpoint names to their canonical spelling:
// clients (Microsoft's own test collection among them) write /users.
var endpoints = map[string]string{"users": "Users", "groups": "Groups", "schemas": "Schemas", "resourcetypes": "ResourceTypes",
	"serviceproviderconfig": "ServiceProviderConfig", "serviceconfiguration": "serviceConfiguration", "health": "health"}

// canonicalEndpoint rewrites /scim/v2/{tenant}/{endpoint}… so that the
// endpoint name matches in any case.
func canonicalEndpoint(r *http.Request) {
	parts := strings.SplitN(r.URL.Path, "/", 6) // "", scim, v2, tenant, endpoint, rest
	if len(parts) < 5 || parts[1] != "scim" || parts[2] != "v2" {
		return
	}
	if c, ok := endpoints[strings.ToLower(parts[4])]; ok && c != parts[4] {
		parts[4] = c
		r.URL.Path = strings.Join(parts, "/")
		r.URL.RawPath = ""
	}
}

func (h *Handler) tenantRoute(methods map[string]tenantHandler) http.HandlerFunc {
	allowed := make([]string, 0, len(methods))
	for m := range methods {
		allowed = append(allowed, m)
	}
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), h.cfg.RequestTimeout)
		defer cancel()
		r = r.WithContext(ctx)
		t, err := h.authenticate(r)
		if err != nil {
			h.writeError(w, r, err)
			return
		}
		fn, ok := methods[r.Method]
		if !ok {
			w.Header().Set("Allow", strings.Join(allowed, ", "))
			h.writeError(w, r, errorf(http.StatusMethodNotAllowed, "", "%s is not supported on %s", r.Method, r.URL.Path))
			return
		}
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes)
		}
		if err := fn(w, r, t); err != nil {
			h.writeError(w, r, err)
		}
	}
}

var errUnauthorized = errorf(http.StatusUnauthorized, "", "missing or invalid bearer token for this tenant; use the Secret Token printed when the tenant was created or its token was rotated")

// authenticate checks the bearer token against the tenant named in the
// path. An unknown tenant and a wrong token look alike to the client.
func (h *Handler) authenticate(r *http.Request) (*tenantCtx, error) {
	name := strings.ToLower(r.PathValue("tenant"))
	auth := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return nil, errUnauthorized
	}
	t, err := h.store.Tenant(r.Context(), name)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			t.Token.Verify(token) // same work as a real check
			return nil, errUnauthorized
		}
		return nil, err
	}
	if !t.Token.Verify(strings.TrimSpace(token)) {
		return nil, errUnauthorized
	}
	base := h.cfg.PublicURL
	if base == "" {
		scheme := "https"
		if r.TLS == nil {
			scheme = "http"
		}
		base = scheme + "://" + r.Host
	}
	return &tenantCtx{name: t.Name, links: mapping.Links{Base: strings.TrimRight(base, "/") + "/scim/v2/" + t.Name}, opts: h.cfg.Tenants[t.Name]}, nil
}

func (h *Handler) health(w http.ResponseWriter, r *http.Request, t *tenantCtx) error {
	n, err := h.store.CountUsers(r.Context(), t.name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "tenant": t.name, "users": n})
	return nil
}

// readResource decodes a JSON object body.
func readResource(r *http.Request) (map[string]any, error) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, errorf(http.StatusBadRequest, "invalidSyntax", "the body is not a JSON object: %v", err)
	}
	if doc == nil {
		return nil, errorf(http.StatusBadRequest, "invalidSyntax", "the body must be a JSON object")
	}
	return doc, nil
}

// ifMatch returns the version required by an If-Match header, or 0.
func ifMatch(r *http.Request) (uint64, error) {
	v := strings.TrimSpace(r.Header.Get("If-Match"))
	if v == "" || v == "*" {
		return 0, nil
	}
	v = strings.TrimPrefix(v, "W/")
	n, err := strconv.ParseUint(strings.Trim(v, `"`), 10, 64)
	if err != nil || n == 0 {
		return 0, errorf(http.StatusPreconditionFailed, "", "If-Match %q is not an ETag this appliance issued", r.Header.Get("If-Match"))
	}
	return n, nil
}

var e164 = regexp.MustCompile(`^\+[1-9][0-9]{1,14}$`)

// checkUser applies the checks beyond the schema: custom-field expressions
// in externalId must be well formed, and phone numbers in E.164 form where
// the tenant requires it.
func checkUser(u *store.User, opts TenantOptions) error {
	if _, _, err := mapping.ParseCustomFields(u.ExternalID); err != nil {
		return errorf(http.StatusBadRequest, "invalidValue", "externalId: %v", err)
	}
	if !opts.E164 {
		return nil
	}
	for i, p := range u.PhoneNumbers {
		if !e164.MatchString(p.Value) {
			return errorf(http.StatusBadRequest, "invalidValue",
				"phoneNumbers[%d] (type %q) value %q is not in E.164 form (+ then 2 to 15 digits, no spaces), which this tenant requires", i, p.Type, p.Value)
		}
	}
	return nil
}

func wantsBody(r *http.Request) bool {
	q := r.URL.Query()
	return q.Has("attributes") || q.Has("excludedAttributes")
}
