// Package tls provides the appliance's certificate source, shared by HTTPS
// (SCIM) and LDAPS: a self-signed certificate kept in the data directory,
// a certificate and key from files (reloaded on SIGHUP or when the files
// change), or certificates from an ACME CA (Let's Encrypt) via autocert.
package tls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// Modes of Config.Mode.
const (
	ModeSelfSigned = "self-signed"
	ModeFiles      = "files"
	ModeACME       = "acme"
)

// Config selects and tunes the certificate source.
type Config struct {
	Mode string
	// Hostnames are extra DNS names or IPs for the self-signed certificate
	// (localhost, 127.0.0.1, ::1 and the machine's hostname are always in it).
	Hostnames []string
	// CertFile and KeyFile are PEM files for mode "files".
	CertFile, KeyFile string
	// ACMEDomains, ACMEEmail, ACMEHTTPAddr and ACMEDirectory configure mode
	// "acme"; ACMEDirectory empty means Let's Encrypt production.
	ACMEDomains   []string
	ACMEEmail     string
	ACMEHTTPAddr  string
	ACMEDirectory string
	// PollInterval is how often mode "files" checks the files for changes.
	PollInterval time.Duration
}

// Validate reports every problem with c, naming the config key.
func (c Config) Validate() error {
	var errs []error
	switch c.Mode {
	case ModeSelfSigned:
	case ModeFiles:
		if c.CertFile == "" || c.KeyFile == "" {
			errs = append(errs, errors.New(`tls.cert_file and tls.key_file: mode "files" needs both paths`))
		}
	case ModeACME:
		if len(c.ACMEDomains) == 0 {
			errs = append(errs, errors.New(`tls.acme_domains: mode "acme" needs at least one domain name that resolves to this machine`))
		}
	default:
		errs = append(errs, fmt.Errorf(`tls.mode: %q is not one of "self-signed", "files", "acme"`, c.Mode))
	}
	return errors.Join(errs...)
}

// Source hands out the current certificate. It is safe for concurrent use.
type Source struct {
	cfg     Config
	dataDir string
	log     *slog.Logger
	acme    *autocert.Manager

	mu      sync.RWMutex
	cert    *tls.Certificate
	modTime time.Time
}

// New builds the certificate source. For "self-signed" it loads or creates
// the certificate in dataDir/tls; for "files" it loads the files (an error
// names the file); for "acme" it sets up autocert with its cache in
// dataDir/acme.
func New(cfg Config, dataDir string, log *slog.Logger) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 10 * time.Second
	}
	s := &Source{cfg: cfg, dataDir: dataDir, log: log.With("component", "tls")}
	switch cfg.Mode {
	case ModeSelfSigned:
		c, err := selfSigned(filepath.Join(dataDir, "tls"), cfg.Hostnames)
		if err != nil {
			return nil, fmt.Errorf("tls: self-signed certificate: %w", err)
		}
		s.cert = c
	case ModeFiles:
		if err := s.Reload(); err != nil {
			return nil, err
		}
	case ModeACME:
		s.acme = &autocert.Manager{
			Prompt:     autocert.AcceptTOS,
			HostPolicy: autocert.HostWhitelist(cfg.ACMEDomains...),
			Cache:      autocert.DirCache(filepath.Join(dataDir, "acme")),
			Email:      cfg.ACMEEmail,
		}
		if cfg.ACMEDirectory != "" {
			s.acme.Client = &acme.Client{DirectoryURL: cfg.ACMEDirectory}
		}
	}
	return s, nil
}

// Config returns a server tls.Config: TLS 1.2 minimum, certificates from s.
// nextProtos are the application protocols offered (e.g. "h2", "http/1.1").
func (s *Source) Config(nextProtos ...string) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: s.GetCertificate, NextProtos: nextProtos}
	if s.acme != nil {
		c.NextProtos = append(c.NextProtos, acme.ALPNProto)
	}
	return c
}

// GetCertificate returns the certificate for a handshake.
func (s *Source) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if s.acme != nil {
		return s.acme.GetCertificate(hello)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cert, nil
}

// Reload re-reads the certificate files in mode "files"; on error the
// previous certificate stays in use. Other modes ignore it.
func (s *Source) Reload() error {
	if s.cfg.Mode != ModeFiles {
		return nil
	}
	c, err := tls.LoadX509KeyPair(s.cfg.CertFile, s.cfg.KeyFile)
	if err != nil {
		return fmt.Errorf("tls: load tls.cert_file %s and tls.key_file %s: %w", s.cfg.CertFile, s.cfg.KeyFile, err)
	}
	mt := latestModTime(s.cfg.CertFile, s.cfg.KeyFile)
	s.mu.Lock()
	s.cert, s.modTime = &c, mt
	s.mu.Unlock()
	return nil
}

func latestModTime(paths ...string) time.Time {
	var t time.Time
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil && fi.ModTime().After(t) {
			t = fi.ModTime()
		}
	}
	return t
}

// Run does the background work of the source until ctx ends: in mode
// "files" it reloads changed files; in mode "acme" it serves HTTP-01
// challenges on ACMEHTTPAddr when that is set.
func (s *Source) Run(ctx context.Context) error {
	switch s.cfg.Mode {
	case ModeFiles:
		t := time.NewTicker(s.cfg.PollInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				s.mu.RLock()
				old := s.modTime
				s.mu.RUnlock()
				if latestModTime(s.cfg.CertFile, s.cfg.KeyFile).After(old) {
					if err := s.Reload(); err != nil {
						s.log.Error("certificate files changed but could not be loaded; keeping the previous certificate", "err", err)
					} else {
						s.log.Info("certificate reloaded", "cert_file", s.cfg.CertFile)
					}
				}
			}
		}
	case ModeACME:
		if s.cfg.ACMEHTTPAddr == "" {
			<-ctx.Done()
			return nil
		}
		ln, err := net.Listen("tcp", s.cfg.ACMEHTTPAddr)
		if err != nil {
			return fmt.Errorf("tls: listen for ACME HTTP-01 on tls.acme_http_addr %s: %w", s.cfg.ACMEHTTPAddr, err)
		}
		srv := &http.Server{Handler: s.acme.HTTPHandler(nil), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
		}()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("tls: ACME HTTP-01 listener: %w", err)
		}
		return nil
	}
	<-ctx.Done()
	return nil
}

// selfSigned loads dir/selfsigned.{crt,key}, or creates them (ECDSA P-256,
// valid two years) when missing or within 30 days of expiry.
func selfSigned(dir string, extra []string) (*tls.Certificate, error) {
	certPath, keyPath := filepath.Join(dir, "selfsigned.crt"), filepath.Join(dir, "selfsigned.key")
	if c, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil {
		if leaf, err := x509.ParseCertificate(c.Certificate[0]); err == nil && time.Until(leaf.NotAfter) > 30*24*time.Hour {
			return &c, nil
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "scimldap appliance", Organization: []string{"scimldap"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(2 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, n := range append([]string{"localhost", "127.0.0.1", "::1", host}, extra...) {
		if n == "" {
			continue
		}
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := writeFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return nil, err
	}
	if err := writeFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	c, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// writeFile writes atomically: a crash never leaves half a key.
func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
