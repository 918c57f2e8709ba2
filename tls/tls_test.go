package tls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	stdtls "crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestSelfSignedIsKeptAcrossStarts(t *testing.T) {
	dir := t.TempDir()
	a, err := New(Config{Mode: ModeSelfSigned, Hostnames: []string{"scim.example.com", "10.0.0.5"}}, dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	c1, _ := a.GetCertificate(&stdtls.ClientHelloInfo{})
	leaf, err := x509.ParseCertificate(c1.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.VerifyHostname("scim.example.com"); err != nil {
		t.Errorf("extra host name missing: %v", err)
	}
	if err := leaf.VerifyHostname("127.0.0.1"); err != nil {
		t.Errorf("loopback missing: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "tls", "selfsigned.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	b, err := New(Config{Mode: ModeSelfSigned}, dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := b.GetCertificate(&stdtls.ClientHelloInfo{})
	if string(c1.Certificate[0]) != string(c2.Certificate[0]) {
		t.Fatal("a second start generated a new certificate; want the kept one")
	}
	if cfg := a.Config(); cfg.MinVersion != stdtls.VersionTLS12 {
		t.Fatalf("MinVersion = %x; want TLS 1.2", cfg.MinVersion)
	}
}

func writePair(t *testing.T, dir, cn string) (string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), DNSNames: []string{cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	kder, _ := x509.MarshalECPrivateKey(key)
	cp, kp := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	os.WriteFile(cp, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(kp, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return cp, kp
}

func TestFilesAreReloaded(t *testing.T) {
	dir := t.TempDir()
	cp, kp := writePair(t, dir, "one.example.com")
	s, err := New(Config{Mode: ModeFiles, CertFile: cp, KeyFile: kp}, t.TempDir(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	name := func() string {
		c, _ := s.GetCertificate(&stdtls.ClientHelloInfo{})
		leaf, _ := x509.ParseCertificate(c.Certificate[0])
		return leaf.DNSNames[0]
	}
	if name() != "one.example.com" {
		t.Fatal(name())
	}
	time.Sleep(10 * time.Millisecond)
	writePair(t, dir, "two.example.com")
	if err := s.Reload(); err != nil { // what SIGHUP does
		t.Fatal(err)
	}
	if name() != "two.example.com" {
		t.Fatalf("after reload: %s", name())
	}
	os.WriteFile(kp, []byte("garbage"), 0o600)
	if err := s.Reload(); err == nil || !strings.Contains(err.Error(), "tls.key_file") {
		t.Fatalf("broken key: %v; want an error naming tls.key_file", err)
	}
	if name() != "two.example.com" {
		t.Fatal("a failed reload replaced the working certificate")
	}
	if _, err := New(Config{Mode: ModeFiles, CertFile: filepath.Join(dir, "missing.pem"), KeyFile: kp}, dir, quiet); err == nil || !strings.Contains(err.Error(), "tls.cert_file") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestValidate(t *testing.T) {
	for cfg, want := range map[*Config]string{
		{Mode: "nope"}:         "tls.mode",
		{Mode: ModeFiles}:      "tls.cert_file",
		{Mode: ModeACME}:       "tls.acme_domains",
		{Mode: ModeSelfSigned}: "",
		{Mode: ModeACME, ACMEDomains: []string{"scim.example.com"}}: "",
	} {
		err := cfg.Validate()
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("Validate(%+v) = %v; want %q", *cfg, err, want)
		}
	}
	s, err := New(Config{Mode: ModeACME, ACMEDomains: []string{"scim.example.com"}}, t.TempDir(), quiet)
	if err != nil || s.acme == nil {
		t.Fatalf("acme source: %v", err)
	}
	if _, err := s.GetCertificate(&stdtls.ClientHelloInfo{ServerName: "other.example.com"}); err == nil {
		t.Fatal("ACME issued for a host outside acme_domains")
	}
}
