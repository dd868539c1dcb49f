package relay

import (
	"bufio"
	"bytes"
	"context"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/wsconn"
	"github.com/sectun/sectun/wire"
)

// FuzzCheckRequest feeds arbitrary HTTP requests to the handshake checks.
func FuzzCheckRequest(f *testing.F) {
	f.Add([]byte("GET /tunnel?local-proxy-mode=source HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: a\r\nSec-WebSocket-Protocol: aws.iot.securetunneling-2.0, aws.iot.securetunneling-3.0\r\naccess-token: t\r\nclient-token: 0123456789abcdef0123456789abcdef\r\n\r\n"))
	f.Add([]byte("GET /tunnel?local-proxy-mode=destination&local-proxy-mode=source HTTP/1.1\r\nHost: x\r\nCookie: awsiot-tunnel-token=a; awsiot-tunnel-token=\"b\"\r\n\r\n"))
	r, err := New(Config{Authorizer: newMemAuthz()})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return
		}
		hs, herr := r.checkRequest(req)
		if herr == nil {
			if hs.AccessToken == "" || (hs.Mode != store.ModeSource && hs.Mode != store.ModeDestination) || subprotocolVersion(hs.Subprotocol) == 0 {
				t.Fatalf("accepted an incomplete handshake: %+v", hs)
			}
			if n := requestSize(req); n > r.cfg.MaxRequestSize {
				t.Fatalf("accepted a request of %d bytes", n)
			}
		} else if herr.status < 400 || herr.status > 599 || herr.text == "" {
			t.Fatalf("bad refusal %+v", herr)
		}
	})
}

// FuzzRelayFrames sends arbitrary bytes, cut into WebSocket messages, from
// a source through a real relay. The relay must not panic, and must be
// done with the input (the source's disconnection reported) before the
// next one.
func FuzzRelayFrames(f *testing.F) {
	seed := func(msgs ...*wire.Message) []byte { return frameBytes(f, msgs...) }
	f.Add(seed(start(1, "SSH1"), data(1, "SSH1", []byte("abc"))), uint8(3))
	f.Add(seed(&wire.Message{Type: wire.TypeConnectionStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 2}), uint8(1))
	f.Add(seed(start(2, ""), data(2, "SSH1", []byte("x"))), uint8(0))
	f.Add([]byte{0, 0}, uint8(1))
	f.Add([]byte{0xff, 0xff, 8, 1}, uint8(2))
	tr := newTestRelay(f, Config{})
	var n atomic.Int64
	f.Fuzz(func(t *testing.T, in []byte, cut uint8) {
		id := "fz" + strconv.FormatInt(n.Add(1), 10)
		s, d := tr.authz.open(id, "SSH1", "HTTP")
		dst := tr.dial(t, d, dialOpts{})
		dst.expectServiceIDs([]string{"SSH1", "HTTP"})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				if _, err := dst.fr.NextFrame(); err != nil {
					return
				}
			}
		}()
		src := tr.dial(t, s, dialOpts{})
		src.expectServiceIDs([]string{"SSH1", "HTTP"})
		tr.authz.waitConnected(t, id, store.ModeSource, true)
		tr.authz.waitConnected(t, id, store.ModeDestination, true)
		step := int(cut) + 1
		for b := in; len(b) > 0; {
			k := min(len(b), step)
			if src.conn.WriteMessage(context.Background(), b[:k]) != nil {
				break
			}
			b = b[k:]
		}
		src.conn.Close(wsconn.CloseNormal, "")
		tr.authz.waitConnected(t, id, store.ModeSource, false)
		dst.conn.Close(wsconn.CloseNormal, "")
		<-done
		tr.authz.waitConnected(t, id, store.ModeDestination, false)
	})
}
