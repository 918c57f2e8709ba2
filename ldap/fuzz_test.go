package ldap

import (
	"bufio"
	"net"
	"testing"
	"time"
)

// FuzzGuardMessages sends arbitrary bytes to a live listener, the way a
// hostile or broken client would, and checks that the server survives and
// keeps answering other clients.
func FuzzGuardMessages(f *testing.F) {
	seeds := [][]byte{
		{0x30, 0x06, 0x02, 0x01, 0x06, 0x50, 0x01, 0x05}, // abandon
		msg(1, bindReq(3, "", appendTLV(nil, 0x80, nil))),
		msg(1, bindReq(3, "", appendTLV(nil, 0xa3, appendTLV(nil, 0x04, []byte("EXTERNAL"))))),
		msg(1, bindReq(2, "cn=x", appendTLV(nil, 0x80, []byte("pw")))),
		msg(2, rootSearchReq()),
		msg(3, appendTLV(nil, tagExtendedRequest, appendTLV(nil, 0x80, []byte(oidWhoAmI)))),
		msg(4, appendTLV(nil, tagCompareRequest, nil)),
		{0x30, 0x80, 0x30, 0x80, 0, 0},
		{0x30, 0x84, 0x7f, 0xff, 0xff, 0xff},
		{0x42, 0x00},
	}
	for _, s := range seeds {
		f.Add(s)
	}
	ts := newTestServer(f, nil, nil)
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := net.Dial("tcp", ts.plain)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(200 * time.Millisecond))
		c.Write(b)
		c.(*net.TCPConn).CloseWrite() // end of input: the server answers what it read and closes
		r := bufio.NewReader(c)
		for {
			if _, err := readFrame(r, 1<<24); err != nil {
				break
			}
		}
		c.Close()
		// Another client is still served.
		k, err := net.Dial("tcp", ts.plain)
		if err != nil {
			t.Fatalf("server gone after %x: %v", b, err)
		}
		defer k.Close()
		k.SetDeadline(time.Now().Add(5 * time.Second))
		k.Write(msg(9, rootSearchReq()))
		kr := bufio.NewReader(k)
		for {
			fr, err := readFrame(kr, 1<<24)
			if err != nil {
				t.Fatalf("root DSE not answered after %x: %v", b, err)
			}
			if e, err := parseEnvelope(fr); err == nil && e.op.tag == tagSearchDone {
				return
			}
		}
	})
}

// The guard's own decoders never panic and never read past their input.
func FuzzDecoders(f *testing.F) {
	f.Add([]byte{0x30, 0x06, 0x02, 0x01, 0x06, 0x50, 0x01, 0x05})
	f.Add(msg(2, rootSearchReq()))
	f.Fuzz(func(t *testing.T, b []byte) {
		if checkBER(b, 0) == nil {
			if e, err := parseEnvelope(b); err == nil {
				children(e.op.body)
			}
		}
		decodeSortKeys(b)
		readFrame(bufio.NewReader(&sliceReader{b}), 1<<16)
	})
}

type sliceReader struct{ b []byte }

func (s *sliceReader) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		return 0, net.ErrClosed
	}
	n := copy(p, s.b)
	s.b = s.b[n:]
	return n, nil
}
