package ldap

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// This file reads LDAP messages off the wire as whole BER frames and writes
// the few responses the guard answers itself. It never recurses on
// attacker-controlled nesting beyond maxBERDepth and never allocates more
// than the configured message size.

// LDAP protocolOp tags (RFC 4511 §4.2 … §4.14), as they appear on the wire.
const (
	tagBindRequest     = 0x60
	tagBindResponse    = 0x61
	tagUnbindRequest   = 0x42
	tagSearchRequest   = 0x63
	tagSearchEntry     = 0x64
	tagSearchDone      = 0x65
	tagSearchReference = 0x73
	tagModifyRequest   = 0x66
	tagModifyResponse  = 0x67
	tagAddRequest      = 0x68
	tagAddResponse     = 0x69
	tagDelRequest      = 0x4a
	tagDelResponse     = 0x6b
	tagModDNRequest    = 0x6c
	tagModDNResponse   = 0x6d
	tagCompareRequest  = 0x6e
	tagCompareResponse = 0x6f
	tagAbandonRequest  = 0x50
	tagExtendedRequest = 0x77
	tagExtendedResp    = 0x78
)

const maxBERDepth = 32

var errFrameTooLarge = errors.New("message larger than the configured limit")

// readFrame reads one complete BER element. Indefinite lengths, which LDAP
// forbids (RFC 4511 §5.1), and lengths over max are refused before any body
// is read.
func readFrame(r *bufio.Reader, max int) ([]byte, error) {
	tag, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	if tag&0x1f == 0x1f {
		return nil, fmt.Errorf("multi-byte tags are not used by LDAP")
	}
	lb, err := r.ReadByte()
	if err != nil {
		return nil, noEOF(err)
	}
	hdr := []byte{tag, lb}
	length := 0
	switch {
	case lb < 0x80:
		length = int(lb)
	case lb == 0x80:
		return nil, fmt.Errorf("indefinite length is not allowed in LDAP")
	default:
		n := int(lb & 0x7f)
		if n > 4 {
			return nil, errFrameTooLarge
		}
		for i := 0; i < n; i++ {
			b, err := r.ReadByte()
			if err != nil {
				return nil, noEOF(err)
			}
			hdr = append(hdr, b)
			length = length<<8 | int(b)
		}
	}
	if length > max || length < 0 {
		return nil, errFrameTooLarge
	}
	frame := make([]byte, len(hdr)+length)
	copy(frame, hdr)
	if _, err := io.ReadFull(r, frame[len(hdr):]); err != nil {
		return nil, noEOF(err)
	}
	return frame, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// tlv is one decoded BER element.
type tlv struct {
	tag  byte
	body []byte
}

func (t tlv) constructed() bool { return t.tag&0x20 != 0 }

// next splits the first BER element off b.
func next(b []byte) (tlv, []byte, error) {
	if len(b) < 2 {
		return tlv{}, nil, fmt.Errorf("truncated element")
	}
	tag := b[0]
	if tag&0x1f == 0x1f {
		return tlv{}, nil, fmt.Errorf("multi-byte tag")
	}
	l := int(b[1])
	off := 2
	if l == 0x80 {
		return tlv{}, nil, fmt.Errorf("indefinite length")
	}
	if l > 0x80 {
		n := l & 0x7f
		if n > 4 || len(b) < 2+n {
			return tlv{}, nil, fmt.Errorf("bad length")
		}
		l = 0
		for i := 0; i < n; i++ {
			l = l<<8 | int(b[2+i])
		}
		off += n
	}
	if l < 0 || len(b)-off < l {
		return tlv{}, nil, fmt.Errorf("element longer than its container")
	}
	return tlv{tag: tag, body: b[off : off+l]}, b[off+l:], nil
}

// checkBER verifies that b is a well-formed sequence of BER elements whose
// nesting stays within maxBERDepth, so that the decoder behind the guard
// only ever sees sane input.
func checkBER(b []byte, depth int) error {
	if depth > maxBERDepth {
		return fmt.Errorf("elements nested deeper than %d levels", maxBERDepth)
	}
	for len(b) > 0 {
		t, rest, err := next(b)
		if err != nil {
			return err
		}
		if t.constructed() {
			if err := checkBER(t.body, depth+1); err != nil {
				return err
			}
		}
		b = rest
	}
	return nil
}

// envelope is a decoded LDAPMessage header.
type envelope struct {
	id   int64
	op   tlv
	ctrl []byte // the [0] controls element body, if any
}

func parseEnvelope(frame []byte) (envelope, error) {
	var e envelope
	msg, rest, err := next(frame)
	if err != nil || len(rest) != 0 || msg.tag != 0x30 {
		return e, fmt.Errorf("not an LDAPMessage")
	}
	idEl, body, err := next(msg.body)
	if err != nil || idEl.tag != 0x02 || len(idEl.body) == 0 || len(idEl.body) > 4 {
		return e, fmt.Errorf("bad messageID")
	}
	e.id = decodeInt(idEl.body)
	if e.id < 0 {
		return e, fmt.Errorf("negative messageID")
	}
	e.op, body, err = next(body)
	if err != nil {
		return e, err
	}
	if len(body) > 0 {
		c, _, err := next(body)
		if err != nil || c.tag != 0xa0 {
			return e, fmt.Errorf("bad controls")
		}
		e.ctrl = c.body
	}
	return e, nil
}

func decodeInt(b []byte) int64 {
	var v int64
	if len(b) > 0 && b[0]&0x80 != 0 {
		v = -1
	}
	for _, c := range b {
		v = v<<8 | int64(c)
	}
	return v
}

// appendTLV appends tag, length and body.
func appendTLV(dst []byte, tag byte, body []byte) []byte {
	return append(tlvHeader(dst, tag, len(body)), body...)
}

// tlvHeader appends the tag and the definite length n.
func tlvHeader(dst []byte, tag byte, n int) []byte {
	dst = append(dst, tag)
	switch {
	case n < 0x80:
		return append(dst, byte(n))
	case n < 0x100:
		return append(dst, 0x81, byte(n))
	case n < 0x10000:
		return append(dst, 0x82, byte(n>>8), byte(n))
	}
	return append(dst, 0x84, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

func encodeInt(tag byte, v int64) []byte {
	var b []byte
	for {
		b = append([]byte{byte(v)}, b...)
		v >>= 8
		if (v == 0 && b[0]&0x80 == 0) || (v == -1 && b[0]&0x80 != 0) {
			break
		}
	}
	return appendTLV(nil, tag, b)
}

// ldapResult encodes an LDAPMessage carrying an LDAPResult-shaped response
// (bind, modify, add, delete, modDN, compare, extended), with optional
// extra trailing elements (extended response name and value).
func ldapResult(id int64, tag byte, code int, matched, diag string, extra ...[]byte) []byte {
	body := encodeInt(0x0a, int64(code))
	body = appendTLV(body, 0x04, []byte(matched))
	body = appendTLV(body, 0x04, []byte(diag))
	for _, e := range extra {
		body = append(body, e...)
	}
	msg := encodeInt(0x02, id)
	msg = appendTLV(msg, tag, body)
	return appendTLV(nil, 0x30, msg)
}

// OIDs of the extended operations the guard answers.
const (
	oidStartTLS = "1.3.6.1.4.1.1466.20037"
	oidWhoAmI   = "1.3.6.1.4.1.4203.1.11.3"
	oidNotice   = "1.3.6.1.4.1.1466.20036" // Notice of Disconnection
)

// extendedResult encodes an ExtendedResponse with responseName and value.
func extendedResult(id int64, code int, diag, name string, value []byte) []byte {
	var extra [][]byte
	if name != "" {
		extra = append(extra, appendTLV(nil, 0x8a, []byte(name)))
	}
	if value != nil {
		extra = append(extra, appendTLV(nil, 0x8b, value))
	}
	return ldapResult(id, tagExtendedResp, code, "", diag, extra...)
}

// noticeOfDisconnection is sent before the guard drops a connection.
func noticeOfDisconnection(code int, diag string) []byte {
	return extendedResult(0, code, diag, oidNotice, nil)
}

// responseTagFor returns the response tag matching a request tag that the
// guard answers with a plain LDAPResult.
func responseTagFor(req byte) byte {
	switch req {
	case tagModifyRequest:
		return tagModifyResponse
	case tagAddRequest:
		return tagAddResponse
	case tagDelRequest:
		return tagDelResponse
	case tagModDNRequest:
		return tagModDNResponse
	case tagCompareRequest:
		return tagCompareResponse
	case tagBindRequest:
		return tagBindResponse
	}
	return tagExtendedResp
}

// children returns the elements inside a constructed element body.
func children(b []byte) ([]tlv, error) {
	var out []tlv
	for len(b) > 0 {
		t, rest, err := next(b)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
		b = rest
	}
	return out, nil
}
