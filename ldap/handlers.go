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

	ber "github.com/go-asn1-ber/asn1-ber"
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

// helloPrefix names the reserved bind the guard sends first on each
// internal connection, so the handlers learn which client it serves.
// Clients cannot send it: the guard refuses binds with this name.
const helloPrefix = "scimldap-guard-hello="

// guarded wraps a handler so that a panic is logged instead of killing the
// process (gldap runs each request in a goroutine without recovery). The
// bind and search handlers recover themselves and answer "other"; this is
// the backstop for the rest.
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

func (s *Server) handleSearch(w *gldap.ResponseWriter, r *gldap.Request) {
	done := r.NewSearchDoneResponse(gldap.WithResponseCode(resSuccess))
	defer func() {
		if p := recover(); p != nil {
			s.logPanic(p)
			done.SetResultCode(resOther)
			done.SetDiagnosticMessage("internal error; the appliance log has the details")
		}
		w.Write(done)
	}()
	fail := func(code int, format string, args ...any) {
		done.SetResultCode(code)
		done.SetDiagnosticMessage(fmt.Sprintf(format, args...))
	}
	m, err := r.GetSearchMessage()
	if err != nil {
		fail(resProtocolError, "malformed search request")
		return
	}
	ci := s.connFor(r)
	if ci == nil {
		fail(resUnwillingToPerform, "connect through the appliance's LDAP listener")
		return
	}
	limit := s.cfg.TimeLimit
	if m.TimeLimit > 0 && time.Duration(m.TimeLimit)*time.Second < limit {
		limit = time.Duration(m.TimeLimit) * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer ci.track(m.GetID(), cancel)()

	f := ci.takeFilter(m.GetID())
	if f == nil {
		fail(resProtocolError, "search filter missing")
		return
	}
	base, err := normDN(m.BaseDN)
	if err != nil {
		fail(resInvalidDNSyntax, "base DN %q: %v", m.BaseDN, err)
		return
	}
	sel := parseSelection(m.Attributes)
	emit := func(e *entry) error {
		resp := r.NewSearchResponseEntry(e.dn)
		for _, a := range sel.attributes(e) {
			if m.TypesOnly {
				resp.AddAttribute(a.name, []string{})
			} else {
				resp.AddAttribute(a.name, a.vals)
			}
		}
		return w.Write(resp)
	}

	var paging *gldap.ControlPaging
	var sortKeys []sortKey
	sortRequested := false
	for _, c := range m.Controls {
		switch x := c.(type) {
		case *gldap.ControlPaging:
			paging = x
		case *gldap.ControlString:
			switch x.ControlType {
			case oidSortRequest:
				sortRequested = true
				sortKeys, err = decodeSortKeys([]byte(x.ControlValue))
				if err != nil && x.Criticality {
					fail(resUnavailableCritical, "server-side sort: %v", err)
					return
				}
			default:
				if x.Criticality {
					fail(resUnavailableCritical, "critical control %s is not supported", x.ControlType)
					return
				}
			}
		}
	}

	id := ci.identity()
	// The root DSE and the subschema entry are readable before binding.
	if m.Scope == gldap.BaseObject && (base == "" || base == "cn=subschema") {
		e := s.rootDSE(id)
		if base != "" {
			e = s.subschema()
		}
		if f.match(e) == trueT {
			if err := emit(e); err != nil {
				return
			}
		}
		s.finishControls(done, paging, sortRequested, "")
		return
	}
	if id == nil {
		fail(resInsufficientAccess, "bind as a service account first; anonymous clients may read only the root DSE and cn=Subschema")
		return
	}
	v, err := s.dir.view(ctx, id.tenant)
	if err != nil {
		s.log.Error("search: tenant view unavailable", "tenant", id.tenant, "err", err)
		fail(resOther, "the directory of this tenant is not available; the appliance log has the details")
		return
	}
	q := query{base: base, scope: int(m.Scope), filter: f}
	var suffixEntry *entry
	switch {
	case isUnder(v.tenantDN, base) && base != v.tenantDN:
		// A base above the tenant (the suffix or the root): the tenant's
		// subtree only. The suffix itself is a virtual entry.
		if base != s.suffix && base != "" {
			fail(resNoSuchObject, "no entry %q", m.BaseDN)
			return
		}
		if q.scope != scopeOne && base == s.suffix {
			suffixEntry = s.suffixEntry()
		}
		if q.scope == scopeBase {
			if base == "" { // handled above; unreachable
				return
			}
			if f.match(suffixEntry) == trueT {
				emit(suffixEntry)
			}
			s.finishControls(done, paging, sortRequested, "")
			return
		}
	case !isUnder(base, v.tenantDN):
		fail(resNoSuchObject, "no entry %q in this tenant's directory", m.BaseDN)
		return
	default:
		v.mu.RLock()
		ok := v.exists(base)
		v.mu.RUnlock()
		if !ok {
			done.SetMatchedDN(s.cfg.Tenant(id.tenant).TenantDN(id.tenant))
			fail(resNoSuchObject, "no entry %q", m.BaseDN)
			return
		}
	}

	sizeLimit := int(m.SizeLimit)
	if paging == nil && s.cfg.SizeLimit > 0 && (sizeLimit == 0 || s.cfg.SizeLimit < sizeLimit) {
		sizeLimit = s.cfg.SizeLimit
	}
	signature := fmt.Sprintf("%s|%d|%s|%v|%v|%d", base, q.scope, f.String(), m.Attributes, m.TypesOnly, len(sortKeys))

	// Collect the page (or the whole result) under the read lock; entries
	// are immutable, so they are written after it is released.
	var out []*entry
	more := false
	var st *pageState
	var cookie string
	if paging != nil {
		ci.mu.Lock()
		if ci.pages == nil {
			ci.pages = map[string]*pageState{}
		}
		for k, p := range ci.pages { // expire old cursors
			if time.Now().After(p.expires) {
				delete(ci.pages, k)
			}
		}
		if len(paging.Cookie) > 0 {
			st = ci.pages[string(paging.Cookie)]
			delete(ci.pages, string(paging.Cookie))
		}
		ci.mu.Unlock()
		if len(paging.Cookie) > 0 && (st == nil || st.signature != signature) {
			fail(resUnwillingToPerform, "paged results cookie is unknown or expired (cursors last %s); start the search again", s.cfg.PageCookieTTL)
			s.finishControls(done, paging, sortRequested, "")
			return
		}
		if paging.PagingSize == 0 { // the client abandons the paged search
			s.finishControls(done, paging, sortRequested, "")
			return
		}
		if st == nil {
			st = &pageState{signature: signature}
		}
	}
	pageSize := 0
	if paging != nil {
		pageSize = int(paging.PagingSize)
	}
	remaining := -1 // entries the size limit still allows
	if sizeLimit > 0 {
		remaining = sizeLimit
		if st != nil {
			remaining -= st.returned
		}
	}
	want := func() int { // entries to gather for this response, plus one
		n := -1
		if pageSize > 0 {
			n = pageSize
		}
		if remaining >= 0 && (n < 0 || remaining < n) {
			n = remaining
		}
		return n
	}()

	if err := v.sync(ctx, s.st); err != nil {
		s.log.Warn("search: applying recent changes failed; serving the last good view", "tenant", id.tenant, "err", err)
	}
	v.mu.RLock()
	if suffixEntry != nil && (st == nil || st.returned == 0) && f.match(suffixEntry) == trueT {
		out = append(out, suffixEntry)
	}
	if len(sortKeys) > 0 {
		if st == nil || st.sorted == nil {
			var all []*entry
			all = append(all, out...)
			out = nil
			v.run(q, func(e *entry) bool { all = append(all, e); return ctx.Err() == nil })
			sortEntries(all, sortKeys)
			if st != nil {
				st.sorted = all
			} else {
				out = all
			}
		}
		if st != nil {
			end := len(st.sorted)
			if want >= 0 && st.pos+want < end {
				end = st.pos + want
			}
			out = st.sorted[st.pos:end]
			more = end < len(st.sorted)
			st.pos = end
		}
	} else {
		if st != nil {
			q.after = st.after
		}
		v.run(q, func(e *entry) bool {
			if want >= 0 && len(out) >= want {
				more = true
				return false
			}
			out = append(out, e)
			return ctx.Err() == nil
		})
	}
	v.mu.RUnlock()

	// Without paging, "more" means the size limit cut the result.
	if st == nil && len(sortKeys) > 0 && remaining >= 0 && len(out) > remaining {
		out, more = out[:remaining], true
	}
	for _, e := range out {
		if ctx.Err() != nil {
			break
		}
		if err := emit(e); err != nil {
			return // client gone
		}
	}
	if st != nil {
		st.returned += len(out)
		if len(out) > 0 {
			st.after = out[len(out)-1].key
		}
	}
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		return // abandoned: the guard drops this response
	case ctx.Err() != nil:
		fail(resTimeLimitExceeded, "time limit exceeded")
	case more && paging != nil && (remaining < 0 || st.returned < sizeLimit):
		cookie = newCookie()
		st.expires = time.Now().Add(s.cfg.PageCookieTTL)
		ci.mu.Lock()
		if ci.pages != nil {
			ci.pages[cookie] = st
		}
		ci.mu.Unlock()
	case more:
		fail(resSizeLimitExceeded, "size limit of %d entries exceeded", sizeLimit)
	}
	s.finishControls(done, paging, sortRequested, cookie)
}

// finishControls attaches the paged-results control (on every page,
// including the last, which carries an empty cookie) and the sort response.
func (s *Server) finishControls(done *gldap.SearchResponseDone, paging *gldap.ControlPaging, sorted bool, cookie string) {
	var ctrls []gldap.Control
	if paging != nil {
		p, _ := gldap.NewControlPaging(0)
		p.SetCookie([]byte(cookie))
		ctrls = append(ctrls, p)
	}
	if sorted {
		seq := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "SortResult")
		seq.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, int64(resSuccess), "sortResult"))
		c, err := gldap.NewControlString(oidSortResponse, gldap.WithControlValue(string(seq.Bytes())))
		if err == nil {
			ctrls = append(ctrls, c)
		}
	}
	if len(ctrls) > 0 {
		done.SetControls(ctrls...)
	}
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
