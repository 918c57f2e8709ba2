package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/scimldap/scimldap/store"
)

// admin carries out the administrative commands against a store. The
// server exposes it on a Unix socket in the data directory (bbolt allows
// one process at a time), and the CLI calls it directly when no server is
// running.
type admin struct {
	st  *store.Store
	cfg *Config
}

// tenantCreds is what `tenant add -json` prints; scripts rely on exactly
// these keys.
type tenantCreds struct {
	Tenant   string `json:"tenant"`
	SCIMURL  string `json:"scim_url"`
	Token    string `json:"token"`
	BaseDN   string `json:"base_dn"`
	BindDN   string `json:"bind_dn"`
	Password string `json:"password"`
}

type tenantInfo struct {
	Tenant   string    `json:"tenant"`
	SCIMURL  string    `json:"scim_url"`
	BaseDN   string    `json:"base_dn"`
	Accounts []string  `json:"accounts"`
	Users    int       `json:"users"`
	Created  time.Time `json:"created"`
}

type accountCreds struct {
	BindDN   string `json:"bind_dn"`
	Password string `json:"password"`
}

// defaultAccount is the service account every new tenant gets.
const defaultAccount = "reader"

func (a *admin) scimURL(tenant string) string {
	if a.cfg.SCIM.PublicURL != "" {
		return strings.TrimRight(a.cfg.SCIM.PublicURL, "/") + "/scim/v2/" + tenant
	}
	host := a.cfg.PublicHost
	if host == "" {
		host, _ = os.Hostname()
		if host == "" {
			host = "localhost"
		}
	}
	_, port, _ := net.SplitHostPort(a.cfg.SCIM.Addr)
	if port != "" && port != "443" {
		host = net.JoinHostPort(host, port)
	}
	return "https://" + host + "/scim/v2/" + tenant
}

func (a *admin) tenantAdd(ctx context.Context, name string) (tenantCreds, error) {
	token, hash := store.NewSecret()
	t, err := a.st.CreateTenant(ctx, name, hash)
	if err != nil {
		return tenantCreds{}, err
	}
	acct, err := a.accountPut(ctx, t.Name, defaultAccount, false)
	if err != nil {
		return tenantCreds{}, err
	}
	opts, err := a.cfg.ldapTenant(t.Name)
	if err != nil {
		return tenantCreds{}, err
	}
	return tenantCreds{Tenant: t.Name, SCIMURL: a.scimURL(t.Name), Token: token, BaseDN: opts.TenantDN(t.Name),
		BindDN: acct.BindDN, Password: acct.Password}, nil
}

func (a *admin) tenantList(ctx context.Context) ([]tenantInfo, error) {
	ts, err := a.st.Tenants(ctx)
	if err != nil {
		return nil, err
	}
	out := []tenantInfo{}
	for _, t := range ts {
		opts, _ := a.cfg.ldapTenant(t.Name)
		info := tenantInfo{Tenant: t.Name, SCIMURL: a.scimURL(t.Name), BaseDN: opts.TenantDN(t.Name), Created: t.Created, Accounts: []string{}}
		accts, err := a.st.Accounts(ctx, t.Name)
		if err != nil {
			return nil, err
		}
		for _, ac := range accts {
			info.Accounts = append(info.Accounts, ac.Name)
		}
		if info.Users, err = a.st.CountUsers(ctx, t.Name); err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

func (a *admin) tokenRotate(ctx context.Context, tenant string) (string, error) {
	token, hash := store.NewSecret()
	if err := a.st.SetTenantToken(ctx, tenant, hash); err != nil {
		return "", err
	}
	return token, nil
}

// accountPut creates (mustExist false) or re-keys (mustExist true) a
// service account and returns its new credentials.
func (a *admin) accountPut(ctx context.Context, tenant, name string, mustExist bool) (accountCreds, error) {
	tenant, name = strings.ToLower(tenant), strings.ToLower(name)
	_, err := a.st.Account(ctx, tenant, name)
	switch {
	case mustExist && err != nil:
		return accountCreds{}, err
	case !mustExist && err == nil:
		return accountCreds{}, fmt.Errorf("account %q of tenant %q already exists (use account passwd to give it a new password): %w", name, tenant, store.ErrConflict)
	case !mustExist && !errors.Is(err, store.ErrNotFound):
		return accountCreds{}, err
	}
	pw, hash := store.NewSecret()
	if err := a.st.PutAccount(ctx, tenant, store.Account{Name: name, Password: hash}); err != nil {
		return accountCreds{}, err
	}
	opts, err := a.cfg.ldapTenant(tenant)
	if err != nil {
		return accountCreds{}, err
	}
	return accountCreds{BindDN: opts.AccountDN(tenant, name), Password: pw}, nil
}

// adminRequest is one call over the admin socket.
type adminRequest struct {
	Op     string `json:"op"`
	Tenant string `json:"tenant,omitempty"`
	Name   string `json:"name,omitempty"`
	Path   string `json:"path,omitempty"`
}

type adminResponse struct {
	Error  string          `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
}

// do carries out one request.
func (a *admin) do(ctx context.Context, req adminRequest) (any, error) {
	switch req.Op {
	case "tenant add":
		return a.tenantAdd(ctx, req.Tenant)
	case "tenant list":
		return a.tenantList(ctx)
	case "tenant remove":
		return map[string]string{"removed": req.Tenant}, a.st.DeleteTenant(ctx, req.Tenant)
	case "token rotate":
		tok, err := a.tokenRotate(ctx, req.Tenant)
		return map[string]string{"token": tok}, err
	case "account add":
		return a.accountPut(ctx, req.Tenant, req.Name, false)
	case "account passwd":
		return a.accountPut(ctx, req.Tenant, req.Name, true)
	case "account remove":
		return map[string]string{"removed": req.Name}, a.st.DeleteAccount(ctx, req.Tenant, req.Name)
	case "backup":
		return a.backup(ctx, req.Path)
	}
	return nil, fmt.Errorf("unknown admin operation %q", req.Op)
}

func (a *admin) backup(ctx context.Context, path string) (map[string]any, error) {
	tmp := path + ".partial"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	n, err := a.st.Backup(ctx, f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("backup to %s: %w", path, err)
	}
	return map[string]any{"path": path, "bytes": n}, nil
}

// adminSocket is the Unix socket path in the data directory.
func adminSocket(dataDir string) string { return filepath.Join(dataDir, "admin.sock") }

// serveAdmin serves admin requests on the Unix socket (mode 0600: only the
// appliance's own user may administer it) until ctx ends.
func serveAdmin(ctx context.Context, a *admin, path string, log *slog.Logger) (func(), error) {
	os.Remove(path) // a stale socket from a crash; the store lock proves no server runs
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var req adminRequest
			var resp adminResponse
			if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
				resp.Error = "bad request: " + err.Error()
			} else if out, err := a.do(r.Context(), req); err != nil {
				resp.Error = err.Error()
			} else {
				resp.Result, _ = json.Marshal(out)
				log.Info("admin operation", "op", req.Op, "tenant", req.Tenant, "name", req.Name)
			}
			json.NewEncoder(w).Encode(resp)
		}),
	}
	go srv.Serve(ln)
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		os.Remove(path)
	}, nil
}

// callAdmin sends req to a running server. ok is false when no server
// listens on the socket.
func callAdmin(ctx context.Context, dataDir string, req adminRequest, out any) (ok bool, err error) {
	path := adminSocket(dataDir)
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false, nil
	}
	conn.Close()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}, Timeout: 5 * time.Minute}
	body, _ := json.Marshal(req)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://admin/", bytes.NewReader(body))
	if err != nil {
		return true, err
	}
	resp, err := client.Do(hreq)
	if err != nil {
		return true, fmt.Errorf("admin socket %s: %w", path, err)
	}
	defer resp.Body.Close()
	var ar adminResponse
	if err := json.NewDecoder(resp.Body).Decode(&ar); err != nil {
		return true, fmt.Errorf("admin socket: bad answer: %w", err)
	}
	if ar.Error != "" {
		return true, errors.New(ar.Error)
	}
	return true, json.Unmarshal(ar.Result, out)
}
