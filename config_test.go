package main

import (
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"testing"
	"time"
)

// The shipped appliance.toml documents the defaults: decoding it must give
// exactly DefaultConfig, so the two can never drift apart.
func TestReferenceConfigIsTheDefaults(t *testing.T) {
	got, err := loadConfig("appliance.toml")
	if err != nil {
		t.Fatal(err)
	}
	if want := DefaultConfig(); !reflect.DeepEqual(got, want) {
		t.Fatalf("appliance.toml decodes to\n%+v\nwant DefaultConfig()\n%+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
}

func TestInvalidConfigNamesTheKey(t *testing.T) {
	tests := []struct {
		name, toml, want string
	}{
		{"unknown key", "[scim]\nadress = \":1\"\n", "scim.adress"},
		{"syntax error", "data_dir = \n", "line 1"},
		{"bad duration", "[scim]\nrequest_timeout = \"soon\"\n", "not a duration"},
		{"plain LDAP on all interfaces", "[ldap]\naddr = \":389\"\n", "ldap.addr"},
		{"bad address", "[scim]\naddr = \"8443\"\n", "scim.addr"},
		{"bad tls mode", "[tls]\nmode = \"magic\"\n", "tls.mode"},
		{"files without paths", "[tls]\nmode = \"files\"\n", "tls.cert_file"},
		{"acme without domains", "[tls]\nmode = \"acme\"\n", "tls.acme_domains"},
		{"bad scope filter", "[tenants.acme]\nscope_filter = \"(&(department=Sales)(l=NYC)\"\n", "tenants.acme.scope_filter"},
		{"bad mapping path", "[tenants.acme.attributes]\nmail = \"emial\"\n", "tenants.acme.attributes.mail"},
		{"bad tenant name", "[tenants.\"a b\"]\n", "tenants.a b"},
		{"bad suffix", "[ldap]\nsuffix = \"nonsense\"\n", "ldap.suffix"},
		{"bad log level", "log_level = \"loud\"\n", "log_level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "a.toml")
			os.WriteFile(path, []byte(tt.toml), 0o600)
			cfg, err := loadConfig(path)
			if err == nil {
				err = cfg.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("config %q: err = %v; want it to mention %q", tt.toml, err, tt.want)
			}
		})
	}
}

func TestGCTarget(t *testing.T) {
	for _, c := range []struct {
		percent int
		live    uint64
		want    int
	}{
		{40, 0, 800},          // no collection yet: as if 4 MB were live
		{40, 8 << 20, 400},    // small heap: 32 MB of room
		{40, 80 << 20, 40},    // exactly 32 MB at 40%
		{40, 200 << 20, 40},   // a large directory: gc_percent
		{200, 8 << 20, 400},   // gc_percent already gives the room
		{1000, 1 << 20, 1000}, // and more
	} {
		if got := gcTarget(c.percent, c.live); got != c.want {
			t.Errorf("gcTarget(%d, %d MB) = %d; want %d", c.percent, c.live>>20, got, c.want)
		}
	}
}

// TestGCTunedEachCycle: after each collection the target follows the live
// heap: gc_percent for a large one, more room for a small one.
func TestGCTunedEachCycle(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	stop := tuneGCEachCycle(40)
	defer stop()
	gogc := func() uint64 {
		s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	settle := func(want func(uint64) bool) uint64 {
		for range 50 {
			runtime.GC()
			time.Sleep(10 * time.Millisecond) // the finalizer runs after the cycle
			if g := gogc(); want(g) {
				return g
			}
		}
		return gogc()
	}
	big := make([]*[1 << 20]byte, 200) // 200 MB live
	for i := range big {
		big[i] = new([1 << 20]byte)
	}
	if g := settle(func(g uint64) bool { return g == 40 }); g != 40 {
		t.Errorf("GOGC with 200 MB live = %d; want gc_percent, 40", g)
	}
	runtime.KeepAlive(big)
	big = nil
	if g := settle(func(g uint64) bool { return g > 100 }); g <= 100 {
		t.Errorf("GOGC with a small live heap = %d; want room for 32 MB", g)
	}
}
