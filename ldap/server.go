// Package ldap serves the tenants' directories read-only over LDAP (with
// StartTLS) and LDAPS, for UC suites, PBXs, phones and other applications
// that cannot speak SCIM.
//
// A front end of our own (guard.go) owns the client sockets: it terminates
// TLS, enforces idle timeouts, connection and message-size caps, checks
// every message's BER structure, serves searches (search_serve.go) and
// answers the operations github.com/jimlambrt/gldap v0.1.14 mishandles
// (Abandon, Compare, ModifyDN, SASL binds, extended operations), so that no
// client input can drop another client's session or the process. Simple
// binds are handled by gldap, reached over an internal loopback connection
// per client. Searches are not: gldap's encoder and the extra hop cost more
// per search than a whole slapd search (profiled), and they are the hot
// path.
package ldap

import (
	"context"
	stdtls "crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/hashicorp/go-hclog"
	"github.com/jimlambrt/gldap"

	"github.com/scimldap/scimldap/mapping"
	"github.com/scimldap/scimldap/store"
)

// Config is the LDAP server's part of appliance.toml.
type Config struct {
	Suffix          string
	SizeLimit       int           // server-side cap on entries per non-paged search; 0 = none
	TimeLimit       time.Duration // server-side cap on one search
	IdleTimeout     time.Duration // a connection idle this long is closed
	MaxConnections  int
	MaxMessageBytes int
	PageCookieTTL   time.Duration
	// Tenant returns the LDAP view options of a tenant.
	Tenant func(name string) mapping.Options
	// Version is reported as vendorVersion in the root DSE.
	Version string
	// ViewDir keeps each tenant's directory view, saved at shutdown and
	// once writes have paused for ViewSaveQuiet, so the next start need
	// not rebuild it from the store; "" keeps none.
	ViewDir       string
	ViewSaveQuiet time.Duration // 0 means one minute
}

// DefaultConfig returns the defaults documented in appliance.toml.
func DefaultConfig() Config {
	return Config{
		Suffix:          "dc=scimldap",
		TimeLimit:       60 * time.Second,
		IdleTimeout:     15 * time.Minute,
		MaxConnections:  4096,
		MaxMessageBytes: 1 << 20,
		PageCookieTTL:   10 * time.Minute,
		Version:         "dev",
	}
}

// ValidateSuffix checks that s is a usable directory suffix DN.
func ValidateSuffix(s string) error {
	rdns, err := parseDN(s)
	if err != nil {
		return fmt.Errorf("%q is not a DN: %v", s, err)
	}
	if len(rdns) == 0 {
		return fmt.Errorf("must not be empty (e.g. \"dc=scimldap\" or \"dc=example,dc=com\")")
	}
	return nil
}

// Server is the LDAP server of the appliance.
type Server struct {
	cfg    Config
	st     *store.Store
	dir    *directory
	log    *slog.Logger
	tlsCfg *stdtls.Config
	suffix string // normalised

	backend     *gldap.Server
	backendAddr string
	backendErr  chan error

	slots    chan struct{}
	throttle *throttle

	// base is cancelled by Shutdown: searches and view loads derive from it.
	base   context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners []net.Listener
	conns     map[*guardConn]struct{}
	byToken   map[string]*connInfo
	byBackend map[int]*connInfo
	closing   atomic.Bool
	wg        sync.WaitGroup
}

// New builds the server. tlsCfg is used for LDAPS and StartTLS; it may be
// nil, and then neither is offered.
func New(st *store.Store, cfg Config, tlsCfg *stdtls.Config, log *slog.Logger) (*Server, error) {
	log = log.With("component", "ldap")
	if cfg.Tenant == nil {
		return nil, errors.New("ldap: Config.Tenant is required")
	}
	suffix, err := normDN(cfg.Suffix)
	if err != nil || suffix == "" {
		return nil, fmt.Errorf("ldap: suffix %q: not a DN", cfg.Suffix)
	}
	// gldap decodes with go-asn1-ber, whose size cap is a package global;
	// the guard enforces the real limit, this is a second fence.
	ber.MaxPacketLengthBytes = int64(cfg.MaxMessageBytes) + 64
	s := &Server{
		cfg: cfg, st: st, log: log, tlsCfg: tlsCfg, suffix: suffix,
		slots:      make(chan struct{}, cfg.MaxConnections),
		throttle:   newThrottle(),
		conns:      map[*guardConn]struct{}{},
		byToken:    map[string]*connInfo{},
		byBackend:  map[int]*connInfo{},
		backendErr: make(chan error, 1),
	}
	s.base, s.cancel = context.WithCancel(context.Background())
	s.dir = newDirectory(s.base, st, cfg.ViewDir, cfg.Tenant, log)
	if cfg.ViewDir != "" {
		quiet := cfg.ViewSaveQuiet
		if quiet <= 0 {
			quiet = time.Minute
		}
		go s.dir.saveWhenQuiet(s.base, quiet)
	}
	if err := s.startBackend(); err != nil {
		return nil, err
	}
	return s, nil
}

// startBackend runs gldap on a loopback port that only the guard uses.
func (s *Server) startBackend() error {
	hl := hclog.New(&hclog.LoggerOptions{Name: "gldap", Level: hclog.Error, Output: slogWriter{s.log}, JSONFormat: true})
	srv, err := gldap.NewServer(gldap.WithLogger(hl), gldap.WithOnClose(s.backendClosed))
	if err != nil {
		return fmt.Errorf("ldap: %w", err)
	}
	mux, err := gldap.NewMux()
	if err != nil {
		return fmt.Errorf("ldap: %w", err)
	}
	mux.Bind(s.guarded(s.handleBind))
	mux.Unbind(func(*gldap.ResponseWriter, *gldap.Request) {})
	mux.DefaultRoute(s.guarded(s.handleDefault))
	srv.Router(mux)
	// gldap listens itself and does not report its port: find a free one.
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("ldap: reserve an internal port: %w", err)
	}
	s.backendAddr = probe.Addr().String()
	probe.Close()
	s.backend = srv
	go func() { s.backendErr <- srv.Run(s.backendAddr) }()
	deadline := time.Now().Add(5 * time.Second)
	for !srv.Ready() {
		if time.Now().After(deadline) {
			return errors.New("ldap: internal server did not start")
		}
		select {
		case err := <-s.backendErr:
			return fmt.Errorf("ldap: internal server: %w", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// slogWriter forwards gldap's hclog output (errors only) to slog.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.log.Warn("gldap", "msg", strings.TrimSpace(string(p)))
	return len(p), nil
}

// Listen binds addr for plain LDAP (with StartTLS) or, with ldaps, LDAPS.
// Call Serve afterwards; binding first makes "address in use" a start-up
// error.
func (s *Server) Listen(addr string, ldaps bool) (net.Listener, error) {
	if ldaps && s.tlsCfg == nil {
		return nil, errors.New("ldap: LDAPS needs a TLS configuration")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ldap: listen on %s: %w", addr, err)
	}
	s.mu.Lock()
	s.listeners = append(s.listeners, ln)
	s.mu.Unlock()
	return ln, nil
}

// Serve accepts connections on ln until Shutdown. It returns nil after
// Shutdown and an error if accepting fails otherwise.
func (s *Server) Serve(ln net.Listener, ldaps bool) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.closing.Load() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("ldap: accept on %s: %w", ln.Addr(), err)
		}
		select {
		case s.slots <- struct{}{}:
		default:
			// Over the connection cap: say why, then hang up.
			c.SetWriteDeadline(time.Now().Add(time.Second))
			c.Write(noticeOfDisconnection(51, "the directory has reached its connection limit; retry later"))
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer func() { <-s.slots; s.wg.Done() }()
			s.serveConn(c, ldaps)
		}()
	}
}

// Preload loads every tenant's directory view in the background.
func (s *Server) Preload(ctx context.Context) { go s.dir.preload(ctx) }

// Shutdown stops accepting, closes every client connection (finishing the
// response being written), stops the internal server and returns when all
// is done or ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closing.Store(true)
	s.cancel() // running searches and view loads stop
	s.mu.Lock()
	for _, ln := range s.listeners {
		ln.Close()
	}
	for gc := range s.conns {
		gc.close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		s.backend.Stop() // returns once its connections, closed above, are gone
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("ldap: shutdown: %w", ctx.Err())
	}
	if err := s.dir.saveSnapshots(ctx); err != nil {
		return fmt.Errorf("ldap: shutdown: %w", err)
	}
	return nil
}

// identity is what a connection is bound as.
type identity struct {
	tenant  string
	account string
	dn      string
}

// connInfo is the per-client state shared by the guard and the handlers.
type connInfo struct {
	remote string // client IP
	token  string

	mu       sync.Mutex
	tls      bool
	id       *identity
	pages    map[string]*pageState
	inflight map[int64]context.CancelFunc
}

func (ci *connInfo) identity() *identity {
	ci.mu.Lock()
	defer ci.mu.Unlock()
	return ci.id
}

func (ci *connInfo) setIdentity(id *identity) {
	ci.mu.Lock()
	ci.id = id
	ci.pages = nil // a new bind ends every paged search
	ci.mu.Unlock()
}

// abandon cancels the operation msgID if it is running.
func (ci *connInfo) abandon(msgID int64) {
	ci.mu.Lock()
	cancel := ci.inflight[msgID]
	ci.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

func (ci *connInfo) track(msgID int64, cancel context.CancelFunc) func() {
	ci.mu.Lock()
	if ci.inflight == nil {
		ci.inflight = map[int64]context.CancelFunc{}
	}
	ci.inflight[msgID] = cancel
	ci.mu.Unlock()
	return func() {
		ci.mu.Lock()
		delete(ci.inflight, msgID)
		ci.mu.Unlock()
		cancel()
	}
}

func (s *Server) backendClosed(connID int) {
	s.mu.Lock()
	delete(s.byBackend, connID)
	s.mu.Unlock()
}

func (s *Server) connFor(r *gldap.Request) *connInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byBackend[r.ConnectionID()]
}
