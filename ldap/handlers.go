package ldap

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/jimlambrt/gldap"

	"github.com/scimldap/scimldap/store"
)

// LDAP result codes used here (RFC 4511 §4.1.9).
const (
	resSuccess                = 0
	resOperationsError        = 1
	resProtocolError          = 2
	resTimeLimitExceeded      = 3
	resSizeLimitExceeded      = 4
	resCompareFalse           = 5
	resCompareTrue            = 6
	resAuthMethodNotSupported = 7
	resUnavailableCritical    = 12
	resUndefinedAttrType      = 17
	resNoSuchObject           = 32
	resInvalidDNSyntax        = 34
	resInvalidCredentials     = 49
	resInsufficientAccess     = 50
	resBusy                   = 51
	resUnwillingToPerform     = 53
	resOther                  = 80
)

// helloPrefix names the reserved bind the front end sends first on each
// internal connection, so the bind handler learns which client it serves.
// Clients cannot send it: the front end refuses binds with this name.
const helloPrefix = "scimldap-guard-hello="

// guarded wraps a gldap handler so that a panic is logged instead of
// killing the process (gldap runs each request in a goroutine without
// recovery). The bind handler recovers itself and answers "other"; this is
// the backstop.
func (s *Server) guarded(h gldap.HandlerFunc) gldap.HandlerFunc {
	return func(w *gldap.ResponseWriter, r *gldap.Request) {
		defer func() {
			if p := recover(); p != nil {
				s.logPanic(p)
				w.Write(r.NewResponse(gldap.WithResponseCode(resOther), gldap.WithDiagnosticMessage("internal error; the appliance log has the details")))
			}
		}()
		h(w, r)
	}
}

func (s *Server) logPanic(p any) {
	s.log.Error("panic in LDAP handler", "panic", p, "stack", string(debug.Stack()))
}

func (s *Server) handleDefault(w *gldap.ResponseWriter, r *gldap.Request) {
	w.Write(r.NewResponse(gldap.WithResponseCode(resUnwillingToPerform), gldap.WithDiagnosticMessage("this directory is read-only: Entra ID owns its data")))
}

func (s *Server) handleBind(w *gldap.ResponseWriter, r *gldap.Request) {
	resp := r.NewBindResponse(gldap.WithResponseCode(resInvalidCredentials))
	defer func() {
		if p := recover(); p != nil {
			s.logPanic(p)
			resp.SetResultCode(resOther)
			resp.SetDiagnosticMessage("internal error; the appliance log has the details")
		}
		w.Write(resp)
	}()
	m, err := r.GetSimpleBindMessage()
	if err != nil {
		resp.SetResultCode(resProtocolError)
		resp.SetDiagnosticMessage("malformed bind request")
		return
	}
	if strings.HasPrefix(m.UserName, helloPrefix) {
		token := strings.TrimPrefix(m.UserName, helloPrefix)
		s.mu.Lock()
		ci := s.byToken[token]
		if ci != nil && string(m.Password) == token {
			delete(s.byToken, token)
			s.byBackend[r.ConnectionID()] = ci
			resp.SetResultCode(resSuccess)
		}
		s.mu.Unlock()
		return
	}
	ci := s.connFor(r)
	if ci == nil {
		resp.SetResultCode(resUnwillingToPerform)
		resp.SetDiagnosticMessage("connect through the appliance's LDAP listener")
		return
	}
	ci.setIdentity(nil) // a bind, successful or not, ends the previous one
	name, pw := strings.TrimSpace(m.UserName), string(m.Password)
	switch {
	case name == "" && pw == "":
		resp.SetResultCode(resSuccess) // anonymous: root DSE and cn=Subschema only
		return
	case pw == "":
		resp.SetResultCode(resUnwillingToPerform)
		resp.SetDiagnosticMessage("unauthenticated bind (a name with an empty password) is refused; give the service account's password")
		return
	case name == "":
		resp.SetDiagnosticMessage("a password was given without a bind DN")
		return
	}
	tenant, account, ok := s.parseBindName(name)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if d := s.throttle.delay(ci.remote); d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
	}
	var acct store.Account
	if ok {
		acct, err = s.st.Account(ctx, tenant, account)
	}
	if !ok || err != nil || !acct.Password.Verify(pw) {
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			s.log.Error("bind: account lookup failed", "err", err)
			resp.SetResultCode(resOther)
			resp.SetDiagnosticMessage("internal error; the appliance log has the details")
			return
		}
		s.throttle.fail(ci.remote)
		s.log.Info("bind refused", "remote", ci.remote, "dn", name)
		resp.SetDiagnosticMessage("invalid credentials: bind as uid=ACCOUNT,ou=admin,o=TENANT," + s.cfg.Suffix + " with the account's password")
		return
	}
	s.throttle.success(ci.remote)
	opts := s.cfg.Tenant(tenant)
	ci.setIdentity(&identity{tenant: tenant, account: account, dn: opts.AccountDN(tenant, account)})
	resp.SetResultCode(resSuccess)
}

// parseBindName accepts uid=ACCOUNT,ou=admin,o=TENANT,<suffix> and the
// friendly form ACCOUNT@TENANT.
func (s *Server) parseBindName(name string) (tenant, account string, ok bool) {
	if !strings.Contains(name, "=") {
		a, t, found := strings.Cut(name, "@")
		return strings.ToLower(t), strings.ToLower(a), found && a != "" && t != ""
	}
	rdns, err := parseDN(name)
	if err != nil || len(rdns) < 4 {
		return "", "", false
	}
	if rdns[0].attr != "uid" || rdns[1].attr != "ou" || !strings.EqualFold(rdns[1].value, "admin") || rdns[2].attr != "o" {
		return "", "", false
	}
	if joinRDNs(rdns[3:]) != s.suffix {
		return "", "", false
	}
	return strings.ToLower(rdns[2].value), strings.ToLower(rdns[0].value), true
}

// throttle slows down repeated failed binds from one address: after three
// failures each further attempt waits, doubling up to five seconds, until a
// success or fifteen quiet minutes.
type throttle struct {
	mu    sync.Mutex
	fails map[string]*failures
}

type failures struct {
	n    int
	last time.Time
}

func newThrottle() *throttle { return &throttle{fails: map[string]*failures{}} }

func (t *throttle) delay(ip string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.fails[ip]
	if f == nil || time.Since(f.last) > 15*time.Minute {
		return 0
	}
	if f.n < 3 {
		return 0
	}
	d := 250 * time.Millisecond << min(f.n-3, 5)
	return min(d, 5*time.Second)
}

func (t *throttle) fail(ip string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.fails) > 100000 { // bound memory under a spray of addresses
		for k, f := range t.fails {
			if time.Since(f.last) > 15*time.Minute {
				delete(t.fails, k)
			}
		}
	}
	f := t.fails[ip]
	if f == nil || time.Since(f.last) > 15*time.Minute {
		f = &failures{}
		t.fails[ip] = f
	}
	f.n++
	f.last = time.Now()
}

func (t *throttle) success(ip string) {
	t.mu.Lock()
	delete(t.fails, ip)
	t.mu.Unlock()
}

// Control OIDs.
const (
	oidPaging       = "1.2.840.113556.1.4.319"
	oidSortRequest  = "1.2.840.113556.1.4.473"
	oidSortResponse = "1.2.840.113556.1.4.474"
)

// pageState is a paged search in progress (RFC 2696).
type pageState struct {
	signature string
	after     string   // last key returned (unsorted searches)
	sorted    []*entry // snapshot, for sorted searches
	pos       int
	returned  int
	expires   time.Time
}

func newCookie() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// decodeSortKeys reads a server-side sort request (RFC 2891):
// SEQUENCE OF SEQUENCE { attributeType, [0] orderingRule OPTIONAL,
// [1] reverseOrder BOOLEAN DEFAULT FALSE }.
func decodeSortKeys(b []byte) ([]sortKey, error) {
	if err := checkBER(b, 0); err != nil {
		return nil, err
	}
	list, _, err := next(b)
	if err != nil || list.tag != 0x30 {
		return nil, errors.New("the sort control value is not a SEQUENCE")
	}
	items, err := children(list.body)
	if err != nil {
		return nil, err
	}
	var keys []sortKey
	for _, it := range items {
		parts, err := children(it.body)
		if err != nil || len(parts) == 0 || parts[0].tag != 0x04 {
			return nil, errors.New("a sort key has no attribute type")
		}
		t := lookupAttr(baseAttr(string(parts[0].body)))
		if t == nil {
			return nil, fmt.Errorf("cannot sort on unknown attribute %q", parts[0].body)
		}
		k := sortKey{t: t}
		for _, p := range parts[1:] {
			if p.tag == 0x81 && len(p.body) == 1 {
				k.reverse = p.body[0] != 0
			}
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("no sort keys")
	}
	return keys, nil
}
