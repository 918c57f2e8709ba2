package ldap

import (
	"bufio"
	"context"
	stdtls "crypto/tls"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// guardConn is one client connection and its internal connection to gldap.
type guardConn struct {
	s  *Server
	ci *connInfo

	wmu     sync.Mutex // serialises writes to client and swaps on StartTLS
	client  net.Conn
	bw      *bufio.Writer // on client, under wmu
	encBuf  []byte        // entry encoding buffer, under wmu
	cr      *bufio.Reader
	backend net.Conn
	br      *bufio.Reader

	lastOut   atomic.Int64 // unix nanos of the last byte sent to the client
	amu       sync.Mutex
	abandoned map[int64]bool

	searches atomic.Int32 // searches running on this connection
	wg       sync.WaitGroup

	once sync.Once
}

// helloID is the message id of the reserved hello bind.
const helloID = 0x7fffffff

func (s *Server) serveConn(c net.Conn, ldaps bool) {
	gc := &guardConn{s: s, client: c, abandoned: map[int64]bool{}}
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.conns[gc] = struct{}{}
	s.mu.Unlock()
	defer func() {
		gc.close()
		gc.wg.Wait() // searches end once their writes fail on the closed socket
		s.mu.Lock()
		delete(s.conns, gc)
		s.mu.Unlock()
	}()
	if ldaps {
		tc := stdtls.Server(c, s.tlsCfg)
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			s.log.Debug("LDAPS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
			return
		}
		tc.SetDeadline(time.Time{})
		gc.client = tc
	}
	host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
	gc.ci = &connInfo{remote: host, tls: ldaps, token: newCookie()}
	gc.cr = bufio.NewReaderSize(gc.client, 16<<10)
	gc.bw = bufio.NewWriterSize(gc.client, 64<<10)
	if err := gc.connectBackend(); err != nil {
		s.log.Error("internal LDAP connection failed", "err", err)
		gc.writeClient(noticeOfDisconnection(resBusy, "the directory is not available right now"))
		return
	}
	go gc.pumpBackend()
	gc.pumpClient()
}

func (gc *guardConn) connectBackend() error {
	s := gc.s
	s.mu.Lock()
	s.byToken[gc.ci.token] = gc.ci
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.byToken, gc.ci.token)
		s.mu.Unlock()
	}()
	b, err := net.DialTimeout("tcp", s.backendAddr, 5*time.Second)
	if err != nil {
		return err
	}
	gc.backend = b
	gc.br = bufio.NewReaderSize(b, 64<<10)
	auth := appendTLV(nil, 0x80, []byte(gc.ci.token))
	body := append(encodeInt(0x02, 3), appendTLV(nil, 0x04, []byte(helloPrefix+gc.ci.token))...)
	body = append(body, auth...)
	msg := append(encodeInt(0x02, helloID), appendTLV(nil, tagBindRequest, body)...)
	b.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := b.Write(appendTLV(nil, 0x30, msg)); err != nil {
		return err
	}
	frame, err := readFrame(gc.br, 1<<16)
	if err != nil {
		return err
	}
	b.SetDeadline(time.Time{})
	env, err := parseEnvelope(frame)
	if err != nil || env.id != helloID || env.op.tag != tagBindResponse {
		return errors.New("unexpected answer to the internal hello")
	}
	if kids, err := children(env.op.body); err != nil || len(kids) == 0 || decodeInt(kids[0].body) != resSuccess {
		return errors.New("internal hello refused")
	}
	return nil
}

func (gc *guardConn) close() {
	gc.once.Do(func() {
		gc.wmu.Lock()
		gc.client.Close()
		gc.wmu.Unlock()
		if gc.backend != nil {
			gc.backend.Close()
		}
	})
}

func (gc *guardConn) writeClient(b []byte) error {
	gc.wmu.Lock()
	defer gc.wmu.Unlock()
	gc.client.SetWriteDeadline(time.Now().Add(60 * time.Second))
	gc.bw.Write(b)
	err := gc.bw.Flush()
	gc.lastOut.Store(time.Now().UnixNano())
	return err
}

// pumpBackend copies gldap's responses to the client, dropping those of
// abandoned operations.
func (gc *guardConn) pumpBackend() {
	defer gc.close()
	for {
		frame, err := readFrame(gc.br, 256<<20)
		if err != nil {
			return
		}
		env, err := parseEnvelope(frame)
		if err != nil {
			return
		}
		if env.id != 0 && gc.isAbandoned(env.id, env.op.tag) {
			continue
		}
		if err := gc.writeClient(frame); err != nil {
			return
		}
	}
}

func (gc *guardConn) isAbandoned(id int64, tag byte) bool {
	gc.amu.Lock()
	defer gc.amu.Unlock()
	if !gc.abandoned[id] {
		return false
	}
	if tag != tagSearchEntry && tag != tagSearchReference {
		delete(gc.abandoned, id) // the final response: forget the id
	}
	return true
}

// pumpClient reads the client's requests, answers what the guard owns and
// forwards bind and search to gldap.
func (gc *guardConn) pumpClient() {
	s := gc.s
	idle := s.cfg.IdleTimeout
	for {
		// Wait for the first byte of the next message with the idle
		// deadline; a long answer being streamed counts as activity.
		gc.client.SetReadDeadline(time.Now().Add(idle))
		if _, err := gc.cr.Peek(1); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && time.Since(time.Unix(0, gc.lastOut.Load())) < idle {
				continue
			}
			return
		}
		gc.client.SetReadDeadline(time.Now().Add(idle))
		frame, err := readFrame(gc.cr, s.cfg.MaxMessageBytes)
		if err != nil {
			if errors.Is(err, errFrameTooLarge) {
				gc.writeClient(noticeOfDisconnection(resProtocolError, "message larger than the configured limit"))
			} else if !isNetClose(err) {
				gc.writeClient(noticeOfDisconnection(resProtocolError, "malformed message: "+err.Error()))
			}
			return
		}
		if err := checkBER(frame, 0); err != nil {
			gc.writeClient(noticeOfDisconnection(resProtocolError, "malformed message: "+err.Error()))
			return
		}
		env, err := parseEnvelope(frame)
		if err != nil {
			gc.writeClient(noticeOfDisconnection(resProtocolError, "malformed message: "+err.Error()))
			return
		}
		switch env.op.tag {
		case tagSearchRequest:
			gc.search(env)
		case tagBindRequest:
			if !gc.bind(env, frame) {
				return
			}
		case tagUnbindRequest:
			gc.forward(frame)
			return
		case tagAbandonRequest:
			target := decodeInt(env.op.body)
			gc.amu.Lock()
			gc.abandoned[target] = true
			gc.amu.Unlock()
			gc.ci.abandon(target)
		case tagExtendedRequest:
			if !gc.extended(env) {
				return
			}
		case tagCompareRequest:
			gc.writeClient(gc.compare(env))
		case tagModifyRequest, tagAddRequest, tagDelRequest, tagModDNRequest:
			gc.writeClient(ldapResult(env.id, responseTagFor(env.op.tag), resUnwillingToPerform, "", "this directory is read-only: Entra ID owns its data; change it there"))
		default:
			gc.writeClient(noticeOfDisconnection(resProtocolError, "unknown operation"))
			return
		}
	}
}

func isNetClose(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) || strings.Contains(err.Error(), "EOF") || strings.Contains(err.Error(), "reset by peer")
}

func (gc *guardConn) forward(frame []byte) bool {
	gc.backend.SetWriteDeadline(time.Now().Add(30 * time.Second))
	_, err := gc.backend.Write(frame)
	return err == nil
}

// bind screens a BindRequest: LDAPv3 only, simple authentication only (SASL
// gets authMethodNotSupported instead of a dropped connection), and never
// the reserved hello name.
func (gc *guardConn) bind(env envelope, frame []byte) bool {
	kids, err := children(env.op.body)
	if err != nil || len(kids) < 3 || kids[0].tag != 0x02 || kids[1].tag != 0x04 {
		return gc.writeClient(noticeOfDisconnection(resProtocolError, "malformed bind request")) == nil && false
	}
	reply := func(code int, diag string) bool {
		return gc.writeClient(ldapResult(env.id, tagBindResponse, code, "", diag)) == nil
	}
	if decodeInt(kids[0].body) != 3 {
		gc.ci.setIdentity(nil)
		return reply(resProtocolError, "only LDAP version 3 is supported")
	}
	switch kids[2].tag {
	case 0x80: // simple
	case 0xa3:
		gc.ci.setIdentity(nil)
		return reply(resAuthMethodNotSupported, "SASL binds are not supported; use a simple bind with a service account over LDAPS or StartTLS")
	default:
		return reply(resAuthMethodNotSupported, "unknown authentication choice")
	}
	if strings.HasPrefix(string(kids[1].body), helloPrefix) {
		return reply(resInvalidCredentials, "invalid credentials")
	}
	return gc.forward(frame)
}

// extended answers StartTLS and WhoAmI; other extended operations are
// refused with protocolError, as RFC 4511 §4.12 prescribes.
func (gc *guardConn) extended(env envelope) bool {
	kids, err := children(env.op.body)
	if err != nil || len(kids) == 0 || kids[0].tag != 0x80 {
		return gc.writeClient(extendedResult(env.id, resProtocolError, "malformed extended request", "", nil)) == nil
	}
	switch oid := string(kids[0].body); oid {
	case oidStartTLS:
		gc.ci.mu.Lock()
		already := gc.ci.tls
		gc.ci.mu.Unlock()
		if already {
			return gc.writeClient(extendedResult(env.id, resOperationsError, "TLS is already established", oidStartTLS, nil)) == nil
		}
		if gc.s.tlsCfg == nil {
			return gc.writeClient(extendedResult(env.id, resProtocolError, "StartTLS is not available: no certificate configured", oidStartTLS, nil)) == nil
		}
		gc.wmu.Lock()
		defer gc.wmu.Unlock()
		gc.bw.Write(extendedResult(env.id, resSuccess, "", oidStartTLS, nil))
		if err := gc.bw.Flush(); err != nil {
			return false
		}
		tc := stdtls.Server(gc.client, gc.s.tlsCfg)
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			return false
		}
		tc.SetDeadline(time.Time{})
		gc.client = tc
		gc.cr = bufio.NewReaderSize(tc, 16<<10)
		gc.bw = bufio.NewWriterSize(tc, 64<<10)
		gc.ci.mu.Lock()
		gc.ci.tls = true
		gc.ci.mu.Unlock()
		return true
	case oidWhoAmI:
		authz := ""
		if id := gc.ci.identity(); id != nil {
			authz = "dn:" + id.dn
		}
		return gc.writeClient(extendedResult(env.id, resSuccess, "", "", []byte(authz))) == nil
	default:
		return gc.writeClient(extendedResult(env.id, resProtocolError, "extended operation "+oid+" is not supported", "", nil)) == nil
	}
}

// compare answers a CompareRequest from the directory, with the same
// access rules as search.
func (gc *guardConn) compare(env envelope) []byte {
	res := func(code int, diag string) []byte {
		return ldapResult(env.id, tagCompareResponse, code, "", diag)
	}
	kids, err := children(env.op.body)
	if err != nil || len(kids) != 2 || kids[0].tag != 0x04 || kids[1].tag != 0x30 {
		return res(resProtocolError, "malformed compare request")
	}
	ava, err := children(kids[1].body)
	if err != nil || len(ava) != 2 || ava[0].tag != 0x04 || ava[1].tag != 0x04 {
		return res(resProtocolError, "malformed attribute value assertion")
	}
	id := gc.ci.identity()
	if id == nil {
		return res(resInsufficientAccess, "bind as a service account first")
	}
	ndn, err := normDN(string(kids[0].body))
	if err != nil {
		return res(resInvalidDNSyntax, "invalid DN: "+err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := gc.s.dir.view(ctx, id.tenant)
	if err != nil {
		return res(resOther, "the directory of this tenant is not available")
	}
	t := lookupAttr(baseAttr(string(ava[0].body)))
	if t == nil {
		return res(resUndefinedAttrType, "unknown attribute "+string(ava[0].body))
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	e := v.byNDN[ndn]
	if e == nil || !isUnder(ndn, v.tenantDN) {
		return res(resNoSuchObject, "no such entry")
	}
	if a, ok := e.get(t); ok {
		want := t.normalize(string(ava[1].body))
		for _, v := range a.vals {
			if t.normalize(v) == want {
				return res(resCompareTrue, "")
			}
		}
	}
	return res(resCompareFalse, "")
}
