package server

import (
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sectun/sectun/internal/wsconn"
	"github.com/sectun/sectun/tunnel"
	"github.com/sectun/sectun/wire"
)

// hostile is a raw tunnel client on a valid token: wsconn plus frames
// written by hand.
type hostile struct {
	t    *testing.T
	conn *wsconn.Conn
	fr   *wire.FrameReader
}

func (ts *testServer) dialHostile(t *testing.T, mode tunnel.Mode, tok, clientToken string) *hostile {
	t.Helper()
	m := "source"
	if mode == tunnel.ModeDestination {
		m = "destination"
	}
	h := http.Header{}
	h.Set("access-token", tok)
	h.Set("client-token", clientToken)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := wsconn.Dial(ctx, ts.wsURL+"/tunnel?local-proxy-mode="+m, wsconn.DialOptions{
		Header:       h,
		Subprotocols: []string{"aws.iot.securetunneling-3.0"},
		Proxy:        func(*url.URL) (*url.URL, error) { return nil, nil },
	})
	if err != nil {
		t.Fatalf("hostile dial: %v", err)
	}
	t.Cleanup(func() { conn.Close(wsconn.CloseNormal, "") })
	conn.SetLiveness(10 * time.Second)
	c := &hostile{t: t, conn: conn, fr: wire.NewFrameReader(conn)}
	if msg, err := c.fr.Next(); err != nil || msg.Type != wire.TypeServiceIDs {
		t.Fatalf("first message %v, %v: want SERVICE_IDS", msg, err)
	}
	return c
}

// frames encodes messages as tunnel frames.
func frames(t *testing.T, msgs ...*wire.Message) []byte {
	t.Helper()
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = wire.AppendFrame(b, m); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// rawFrame prefixes encoded bytes with their 2-byte length.
func rawFrame(encoded []byte) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(encoded))), encoded...)
}

// writeRawWS writes one masked client frame with the opcode straight to
// the socket: for text messages and for lengths wsconn would not send.
func (c *hostile) writeRawWS(opcode byte, payload []byte, length int) {
	mask := [4]byte{7, 7, 7, 7}
	b := []byte{0x80 | opcode}
	switch {
	case length < 126:
		b = append(b, 0x80|byte(length))
	case length < 1<<16:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(length))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(length))
	}
	b = append(b, mask[:]...)
	for i, x := range payload {
		b = append(b, x^mask[i%4])
	}
	c.conn.NetConn().Write(b)
}

// closeCode reads until the connection ends and returns the close code
// (0 if it ended without a close frame).
func (c *hostile) closeCode() (int, string) {
	for {
		_, err := c.fr.Next()
		if err == nil {
			continue
		}
		var ce *wsconn.CloseError
		if errors.As(err, &ce) {
			return ce.Code, ce.Reason
		}
		c.t.Logf("ended without a close frame: %v", err)
		return 0, ""
	}
}

// A peer on a valid token sending adversarial input is disconnected with
// a close code saying why; the other end of its tunnel stays connected
// (and works with a well-behaved replacement), another tunnel keeps
// passing data, nothing panics, and goroutines return to their number
// before.
func TestHostilePeer(t *testing.T) {
	bigPayload := protowire.AppendTag(nil, 1, protowire.VarintType)
	bigPayload = protowire.AppendVarint(bigPayload, uint64(wire.TypeData))
	bigPayload = protowire.AppendTag(bigPayload, 2, protowire.VarintType)
	bigPayload = protowire.AppendVarint(bigPayload, 1)
	bigPayload = protowire.AppendTag(bigPayload, 4, protowire.BytesType)
	bigPayload = protowire.AppendBytes(bigPayload, make([]byte, wire.MaxPayloadSize+1))
	extraField := frames(t, &wire.Message{Type: wire.TypeData, StreamID: 1, ServiceID: "SSH", ConnectionID: 1, Payload: []byte("x")})[2:]
	extraField = protowire.AppendVarint(protowire.AppendTag(extraField, 9, protowire.VarintType), 1)
	rng := rand.New(rand.NewPCG(7, 7))
	noise := make([]byte, 4096)
	for i := range noise {
		noise[i] = byte(rng.Uint32())
	}

	tests := []struct {
		name    string
		fromDst bool
		send    func(c *hostile)
		codes   []int // any of these
		reason  string
	}{
		{name: "type unset", send: func(c *hostile) {
			c.conn.WriteMessage(context.Background(), rawFrame((&wire.Message{StreamID: 1}).Marshal()))
		}, codes: []int{1008}, reason: "invalid UNKNOWN"},
		{name: "unknown type", send: func(c *hostile) {
			c.conn.WriteMessage(context.Background(), frames(t, &wire.Message{Type: 77, StreamID: 1}))
		}, codes: []int{1008}},
		{name: "data on stream 0", send: func(c *hostile) {
			c.conn.WriteMessage(context.Background(), frames(t, &wire.Message{Type: wire.TypeData, ServiceID: "SSH", Payload: []byte("x")}))
		}, codes: []int{1008}, reason: "invalid DATA"},
		{name: "start on stream 0", send: func(c *hostile) {
			c.conn.WriteMessage(context.Background(), frames(t, &wire.Message{Type: wire.TypeStreamStart, ServiceID: "SSH"}))
		}, codes: []int{1008}},
		{name: "unknown service", send: func(c *hostile) {
			c.conn.WriteMessage(context.Background(), frames(t, &wire.Message{Type: wire.TypeStreamStart, StreamID: 9, ServiceID: "TELNET", ConnectionID: 1}))
		}, codes: []int{1008}, reason: "service ID is not"},
		{name: "service ids from client", send: func(c *hostile) {
			c.conn.WriteMessage(context.Background(), frames(t, &wire.Message{Type: wire.TypeServiceIDs, AvailableServiceIDs: []string{"SSH"}}))
		}, codes: []int{1008}, reason: "invalid SERVICE_IDS"},
		{name: "session reset from client", send: func(c *hostile) {
			c.conn.WriteMessage(context.Background(), frames(t, &wire.Message{Type: wire.TypeSessionReset}))
		}, codes: []int{1008}, reason: "invalid SESSION_RESET"},
		{name: "session reset from destination", fromDst: true, send: func(c *hostile) {
			c.conn.WriteMessage(context.Background(), frames(t, &wire.Message{Type: wire.TypeSessionReset}))
		}, codes: []int{1008}},
		{name: "stream start from destination", fromDst: true, send: func(c *hostile) {
			c.conn.WriteMessage(context.Background(), frames(t, &wire.Message{Type: wire.TypeStreamStart, StreamID: 1, ServiceID: "SSH", ConnectionID: 1}))
		}, codes: []int{1008}, reason: "invalid STREAM_START"},
		{name: "payload over 64512 bytes", send: func(c *hostile) { c.conn.WriteMessage(context.Background(), rawFrame(bigPayload)) }, codes: []int{1002}, reason: "malformed"},
		{name: "frame length past the data", send: func(c *hostile) {
			c.conn.WriteMessage(context.Background(), append([]byte{0xff, 0xff}, noise[:100]...)) // 65535 announced, then garbage
			c.conn.WriteMessage(context.Background(), noise[100:])
			c.conn.WriteMessage(context.Background(), make([]byte, 65535)) // completes it
		}, codes: []int{1002, 1008}},
		{name: "empty frame", send: func(c *hostile) { c.conn.WriteMessage(context.Background(), []byte{0, 0}) }, codes: []int{1002}},
		{name: "extra field", send: func(c *hostile) { c.conn.WriteMessage(context.Background(), rawFrame(extraField)) }, codes: []int{1002}},
		{name: "garbage", send: func(c *hostile) { c.conn.WriteMessage(context.Background(), rawFrame(noise[:300])) }, codes: []int{1002, 1008}},
		{name: "text message", send: func(c *hostile) { c.writeRawWS(0x1, []byte("hello"), 5) }, codes: []int{1003}},
		{name: "oversized websocket message", send: func(c *hostile) { c.writeRawWS(0x2, nil, wire.MaxWebSocketMessageSize+1) }, codes: []int{1009}},
		{name: "random frames", send: func(c *hostile) {
			for range 50 {
				m := &wire.Message{Type: wire.Type(rng.IntN(9)), StreamID: int32(rng.IntN(3)), ServiceID: []string{"", "SSH", "X"}[rng.IntN(3)], ConnectionID: uint32(rng.IntN(3))}
				if b, err := wire.AppendFrame(nil, m); err == nil && c.conn.WriteMessage(context.Background(), b) != nil {
					return
				}
			}
			c.conn.WriteMessage(context.Background(), frames(t, &wire.Message{Type: wire.TypeSessionReset})) // if all were valid
		}, codes: []int{1002, 1008}},
	}

	ts := newTestServer(t, nil)
	// A bystander tunnel that must keep passing data.
	ob := ts.open(t, "SSH")
	bdst, err := ts.session(t, tunnel.ModeDestination, ob.DestinationAccessToken, clientTokenA)
	if err != nil {
		t.Fatal(err)
	}
	echoDestination(bdst)
	bsrc, err := ts.session(t, tunnel.ModeSource, ob.SourceAccessToken, clientTokenB)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, bsrc, "SSH", "before")
	runtime.GC()
	base := runtime.NumGoroutine()

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := ts.open(t, "SSH")
			otherMode, otherTok, hostileMode, hostileTok := tunnel.ModeDestination, o.DestinationAccessToken, tunnel.ModeSource, o.SourceAccessToken
			if tc.fromDst {
				otherMode, otherTok, hostileMode, hostileTok = hostileMode, hostileTok, otherMode, otherTok
			}
			other, err := ts.session(t, otherMode, otherTok, clientTokenA)
			if err != nil {
				t.Fatal(err)
			}
			if otherMode == tunnel.ModeDestination {
				echoDestination(other)
			}
			h := ts.dialHostile(t, hostileMode, hostileTok, clientTokenB)
			if !tc.fromDst {
				// An active stream, so the other end has something to reset.
				h.conn.WriteMessage(context.Background(), frames(t, &wire.Message{Type: wire.TypeStreamStart, StreamID: 1, ServiceID: "SSH", ConnectionID: 1}))
			}
			violations := ts.relay.Stats().Violations
			tc.send(h)
			code, reason := h.closeCode()
			h.conn.Close(wsconn.CloseNormal, "") // as clients do after the close frame
			ok := false
			for _, c := range tc.codes {
				ok = ok || c == code
			}
			if !ok || !strings.HasPrefix(reason, tc.reason) {
				t.Fatalf("closed with %d %q, want one of %v %q...", code, reason, tc.codes, tc.reason)
			}
			t.Logf("closed with %d %q", code, reason)
			waitUntil(t, "violation counted", 10*time.Second, func() bool { return ts.relay.Stats().Violations == violations+1 })

			// The other end is still connected and works with a
			// well-behaved peer on the same token and client token.
			select {
			case <-other.Done():
				t.Fatalf("the other end's session ended: %v", other.Err())
			default:
			}
			good, err := ts.session(t, hostileMode, hostileTok, clientTokenB)
			if err != nil {
				t.Fatalf("well-behaved replacement: %v", err)
			}
			if hostileMode == tunnel.ModeSource {
				roundTrip(t, good, "SSH", "after "+tc.name)
			} else {
				echoDestination(good)
				roundTrip(t, other, "SSH", "after "+tc.name)
			}
			roundTrip(t, bsrc, "SSH", "bystander after "+tc.name)
			good.Close()
			other.Close()
			waitDone(t, good, nil)
			waitDone(t, other, nil)
		})
	}
	if got := ts.relay.Stats().Violations; got != int64(len(tests)) {
		t.Errorf("%d violations counted, want %d", got, len(tests))
	}
	waitUntil(t, "goroutines back to baseline", 10*time.Second, func() bool { return runtime.NumGoroutine() <= base })
}
