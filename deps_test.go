package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencyDirection keeps the package rules true: protocol packages
// never import each other, store imports nothing of ours, mapping only
// store, tls nothing of ours, and only store imports bbolt.
func TestDependencyDirection(t *testing.T) {
	const mod = "github.com/scimldap/scimldap/"
	rules := map[string]struct{ forbidden []string }{
		"scim":    {[]string{mod + "ldap", mod + "tls"}},
		"ldap":    {[]string{mod + "scim", mod + "tls"}},
		"store":   {[]string{mod + "scim", mod + "ldap", mod + "mapping", mod + "tls"}},
		"mapping": {[]string{mod + "scim", mod + "ldap", mod + "tls"}},
		"tls":     {[]string{mod + "scim", mod + "ldap", mod + "store", mod + "mapping", "go.etcd.io/bbolt"}},
	}
	for pkg, r := range rules {
		out, err := exec.Command("go", "list", "-deps", "./"+pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps ./%s: %v", pkg, err)
		}
		deps := strings.Fields(string(out))
		for _, d := range deps {
			for _, f := range r.forbidden {
				if d == f || strings.HasPrefix(d, f+"/") {
					t.Errorf("package %s depends on %s", pkg, d)
				}
			}
		}
	}
	// Only store touches bbolt directly.
	for _, pkg := range []string{"scim", "ldap", "mapping", "tls"} {
		out, _ := exec.Command("go", "list", "-f", `{{join .Imports " "}}`, "./"+pkg).Output()
		if strings.Contains(string(out), "go.etcd.io/bbolt") {
			t.Errorf("package %s imports bbolt; only store may", pkg)
		}
	}
}
