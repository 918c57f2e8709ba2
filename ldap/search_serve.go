package ldap

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Searches are served by the front end itself rather than forwarded to
// gldap: gldap builds every entry as a tree of go-asn1-ber packets and the
// extra internal hop re-frames every response, which profiled at more than
// a whole slapd search costs. Here entries are appended to one buffer, the
// full-entry encoding is computed once per entry and reused, and a search's
// responses are flushed together.

// searchReq is a decoded SearchRequest with its controls.
type searchReq struct {
	id        int64
	baseDN    string
	base      string // normalised
	scope     int
	sizeLimit int
	timeLimit int
	typesOnly bool
	filter    *lfilter
	attrs     []string
	paging    *pagingCtl
	sortKeys  []sortKey
	sortAsked bool
}

type pagingCtl struct {
	size   int
	cookie []byte
}

// searchResult is how a search ended.
type searchResult struct {
	code    int
	diag    string
	matched string
	cookie  string // next paged-results cookie, "" on the last page
}

func errResult(code int, format string, args ...any) searchResult {
	return searchResult{code: code, diag: fmt.Sprintf(format, args...)}
}

// parseSearch decodes a SearchRequest (RFC 4511 §4.5.1) and its controls.
// A bad request gets protocolError; an unsupported critical control gets
// unavailableCriticalExtension.
func parseSearch(env envelope) (*searchReq, *searchResult) {
	kids, err := children(env.op.body)
	if err != nil || len(kids) != 8 || kids[0].tag != 0x04 || kids[7].tag != 0x30 {
		r := errResult(resProtocolError, "malformed search request")
		return nil, &r
	}
	q := &searchReq{id: env.id, baseDN: string(kids[0].body)}
	q.scope = int(decodeInt(kids[1].body))
	q.sizeLimit = int(decodeInt(kids[3].body))
	q.timeLimit = int(decodeInt(kids[4].body))
	q.typesOnly = len(kids[5].body) == 1 && kids[5].body[0] != 0
	if q.scope < scopeBase || q.scope > scopeSub || q.sizeLimit < 0 || q.timeLimit < 0 {
		r := errResult(resProtocolError, "search scope or limits out of range")
		return nil, &r
	}
	if q.filter, err = decodeFilter(kids[6], 0); err != nil {
		r := errResult(resProtocolError, "malformed search filter: %v", err)
		return nil, &r
	}
	attrs, err := children(kids[7].body)
	if err != nil {
		r := errResult(resProtocolError, "malformed attribute list")
		return nil, &r
	}
	for _, a := range attrs {
		q.attrs = append(q.attrs, string(a.body))
	}
	if q.base, err = normDN(q.baseDN); err != nil {
		r := errResult(resInvalidDNSyntax, "base DN %q: %v", q.baseDN, err)
		return nil, &r
	}
	ctrls, err := children(env.ctrl)
	if err != nil {
		r := errResult(resProtocolError, "malformed controls")
		return nil, &r
	}
	for _, c := range ctrls {
		parts, err := children(c.body)
		if err != nil || len(parts) == 0 || parts[0].tag != 0x04 {
			r := errResult(resProtocolError, "malformed control")
			return nil, &r
		}
		oid, critical, value := string(parts[0].body), false, []byte(nil)
		for _, p := range parts[1:] {
			switch p.tag {
			case 0x01:
				critical = len(p.body) == 1 && p.body[0] != 0
			case 0x04:
				value = p.body
			}
		}
		switch oid {
		case oidPaging:
			pc, err := decodePaging(value)
			if err != nil {
				r := errResult(resProtocolError, "paged results control: %v", err)
				return nil, &r
			}
			q.paging = pc
		case oidSortRequest:
			q.sortAsked = true
			q.sortKeys, err = decodeSortKeys(value)
			if err != nil && critical {
				r := errResult(resUnavailableCritical, "server-side sort: %v", err)
				return nil, &r
			}
		default:
			if critical {
				r := errResult(resUnavailableCritical, "critical control %s is not supported", oid)
				return nil, &r
			}
		}
	}
	return q, nil
}

// decodePaging reads realSearchControlValue ::= SEQUENCE { size INTEGER,
// cookie OCTET STRING } (RFC 2696).
func decodePaging(v []byte) (*pagingCtl, error) {
	seq, _, err := next(v)
	if err != nil || seq.tag != 0x30 {
		return nil, errors.New("value is not a SEQUENCE")
	}
	parts, err := children(seq.body)
	if err != nil || len(parts) != 2 || parts[0].tag != 0x02 || parts[1].tag != 0x04 {
		return nil, errors.New("value must be { size, cookie }")
	}
	size := decodeInt(parts[0].body)
	if size < 0 {
		return nil, errors.New("negative page size")
	}
	return &pagingCtl{size: int(min(size, 1<<30)), cookie: parts[1].body}, nil
}

// doSearch runs q for the connection's identity and calls emit for each
// entry to return, in order.
func (s *Server) doSearch(ctx context.Context, ci *connInfo, q *searchReq, emit func(*entry) error) searchResult {
	id := ci.identity()
	f := q.filter
	// The root DSE and the subschema entry are readable before binding.
	if q.scope == scopeBase && (q.base == "" || q.base == "cn=subschema") {
		e := s.rootDSE(id)
		if q.base != "" {
			e = s.subschema()
		}
		if f.match(e) == trueT {
			emit(e)
		}
		return searchResult{}
	}
	if id == nil {
		return errResult(resInsufficientAccess, "bind as a service account first; anonymous clients may read only the root DSE and cn=Subschema")
	}
	v, err := s.dir.view(ctx, id.tenant)
	if errors.Is(err, context.DeadlineExceeded) {
		return errResult(resTimeLimitExceeded, "time limit exceeded while the directory was loading")
	}
	if errors.Is(err, context.Canceled) {
		return searchResult{code: -1} // abandoned
	}
	if err != nil {
		s.log.Error("search: tenant view unavailable", "tenant", id.tenant, "err", err)
		return errResult(resOther, "the directory of this tenant is not available; the appliance log has the details")
	}
	qq := query{base: q.base, scope: q.scope, filter: f}
	var suffixEntry *entry
	switch {
	case isUnder(v.tenantDN, q.base) && q.base != v.tenantDN:
		// A base above the tenant (the suffix): the tenant's subtree only.
		// The suffix itself is a virtual entry.
		if q.base != s.suffix {
			return errResult(resNoSuchObject, "no entry %q", q.baseDN)
		}
		if q.scope != scopeOne {
			suffixEntry = s.suffixEntry()
		}
		if q.scope == scopeBase {
			if f.match(suffixEntry) == trueT {
				emit(suffixEntry)
			}
			return searchResult{}
		}
	case !isUnder(q.base, v.tenantDN):
		return errResult(resNoSuchObject, "no entry %q in this tenant's directory", q.baseDN)
	default:
		v.mu.RLock()
		ok := v.exists(q.base)
		v.mu.RUnlock()
		if !ok {
			r := errResult(resNoSuchObject, "no entry %q", q.baseDN)
			r.matched = s.cfg.Tenant(id.tenant).TenantDN(id.tenant)
			return r
		}
	}

	sizeLimit := q.sizeLimit
	if q.paging == nil && s.cfg.SizeLimit > 0 && (sizeLimit == 0 || s.cfg.SizeLimit < sizeLimit) {
		sizeLimit = s.cfg.SizeLimit
	}
	var st *pageState
	if q.paging != nil {
		signature := fmt.Sprintf("%s|%d|%s|%v|%v|%d", q.base, q.scope, f.String(), q.attrs, q.typesOnly, len(q.sortKeys))
		ci.mu.Lock()
		if ci.pages == nil {
			ci.pages = map[string]*pageState{}
		}
		for k, p := range ci.pages { // expire old cursors
			if time.Now().After(p.expires) {
				delete(ci.pages, k)
			}
		}
		if len(q.paging.cookie) > 0 {
			st = ci.pages[string(q.paging.cookie)]
			delete(ci.pages, string(q.paging.cookie))
		}
		ci.mu.Unlock()
		if len(q.paging.cookie) > 0 && (st == nil || st.signature != signature) {
			return errResult(resUnwillingToPerform, "paged results cookie is unknown or expired (cursors last %s); start the search again", s.cfg.PageCookieTTL)
		}
		if q.paging.size == 0 { // the client abandons the paged search
			return searchResult{}
		}
		if st == nil {
			st = &pageState{signature: signature}
		}
	}
	remaining := -1 // entries the size limit still allows
	if sizeLimit > 0 {
		remaining = sizeLimit
		if st != nil {
			remaining -= st.returned
		}
	}
	want := -1 // entries to gather for this response
	if q.paging != nil {
		want = q.paging.size
	}
	if remaining >= 0 && (want < 0 || remaining < want) {
		want = remaining
	}

	if err := v.sync(ctx, s.st); err != nil {
		s.log.Warn("search: applying recent changes failed; serving the last good view", "tenant", id.tenant, "err", err)
	}
	// Gather under the read lock; entries are immutable, so they are
	// written after it is released.
	var out []*entry
	more := false
	v.mu.RLock()
	if suffixEntry != nil && (st == nil || st.returned == 0) && f.match(suffixEntry) == trueT {
		out = append(out, suffixEntry)
	}
	if len(q.sortKeys) > 0 {
		all := out
		if st == nil || st.sorted == nil {
			v.run(qq, func(e *entry) bool { all = append(all, e); return ctx.Err() == nil })
			sortEntries(all, q.sortKeys)
			if st != nil {
				st.sorted = all
			}
		}
		if st != nil {
			all = st.sorted[st.pos:]
		}
		out = all
		if want >= 0 && len(out) > want {
			out, more = out[:want], true
		}
		if st != nil {
			st.pos += len(out)
		}
	} else {
		if st != nil {
			qq.after = st.after
		}
		v.run(qq, func(e *entry) bool {
			if want >= 0 && len(out) >= want {
				more = true
				return false
			}
			out = append(out, e)
			return ctx.Err() == nil
		})
	}
	v.mu.RUnlock()

	for _, e := range out {
		if ctx.Err() != nil {
			break
		}
		if err := emit(e); err != nil {
			return searchResult{code: -1} // client gone
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
		return searchResult{code: -1} // abandoned: no response
	case ctx.Err() != nil:
		return errResult(resTimeLimitExceeded, "time limit exceeded")
	case more && q.paging != nil && (remaining < 0 || st.returned < sizeLimit):
		cookie := newCookie()
		st.expires = time.Now().Add(s.cfg.PageCookieTTL)
		ci.mu.Lock()
		if ci.pages != nil {
			ci.pages[cookie] = st
		}
		ci.mu.Unlock()
		return searchResult{cookie: cookie}
	case more:
		return errResult(resSizeLimitExceeded, "size limit of %d entries exceeded", sizeLimit)
	}
	return searchResult{}
}

// maxSearchesPerConn bounds the searches one connection runs at once.
const maxSearchesPerConn = 16

// search serves one SearchRequest on its own goroutine, so that an
// Abandon or further requests are read while it streams.
func (gc *guardConn) search(env envelope) {
	q, bad := parseSearch(env)
	if bad != nil {
		gc.writeClient(ldapResult(env.id, tagSearchDone, bad.code, bad.matched, bad.diag))
		return
	}
	if gc.searches.Add(1) > maxSearchesPerConn {
		gc.searches.Add(-1)
		gc.writeClient(ldapResult(env.id, tagSearchDone, resBusy, "", fmt.Sprintf("more than %d searches at once on one connection", maxSearchesPerConn)))
		return
	}
	gc.wg.Add(1)
	go func() {
		defer gc.wg.Done()
		defer gc.searches.Add(-1)
		gc.runSearch(q)
	}()
}

func (gc *guardConn) runSearch(q *searchReq) {
	s := gc.s
	limit := s.cfg.TimeLimit
	if q.timeLimit > 0 && time.Duration(q.timeLimit)*time.Second < limit {
		limit = time.Duration(q.timeLimit) * time.Second
	}
	ctx, cancel := context.WithTimeout(s.base, limit)
	defer gc.ci.track(q.id, cancel)()
	sel := parseSelection(q.attrs)

	gc.wmu.Lock()
	defer gc.wmu.Unlock()
	w := gc.bw
	gc.client.SetWriteDeadline(time.Now().Add(60 * time.Second))
	buf := gc.encBuf // reused across searches; wmu is held
	defer func() { gc.encBuf = buf[:0] }()
	res := func() (res searchResult) {
		defer func() {
			if p := recover(); p != nil {
				s.logPanic(p)
				res = errResult(resOther, "internal error; the appliance log has the details")
			}
		}()
		return s.doSearch(ctx, gc.ci, q, func(e *entry) error {
			buf = appendEntry(buf[:0], q.id, e, sel, q.typesOnly)
			_, err := w.Write(buf)
			return err
		})
	}()
	if res.code < 0 {
		w.Flush()
		return
	}
	var ctrls []byte
	if q.paging != nil {
		val := appendTLV(nil, 0x30, append(encodeInt(0x02, 0), appendTLV(nil, 0x04, []byte(res.cookie))...))
		ctrls = appendTLV(ctrls, 0x30, append(appendTLV(nil, 0x04, []byte(oidPaging)), appendTLV(nil, 0x04, val)...))
	}
	if q.sortAsked {
		val := appendTLV(nil, 0x30, encodeInt(0x0a, 0))
		ctrls = appendTLV(ctrls, 0x30, append(appendTLV(nil, 0x04, []byte(oidSortResponse)), appendTLV(nil, 0x04, val)...))
	}
	w.Write(resultWithControls(q.id, tagSearchDone, res.code, res.matched, res.diag, ctrls))
	if w.Flush() == nil {
		gc.lastOut.Store(time.Now().UnixNano())
	}
}

// resultWithControls encodes an LDAPResult message with optional controls.
func resultWithControls(id int64, tag byte, code int, matched, diag string, ctrls []byte) []byte {
	body := encodeInt(0x0a, int64(code))
	body = appendTLV(body, 0x04, []byte(matched))
	body = appendTLV(body, 0x04, []byte(diag))
	msg := encodeInt(0x02, id)
	msg = appendTLV(msg, tag, body)
	if ctrls != nil {
		msg = appendTLV(msg, 0xa0, ctrls)
	}
	return appendTLV(nil, 0x30, msg)
}

// tlvSize is the encoded size of an element with an n-byte body.
func tlvSize(n int) int {
	switch {
	case n < 0x80:
		return 2 + n
	case n < 0x100:
		return 3 + n
	case n < 0x10000:
		return 4 + n
	}
	return 6 + n
}

// appendEntry encodes a SearchResultEntry with the attributes sel asks
// for. It sizes every element first and then appends, so it allocates
// nothing beyond growing dst (which the caller reuses).
func appendEntry(dst []byte, id int64, e *entry, sel selection, typesOnly bool) []byte {
	var synth [2]eattr
	ns := 0
	for _, t := range []*attrType{typeEntryDN, typeSubschema} {
		if sel.synthetic(e, t) {
			synth[ns], _ = e.get(t)
			ns++
		}
	}
	attrSize := func(a eattr) (seq, set int) {
		if !typesOnly {
			for _, v := range a.vals {
				set += tlvSize(len(v))
			}
		}
		return tlvSize(len(a.t.name)) + tlvSize(set), set
	}
	list := 0
	for i := range e.refs {
		if sel.wants(e, i) {
			seq, _ := attrSize(e.view(i))
			list += tlvSize(seq)
		}
	}
	for _, a := range synth[:ns] {
		seq, _ := attrSize(a)
		list += tlvSize(seq)
	}
	op := tlvSize(len(e.dn)) + tlvSize(list)
	idEnc := encodeInt(0x02, id)
	dst = tlvHeader(dst, 0x30, len(idEnc)+tlvSize(op))
	dst = append(dst, idEnc...)
	dst = tlvHeader(dst, tagSearchEntry, op)
	dst = appendTLV(dst, 0x04, []byte(e.dn))
	dst = tlvHeader(dst, 0x30, list)
	put := func(a eattr) {
		seq, set := attrSize(a)
		dst = tlvHeader(dst, 0x30, seq)
		dst = tlvHeader(dst, 0x04, len(a.t.name))
		dst = append(dst, a.t.name...)
		dst = tlvHeader(dst, 0x31, set)
		if !typesOnly {
			for _, v := range a.vals {
				dst = tlvHeader(dst, 0x04, len(v))
				dst = append(dst, v...)
			}
		}
	}
	for i := range e.refs {
		if sel.wants(e, i) {
			put(e.view(i))
		}
	}
	for _, a := range synth[:ns] {
		put(a)
	}
	return dst
}
