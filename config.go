package main

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/scimldap/scimldap/ldap"
	"github.com/scimldap/scimldap/mapping"
	"github.com/scimldap/scimldap/scim"
	"github.com/scimldap/scimldap/store"
	apptls "github.com/scimldap/scimldap/tls"
)

// Config is appliance.toml. Every key is documented, with its default, in
// the appliance.toml at the repository root; a test keeps the two equal.
type Config struct {
	DataDir    string `toml:"data_dir"`
	LogLevel   string `toml:"log_level"`
	LogFormat  string `toml:"log_format"`
	PublicHost string `toml:"public_host"`
	GCPercent  int    `toml:"gc_percent"`

	SCIM    SCIMConfig              `toml:"scim"`
	LDAP    LDAPConfig              `toml:"ldap"`
	TLS     TLSConfig               `toml:"tls"`
	Tenants map[string]TenantConfig `toml:"tenants"`
}

// SCIMConfig is the [scim] table.
type SCIMConfig struct {
	Addr           string   `toml:"addr"`
	PublicURL      string   `toml:"public_url"`
	MaxBodyBytes   int64    `toml:"max_body_bytes"`
	MaxResults     int      `toml:"max_results"`
	DefaultCount   int      `toml:"default_count"`
	MaxInFlight    int      `toml:"max_in_flight"`
	RequestTimeout Duration `toml:"request_timeout"`
}

// LDAPConfig is the [ldap] table.
type LDAPConfig struct {
	Addr                  string   `toml:"addr"`
	LDAPSAddr             string   `toml:"ldaps_addr"`
	AllowPlainNonLoopback bool     `toml:"allow_plain_non_loopback"`
	Suffix                string   `toml:"suffix"`
	SizeLimit             int      `toml:"size_limit"`
	IdleTimeout           Duration `toml:"idle_timeout"`
	MaxConnections        int      `toml:"max_connections"`
	MaxMessageBytes       int      `toml:"max_message_bytes"`
	PageCookieTTL         Duration `toml:"page_cookie_ttl"`
}

// TLSConfig is the [tls] table.
type TLSConfig struct {
	Mode          string   `toml:"mode"`
	Hostnames     []string `toml:"hostnames"`
	CertFile      string   `toml:"cert_file"`
	KeyFile       string   `toml:"key_file"`
	ACMEDomains   []string `toml:"acme_domains"`
	ACMEEmail     string   `toml:"acme_email"`
	ACMEHTTPAddr  string   `toml:"acme_http_addr"`
	ACMEDirectory string   `toml:"acme_directory"`
}

// TenantConfig is a [tenants.NAME] table: options of one tenant. Tenants
// themselves are created with `scimldap tenant add`; a tenant without a
// table uses the defaults.
type TenantConfig struct {
	UniqueExternalID bool              `toml:"unique_external_id"`
	UniqueEmail      bool              `toml:"unique_email"`
	UniquePhone      bool              `toml:"unique_phone"`
	E164             bool              `toml:"e164"`
	ShowDisabled     bool              `toml:"show_disabled"`
	ScopeFilter      string            `toml:"scope_filter"`
	ADProfile        bool              `toml:"ad_profile"`
	Attributes       map[string]string `toml:"attributes"`
	CustomFields     []string          `toml:"custom_fields"`
}

// Duration is a time.Duration written as "30s" in TOML.
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration such as \"30s\" or \"15m\"", b)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration as "30s".
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// DefaultConfig returns the embedded defaults: what the appliance runs
// with when no config file is given.
func DefaultConfig() Config {
	sc := scim.DefaultConfig()
	lc := ldap.DefaultConfig()
	return Config{
		DataDir:   "./data",
		LogLevel:  "info",
		LogFormat: "text",
		GCPercent: 40,
		SCIM: SCIMConfig{
			Addr:           ":8443",
			MaxBodyBytes:   sc.MaxBodyBytes,
			MaxResults:     sc.MaxResults,
			DefaultCount:   sc.DefaultCount,
			MaxInFlight:    sc.MaxInFlight,
			RequestTimeout: Duration{sc.RequestTimeout},
		},
		LDAP: LDAPConfig{
			Addr:            "127.0.0.1:1389",
			LDAPSAddr:       ":1636",
			Suffix:          lc.Suffix,
			SizeLimit:       lc.SizeLimit,
			IdleTimeout:     Duration{lc.IdleTimeout},
			MaxConnections:  lc.MaxConnections,
			MaxMessageBytes: lc.MaxMessageBytes,
			PageCookieTTL:   Duration{lc.PageCookieTTL},
		},
		TLS:     TLSConfig{Mode: apptls.ModeSelfSigned, ACMEHTTPAddr: ":80", Hostnames: []string{}, ACMEDomains: []string{}},
		Tenants: map[string]TenantConfig{},
	}
}

// loadConfig reads path over the defaults. Unknown keys are errors, named
// with their full path, and so are syntax errors (with line and column).
func loadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	if path == "" {
		return cfg, nil
	}
	md, err := toml.DecodeFile(path, &cfg)
	if err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return cfg, fmt.Errorf("config %s: unknown key(s) %s: check the spelling against the reference appliance.toml", path, strings.Join(keys, ", "))
	}
	lower := make(map[string]TenantConfig, len(cfg.Tenants))
	for name, tc := range cfg.Tenants {
		lower[strings.ToLower(name)] = tc
	}
	cfg.Tenants = lower
	return cfg, nil
}

// Validate reports every problem in c at once, each naming its key.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.DataDir == "" {
		add("data_dir: must not be empty")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		add("log_level: %q is not one of debug, info, warn, error", c.LogLevel)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		add("log_format: %q is not one of text, json", c.LogFormat)
	}
	if c.GCPercent < 10 || c.GCPercent > 1000 {
		add("gc_percent: %d is outside 10 to 1000", c.GCPercent)
	}
	checkAddr := func(key, addr string, optional bool) {
		if addr == "" && optional {
			return
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			add("%s: %q is not host:port (e.g. \":8443\" or \"127.0.0.1:1389\"): %v", key, addr, err)
		}
	}
	checkAddr("scim.addr", c.SCIM.Addr, false)
	checkAddr("ldap.addr", c.LDAP.Addr, true)
	checkAddr("ldap.ldaps_addr", c.LDAP.LDAPSAddr, true)
	if c.LDAP.Addr != "" && !c.LDAP.AllowPlainNonLoopback && !isLoopback(c.LDAP.Addr) {
		add("ldap.addr: %q is not a loopback address; plain LDAP sends passwords in clear, so it listens on loopback only unless ldap.allow_plain_non_loopback = true (clients should use LDAPS on ldap.ldaps_addr or StartTLS)", c.LDAP.Addr)
	}
	if c.SCIM.MaxBodyBytes < 1024 {
		add("scim.max_body_bytes: %d is too small; at least 1024", c.SCIM.MaxBodyBytes)
	}
	if c.SCIM.MaxResults < 1 {
		add("scim.max_results: must be at least 1")
	}
	if c.SCIM.DefaultCount < 1 || c.SCIM.DefaultCount > c.SCIM.MaxResults {
		add("scim.default_count: %d must be between 1 and scim.max_results (%d)", c.SCIM.DefaultCount, c.SCIM.MaxResults)
	}
	if c.SCIM.MaxInFlight < 1 {
		add("scim.max_in_flight: must be at least 1")
	}
	if c.SCIM.RequestTimeout.Duration <= 0 {
		add("scim.request_timeout: must be positive")
	}
	if c.SCIM.PublicURL != "" && !strings.HasPrefix(c.SCIM.PublicURL, "https://") {
		add("scim.public_url: %q must start with https:// (Entra ID only talks to HTTPS endpoints)", c.SCIM.PublicURL)
	}
	if err := ldap.ValidateSuffix(c.LDAP.Suffix); err != nil {
		add("ldap.suffix: %v", err)
	}
	if c.LDAP.SizeLimit < 0 {
		add("ldap.size_limit: must be 0 (no limit) or positive")
	}
	if c.LDAP.MaxConnections < 1 {
		add("ldap.max_connections: must be at least 1")
	}
	if c.LDAP.MaxMessageBytes < 1024 {
		add("ldap.max_message_bytes: %d is too small; at least 1024", c.LDAP.MaxMessageBytes)
	}
	if c.LDAP.IdleTimeout.Duration <= 0 {
		add("ldap.idle_timeout: must be positive")
	}
	if c.LDAP.PageCookieTTL.Duration <= 0 {
		add("ldap.page_cookie_ttl: must be positive")
	}
	if err := c.tlsConfig().Validate(); err != nil {
		errs = append(errs, err)
	}
	names := make([]string, 0, len(c.Tenants))
	for n := range c.Tenants {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := store.ValidateTenantName(n); err != nil {
			add("tenants.%s: %v", n, err)
			continue
		}
		if _, err := c.ldapTenant(n); err != nil {
			add("tenants.%s.%v", n, err)
		}
		if f := c.Tenants[n].ScopeFilter; f != "" {
			if err := ldap.ValidateFilter(f); err != nil {
				add("tenants.%s.scope_filter: %v", n, err)
			}
		}
	}
	return errors.Join(errs...)
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (c *Config) tlsConfig() apptls.Config {
	return apptls.Config{
		Mode:          c.TLS.Mode,
		Hostnames:     c.TLS.Hostnames,
		CertFile:      c.TLS.CertFile,
		KeyFile:       c.TLS.KeyFile,
		ACMEDomains:   c.TLS.ACMEDomains,
		ACMEEmail:     c.TLS.ACMEEmail,
		ACMEHTTPAddr:  c.TLS.ACMEHTTPAddr,
		ACMEDirectory: c.TLS.ACMEDirectory,
	}
}

func (c *Config) scimConfig() scim.Config {
	sc := scim.DefaultConfig()
	sc.MaxBodyBytes = c.SCIM.MaxBodyBytes
	sc.MaxResults = c.SCIM.MaxResults
	sc.DefaultCount = c.SCIM.DefaultCount
	sc.MaxInFlight = c.SCIM.MaxInFlight
	sc.RequestTimeout = c.SCIM.RequestTimeout.Duration
	sc.PublicURL = c.SCIM.PublicURL
	sc.Tenants = map[string]scim.TenantOptions{}
	for n, tc := range c.Tenants {
		sc.Tenants[n] = scim.TenantOptions{E164: tc.E164}
	}
	return sc
}

// ldapTenant builds the LDAP view options of tenant name; errors name the
// key below tenants.NAME.
func (c *Config) ldapTenant(name string) (mapping.Options, error) {
	tc := c.Tenants[name]
	return mapping.NewOptions(mapping.Config{
		Suffix:       c.LDAP.Suffix,
		Attributes:   tc.Attributes,
		CustomFields: tc.CustomFields,
		ShowDisabled: tc.ShowDisabled,
		ScopeFilter:  tc.ScopeFilter,
		ADProfile:    tc.ADProfile,
	})
}

func (c *Config) ldapConfig() ldap.Config {
	lc := ldap.DefaultConfig()
	lc.Suffix = c.LDAP.Suffix
	lc.SizeLimit = c.LDAP.SizeLimit
	lc.IdleTimeout = c.LDAP.IdleTimeout.Duration
	lc.MaxConnections = c.LDAP.MaxConnections
	lc.MaxMessageBytes = c.LDAP.MaxMessageBytes
	lc.PageCookieTTL = c.LDAP.PageCookieTTL.Duration
	// Options are compiled once: binds and searches ask for them often.
	// Validate ran at start, so compiling cannot fail here.
	defaults, _ := mapping.NewOptions(mapping.Config{Suffix: c.LDAP.Suffix})
	byTenant := map[string]mapping.Options{}
	for name := range c.Tenants {
		if o, err := c.ldapTenant(name); err == nil {
			byTenant[name] = o
		}
	}
	lc.Tenant = func(name string) mapping.Options {
		if o, ok := byTenant[strings.ToLower(name)]; ok {
			return o
		}
		return defaults
	}
	return lc
}

func (c *Config) rules(name string) store.Rules {
	tc := c.Tenants[strings.ToLower(name)]
	return store.Rules{UniqueExternalID: tc.UniqueExternalID, UniqueEmail: tc.UniqueEmail, UniquePhone: tc.UniquePhone}
}
