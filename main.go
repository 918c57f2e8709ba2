// Command scimldap is a directory bridge: Microsoft Entra ID provisions
// users and groups into it over SCIM 2.0, and on-premises applications read
// them over LDAP and LDAPS. One process, one data directory.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/scimldap/scimldap/ldap"
	"github.com/scimldap/scimldap/scim"
	"github.com/scimldap/scimldap/store"
	apptls "github.com/scimldap/scimldap/tls"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "scimldap:", err)
		os.Exit(1)
	}
}

const usage = `scimldap — SCIM 2.0 in from Entra ID, LDAP/LDAPS out to applications

Usage:
  scimldap [serve] [flags]              run the appliance
  scimldap tenant add NAME [-json]      create a tenant; prints its SCIM URL, token and LDAP credentials once
  scimldap tenant list [-json]
  scimldap tenant remove NAME           delete a tenant and everything it holds
  scimldap token rotate NAME [-json]    new SCIM Secret Token; the old one stops working at once
  scimldap account add TENANT NAME [-json]      new LDAP service account
  scimldap account passwd TENANT NAME [-json]   new password for a service account
  scimldap account remove TENANT NAME
  scimldap backup FILE                  consistent copy of the database, also while serving
  scimldap version

Flags (all commands): -config FILE, -data DIR
Flags (serve): -scim-addr, -ldap-addr, -ldaps-addr
Without -config the embedded defaults apply (see appliance.toml).
`

// run is the whole program; main only adds signals and the exit code, so
// tests can call it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return cmdServe(ctx, args, stdout, stderr)
	case "tenant", "token", "account":
		if len(args) == 0 || strings.HasPrefix(args[0], "-") {
			return fmt.Errorf("%s needs a subcommand; see scimldap help", cmd)
		}
		return cmdAdmin(ctx, cmd+" "+args[0], args[1:], stdout)
	case "backup":
		return cmdAdmin(ctx, "backup", args, stdout)
	case "version":
		fmt.Fprintln(stdout, "scimldap", version)
		return nil
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return fmt.Errorf("unknown command %q; see scimldap help", cmd)
}

type commonFlags struct {
	config, data string
}

func (c *commonFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.config, "config", "", "appliance.toml to read (default: embedded defaults)")
	fs.StringVar(&c.data, "data", "", "data directory (overrides data_dir)")
}

func (c *commonFlags) load() (Config, error) {
	cfg, err := loadConfig(c.config)
	if err != nil {
		return cfg, err
	}
	if c.data != "" {
		cfg.DataDir = c.data
	}
	return cfg, nil
}

// parseInterleaved parses flags that may come before or after positional
// arguments (scimldap tenant add acme -json).
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func cmdAdmin(ctx context.Context, op string, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet(op, flag.ContinueOnError)
	var cf commonFlags
	cf.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	need := map[string]int{"tenant add": 1, "tenant list": 0, "tenant remove": 1, "token rotate": 1, "account add": 2, "account passwd": 2, "account remove": 2, "backup": 1}
	n, known := need[op]
	if !known {
		return fmt.Errorf("unknown command %q; see scimldap help", op)
	}
	if len(pos) != n {
		return fmt.Errorf("%s takes %d argument(s), got %d; see scimldap help", op, n, len(pos))
	}
	cfg, err := cf.load()
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	req := adminRequest{Op: op}
	switch {
	case op == "backup":
		if req.Path, err = filepath.Abs(pos[0]); err != nil {
			return err
		}
	case n >= 1:
		req.Tenant = pos[0]
		if n == 2 {
			req.Name = pos[1]
		}
	}
	var out json.RawMessage
	ok, err := callAdmin(ctx, cfg.DataDir, req, &out)
	if !ok {
		// No server running: open the store ourselves.
		st, oerr := openStore(cfg.DataDir)
		if oerr != nil {
			return oerr
		}
		defer st.Close()
		a := &admin{st: st, cfg: &cfg}
		var res any
		res, err = a.do(ctx, req)
		if err == nil {
			out, _ = json.Marshal(res)
		}
	}
	if err != nil {
		return err
	}
	return printResult(stdout, op, out, *asJSON)
}

func openStore(dataDir string) (*store.Store, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir %s: %w", dataDir, err)
	}
	return store.Open(filepath.Join(dataDir, "scimldap.db"), store.Options{})
}

func printResult(w io.Writer, op string, raw json.RawMessage, asJSON bool) error {
	if asJSON {
		_, err := fmt.Fprintln(w, string(raw))
		return err
	}
	switch op {
	case "tenant add":
		var c tenantCreds
		json.Unmarshal(raw, &c)
		printCreds(w, c)
	case "tenant list":
		var ts []tenantInfo
		json.Unmarshal(raw, &ts)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TENANT\tUSERS\tACCOUNTS\tSCIM URL\tLDAP BASE")
		for _, t := range ts {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", t.Tenant, t.Users, strings.Join(t.Accounts, ","), t.SCIMURL, t.BaseDN)
		}
		tw.Flush()
	case "token rotate":
		var m map[string]string
		json.Unmarshal(raw, &m)
		fmt.Fprintf(w, "New Secret Token (shown once; the old one no longer works):\n  %s\n", m["token"])
	case "account add", "account passwd":
		var c accountCreds
		json.Unmarshal(raw, &c)
		fmt.Fprintf(w, "LDAP bind DN:   %s\nLDAP password:  %s   (shown once)\n", c.BindDN, c.Password)
	case "backup":
		var m map[string]any
		json.Unmarshal(raw, &m)
		fmt.Fprintf(w, "backup written to %v (%v bytes)\n", m["path"], m["bytes"])
	default:
		fmt.Fprintln(w, "done")
	}
	return nil
}

func printCreds(w io.Writer, c tenantCreds) {
	fmt.Fprintf(w, `Tenant %q — these secrets are shown once; store them now.

  Entra ID  (Enterprise app → Provisioning → Automatic → Admin Credentials)
    Tenant URL:     %s
    Secret Token:   %s

  LDAP applications
    Base DN:        %s
    Users:          ou=people,%s
    Bind DN:        %s
    Password:       %s

`, c.Tenant, c.SCIMURL, c.Token, c.BaseDN, c.BaseDN, c.BindDN, c.Password)
}

func newLogger(cfg *Config, w io.Writer) *slog.Logger {
	var lvl slog.Level
	lvl.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var cf commonFlags
	cf.register(fs)
	scimAddr := fs.String("scim-addr", "", "SCIM HTTPS listen address (overrides scim.addr)")
	ldapAddr := fs.String("ldap-addr", "", "plain LDAP listen address (overrides ldap.addr; \"\" in the file disables it)")
	ldapsAddr := fs.String("ldaps-addr", "", "LDAPS listen address (overrides ldap.ldaps_addr)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := cf.load()
	if err != nil {
		return err
	}
	if *scimAddr != "" {
		cfg.SCIM.Addr = *scimAddr
	}
	if *ldapAddr != "" {
		cfg.LDAP.Addr = *ldapAddr
	}
	if *ldapsAddr != "" {
		cfg.LDAP.LDAPSAddr = *ldapsAddr
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	a, err := start(ctx, &cfg, stdout, stderr)
	if err != nil {
		return err
	}
	return a.wait(ctx)
}

// app is a running appliance.
type app struct {
	cfg        *Config
	log        *slog.Logger
	st         *store.Store
	https      *http.Server
	ldap       *ldap.Server
	stopAdmin  func()
	errc       chan error
	scimAddr   net.Addr
	ldapAddr   net.Addr
	ldapsAddr  net.Addr
	cancelBack context.CancelFunc
	stopGC     func()
}

// start brings the appliance up: store, first-start tenant, TLS, SCIM,
// LDAP, admin socket. Listeners are bound before it returns, so a busy
// port is a start-up error.
func start(ctx context.Context, cfg *Config, stdout, stderr io.Writer) (_ *app, err error) {
	log := newLogger(cfg, stderr)
	a := &app{cfg: cfg, log: log, errc: make(chan error, 8), stopGC: tuneGCEachCycle(cfg.GCPercent)}
	st, err := openStore(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	a.st = st
	if n := st.Replayed(); n > 0 {
		log.Info("store recovered after an unclean stop", "replayed_transactions", n)
	}
	defer func() {
		if err != nil {
			a.shutdown()
		}
	}()
	for name := range cfg.Tenants {
		st.SetRules(name, cfg.rules(name))
	}
	adm := &admin{st: st, cfg: cfg}
	if ts, err := st.Tenants(ctx); err != nil {
		return nil, err
	} else if len(ts) == 0 {
		creds, err := adm.tenantAdd(ctx, "default")
		if err != nil {
			return nil, fmt.Errorf("create the first tenant: %w", err)
		}
		fmt.Fprintln(stdout, "First start: created tenant \"default\".")
		printCreds(stdout, creds)
	}

	certs, err := apptls.New(cfg.tlsConfig(), cfg.DataDir, log)
	if err != nil {
		return nil, err
	}
	backCtx, cancel := context.WithCancel(context.Background())
	a.cancelBack = cancel
	go func() {
		if err := certs.Run(backCtx); err != nil {
			a.errc <- err
		}
	}()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-backCtx.Done():
				return
			case <-hup:
				if err := certs.Reload(); err != nil {
					log.Error("SIGHUP: certificate reload failed; keeping the previous certificate", "err", err)
				} else {
					log.Info("SIGHUP: configuration of certificates reloaded")
				}
			}
		}
	}()

	// SCIM over HTTPS.
	handler := scim.NewHandler(st, cfg.scimConfig(), log)
	a.https = &http.Server{
		Handler:   handler,
		TLSConfig: certs.Config("h2", "http/1.1"),
		// Entra sends small JSON bodies; slow or stalled clients must not
		// hold connections: headers within 10s, a body within 30s.
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		// A list response at max_results is written well within a minute.
		WriteTimeout: 60 * time.Second,
		// Entra reuses connections between requests of a cycle.
		IdleTimeout: 120 * time.Second,
		ErrorLog:    slog.NewLogLogger(log.With("component", "http").Handler(), slog.LevelWarn),
	}
	ln, err := net.Listen("tcp", cfg.SCIM.Addr)
	if err != nil {
		return nil, fmt.Errorf("scim.addr %s: %w", cfg.SCIM.Addr, err)
	}
	a.scimAddr = ln.Addr()
	go func() {
		if err := a.https.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.errc <- fmt.Errorf("scim: %w", err)
		}
	}()

	// LDAP and LDAPS.
	lc := cfg.ldapConfig()
	lc.Version = version
	lc.ViewDir = filepath.Join(cfg.DataDir, "ldap-views")
	a.ldap, err = ldap.New(st, lc, certs.Config(), log)
	if err != nil {
		return nil, err
	}
	for _, l := range []struct {
		addr  string
		ldaps bool
		out   *net.Addr
		key   string
	}{{cfg.LDAP.Addr, false, &a.ldapAddr, "ldap.addr"}, {cfg.LDAP.LDAPSAddr, true, &a.ldapsAddr, "ldap.ldaps_addr"}} {
		if l.addr == "" {
			continue
		}
		ln, err := a.ldap.Listen(l.addr, l.ldaps)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", l.key, err)
		}
		*l.out = ln.Addr()
		go func(ldaps bool) {
			if err := a.ldap.Serve(ln, ldaps); err != nil {
				a.errc <- err
			}
		}(l.ldaps)
	}
	a.ldap.Preload(backCtx)

	if a.stopAdmin, err = serveAdmin(backCtx, adm, adminSocket(cfg.DataDir), log); err != nil {
		return nil, err
	}
	log.Info("scimldap started", "version", version, "scim", a.scimAddr.String(), "ldap", addrString(a.ldapAddr), "ldaps", addrString(a.ldapsAddr), "data_dir", cfg.DataDir)
	return a, nil
}

func addrString(a net.Addr) string {
	if a == nil {
		return "off"
	}
	return a.String()
}

// wait serves until ctx ends or a server fails, then shuts down.
func (a *app) wait(ctx context.Context) error {
	var err error
	select {
	case <-ctx.Done():
		a.log.Info("shutting down")
	case err = <-a.errc:
		a.log.Error("server failed; shutting down", "err", err)
	}
	a.shutdown()
	return err
}

// gcHeadroom is the least garbage the heap may gather between
// collections, whatever gc_percent says.
const gcHeadroom = 32 << 20

// tuneGCEachCycle sets the collector's target now and again after every
// collection (from a finalizer, which runs once per cycle), from
// gc_percent and the live heap the cycle found. The LDAP directory is a
// large, long-lived heap: gc_percent keeps the resident size near it. A
// small heap (few users) would be collected after every few requests at
// that percent, so the target never leaves less than gcHeadroom of room.
// Set per cycle, the room never outlives the heap size it was made for.
// The returned func stops it, at shutdown.
func tuneGCEachCycle(percent int) (stop func()) {
	tuneGC(percent)
	var stopped atomic.Bool
	type sentinel struct{ _ [16]byte }
	var arm func()
	arm = func() {
		runtime.SetFinalizer(&sentinel{}, func(*sentinel) {
			if !stopped.Load() {
				tuneGC(percent)
				arm()
			}
		})
	}
	arm()
	return func() { stopped.Store(true) }
}

// tuneGC sets the collector's target from gc_percent and the live heap.
func tuneGC(percent int) {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	var live uint64
	if s[0].Value.Kind() == metrics.KindUint64 {
		live = s[0].Value.Uint64()
	}
	debug.SetGCPercent(gcTarget(percent, live))
}

// gcTarget is the GOGC value that lets a heap of live bytes grow by
// percent, and by at least gcHeadroom.
func gcTarget(percent int, live uint64) int {
	live = max(live, 4<<20) // before the first collection: the runtime's own floor
	if uint64(percent)*live/100 >= gcHeadroom {
		return percent
	}
	return int(100 * gcHeadroom / live)
}

// shutdown stops accepting, lets in-flight SCIM requests (and their store
// writes) finish, closes LDAP connections and closes the store last. The
// signal context is already cancelled, so a fresh deadline bounds it.
func (a *app) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	if a.stopAdmin != nil {
		a.stopAdmin()
	}
	if a.https != nil {
		if err := a.https.Shutdown(ctx); err != nil {
			a.log.Warn("SCIM shutdown incomplete", "err", err)
		}
	}
	if a.ldap != nil {
		if err := a.ldap.Shutdown(ctx); err != nil {
			a.log.Warn("LDAP shutdown incomplete", "err", err)
		}
	}
	if a.cancelBack != nil {
		a.cancelBack()
	}
	if a.st != nil {
		if err := a.st.Close(); err != nil {
			a.log.Error("closing the store failed", "err", err)
		}
	}
	a.stopGC()
}
