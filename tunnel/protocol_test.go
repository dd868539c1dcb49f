package tunnel

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/sectun/sectun/tunnel/internal/fakeservice"
	"github.com/sectun/sectun/wire"
)

// rawPeer connects a raw peer offering only the given protocol version.
func rawPeer(t *testing.T, svc *fakeservice.Service, mode Mode, version int) *RawConn {
	t.Helper()
	cfg := baseConfig(t, svc, mode)
	cfg.Subprotocols = []string{subprotocol(version)}
	r, err := DialRaw(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("DialRaw: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	if err := svc.WaitConnected(testCtx(t), mode.String(), true); err != nil {
		t.Fatal(err)
	}
	if version >= 2 {
		m := readMsg(t, r)
		if m.Type != wire.TypeServiceIDs {
			t.Fatalf("first message %v, want SERVICE_IDS", m)
		}
	}
	return r
}

// readMsg reads the next message of r, with a timeout, as a copy.
func readMsg(t *testing.T, r *RawConn) wire.Message {
	t.Helper()
	r.ws.NetConn().SetReadDeadline(time.Now().Add(testTimeout))
	m, err := r.ReadMessage()
	if err != nil {
		t.Fatalf("ReadMessage: %v", err)
	}
	c := *m
	c.Payload = append([]byte(nil), m.Payload...)
	c.AvailableServiceIDs = append([]string(nil), m.AvailableServiceIDs...)
	return c
}

var msgCmp = cmpopts.EquateEmpty()

func expectMsgs(t *testing.T, r *RawConn, want ...wire.Message) {
	t.Helper()
	for _, w := range want {
		got := readMsg(t, r)
		if diff := cmp.Diff(w, got, msgCmp); diff != "" {
			t.Fatalf("message (-want +got):\n%s", diff)
		}
	}
}

func send(t *testing.T, r *RawConn, msgs ...wire.Message) {
	t.Helper()
	ps := make([]*wire.Message, len(msgs))
	for i := range msgs {
		ps[i] = &msgs[i]
	}
	if err := r.WriteMessage(ps...); err != nil {
		t.Fatalf("WriteMessage: %v", err)
	}
}

const (
	tData   = wire.TypeData
	tStart  = wire.TypeStreamStart
	tReset  = wire.TypeStreamReset
	tCStart = wire.TypeConnectionStart
	tCReset = wire.TypeConnectionReset
)

// TestSourceV3Messages checks the exact messages of a V3 source, as the
// reference local proxy sends them.
func TestSourceV3Messages(t *testing.T) {
	svc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1", "HTTP1"}})
	dst := rawPeer(t, svc, ModeDestination, 3)
	src := connect(t, baseConfig(t, svc, ModeSource))

	a, err := src.Dial(testCtx(t), "SSH1")
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, a, []byte("a1"))
	expectMsgs(t, dst,
		wire.Message{Type: tStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1},
		wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1, Payload: []byte("a1")})
	b, _ := src.Dial(testCtx(t), "SSH1")
	writeAll(t, b, []byte("b1"))
	expectMsgs(t, dst,
		wire.Message{Type: tCStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 2},
		wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 2, Payload: []byte("b1")})
	h, _ := src.Dial(testCtx(t), "HTTP1")
	expectMsgs(t, dst, wire.Message{Type: tStart, StreamID: 2, ServiceID: "HTTP1", ConnectionID: 1})

	// Replies reach the right connection.
	send(t, dst,
		wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 2, Payload: []byte("to b")},
		wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1, Payload: []byte("to a")},
		wire.Message{Type: tData, StreamID: 2, ServiceID: "HTTP1", ConnectionID: 1, Payload: []byte("to h")})
	for c, want := range map[*Conn]string{a: "to a", b: "to b", h: "to h"} {
		if got := readN(t, c, len(want)); string(got) != want {
			t.Errorf("%v got %q, want %q", c.LocalAddr(), got, want)
		}
	}

	// Close sends what is buffered, then CONNECTION_RESET.
	writeAll(t, b, []byte("last"))
	b.Close()
	expectMsgs(t, dst,
		wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 2, Payload: []byte("last")},
		wire.Message{Type: tCReset, StreamID: 1, ServiceID: "SSH1", ConnectionID: 2})
	a.Close()
	expectMsgs(t, dst, wire.Message{Type: tCReset, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1})
	// The service's stream outlives its connections (as with the reference
	// source): the next Dial is a CONNECTION_START on it.
	c, _ := src.Dial(testCtx(t), "SSH1")
	expectMsgs(t, dst, wire.Message{Type: tCStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 3})

	// A peer's CONNECTION_RESET ends one connection: data first, then EOF.
	d, _ := src.Dial(testCtx(t), "SSH1")
	expectMsgs(t, dst, wire.Message{Type: tCStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 4})
	send(t, dst,
		wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 4, Payload: []byte("bye")},
		wire.Message{Type: tCReset, StreamID: 1, ServiceID: "SSH1", ConnectionID: 4})
	if got, err := readAll(t, d); string(got) != "bye" || err != nil {
		t.Fatalf("after CONNECTION_RESET: %q, %v", got, err)
	}
	if _, err := d.Write([]byte("x")); !errors.Is(err, ErrStreamReset) {
		t.Fatalf("Write after reset: %v, want ErrStreamReset", err)
	}
	writeAll(t, c, []byte("c"))
	expectMsgs(t, dst, wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 3, Payload: []byte("c")})

	// A STREAM_RESET ends every connection of the stream.
	e, _ := src.Dial(testCtx(t), "SSH1")
	expectMsgs(t, dst, wire.Message{Type: tCStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 5})
	send(t, dst, wire.Message{Type: tReset, StreamID: 1, ServiceID: "SSH1"})
	for _, x := range []*Conn{c, e} {
		if got, err := readAll(t, x); len(got) != 0 || err != nil {
			t.Fatalf("after STREAM_RESET: %q, %v", got, err)
		}
	}
	// After a STREAM_RESET the next Dial starts a new stream.
	f, _ := src.Dial(testCtx(t), "SSH1")
	expectMsgs(t, dst, wire.Message{Type: tStart, StreamID: 3, ServiceID: "SSH1", ConnectionID: 1})
	f.Close()
	expectMsgs(t, dst, wire.Message{Type: tCReset, StreamID: 3, ServiceID: "SSH1", ConnectionID: 1})
	// h is untouched.
	writeAll(t, h, []byte("h"))
	expectMsgs(t, dst, wire.Message{Type: tData, StreamID: 2, ServiceID: "HTTP1", ConnectionID: 1, Payload: []byte("h")})
}

// TestSourceV3KeepsStreamAfterRemoteReset: when the destination resets the
// last connection of a service (its local service closed it), the stream
// stays, as after a local close: the reference destination keeps the
// stream and would drop a second STREAM_START for the service, so the next
// connection must be a CONNECTION_START on the same stream.
func TestSourceV3KeepsStreamAfterRemoteReset(t *testing.T) {
	svc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1"}})
	dst := rawPeer(t, svc, ModeDestination, 3)
	src := connect(t, baseConfig(t, svc, ModeSource))

	a, err := src.Dial(testCtx(t), "SSH1")
	if err != nil {
		t.Fatal(err)
	}
	expectMsgs(t, dst, wire.Message{Type: tStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1})
	send(t, dst,
		wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1, Payload: []byte("bye")},
		wire.Message{Type: tCReset, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1})
	if got, err := readAll(t, a); string(got) != "bye" || err != nil {
		t.Fatalf("after CONNECTION_RESET: %q, %v", got, err)
	}
	a.Close() // nothing to send: the peer ended it

	b, err := src.Dial(testCtx(t), "SSH1")
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, b, []byte("b"))
	expectMsgs(t, dst,
		wire.Message{Type: tCStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 2},
		wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 2, Payload: []byte("b")})
	b.Close()
	expectMsgs(t, dst, wire.Message{Type: tCReset, StreamID: 1, ServiceID: "SSH1", ConnectionID: 2})
}

func TestSourceUnknownService(t *testing.T) {
	_, src, _ := pair(t, fakeservice.Options{Services: []string{"SSH1", "HTTP1"}}, nil)
	if _, err := src.Dial(testCtx(t), "FTP"); !errors.Is(err, ErrUnknownService) {
		t.Fatalf("Dial FTP: %v", err)
	}
	if _, err := src.Dial(testCtx(t), ""); !errors.Is(err, ErrUnknownService) {
		t.Fatalf("Dial \"\" with two services: %v", err)
	}
	if _, err := src.Accept(testCtx(t)); !errors.Is(err, ErrWrongMode) {
		t.Fatalf("Accept on a source: %v", err)
	}
}

// TestSourceDetectsV2 talks to a destination that speaks V2 only.
func TestSourceDetectsV2(t *testing.T) {
	svc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1"}})
	dst := rawPeer(t, svc, ModeDestination, 2)
	ev := newEvents()
	cfg := baseConfig(t, svc, ModeSource)
	cfg.OnEvent = ev.add
	src := connect(t, cfg)

	a, _ := src.Dial(testCtx(t), "SSH1")
	b, _ := src.Dial(testCtx(t), "SSH1") // before detection: CONNECTION_START
	writeAll(t, a, []byte("ping"))
	expectMsgs(t, dst,
		wire.Message{Type: tStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1},
		wire.Message{Type: tCStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 2},
		wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1, Payload: []byte("ping")})
	send(t, dst, wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", Payload: []byte("pong")})
	if got := readN(t, a, 4); string(got) != "pong" {
		t.Fatalf("got %q", got)
	}
	if d := waitEvent[PeerVersionDetected](t, ev, nil); d.Version != 2 || d.ServiceID != "SSH1" {
		t.Fatalf("event %+v", d)
	}
	// The second connection cannot work with a V2 peer.
	if _, err := readAll(t, b); !errors.Is(err, ErrVersionMismatch) {
		t.Fatalf("second connection: %v, want ErrVersionMismatch", err)
	}
	// From now on: V2 messages, and a new Dial replaces the connection.
	writeAll(t, a, []byte("more"))
	expectMsgs(t, dst, wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", Payload: []byte("more")})
	c, _ := src.Dial(testCtx(t), "SSH1")
	expectMsgs(t, dst,
		wire.Message{Type: tReset, StreamID: 1, ServiceID: "SSH1"}, // the old stream first
		wire.Message{Type: tStart, StreamID: 2, ServiceID: "SSH1"})
	if _, err := readAll(t, a); !errors.Is(err, ErrStreamReset) {
		t.Fatalf("replaced connection: %v, want ErrStreamReset", err)
	}
	c.Close()
	expectMsgs(t, dst, wire.Message{Type: tReset, StreamID: 2, ServiceID: "SSH1"})
}

// TestSourceDetectsV1 talks to a destination that answers without service
// IDs, as a V1 local proxy does.
func TestSourceDetectsV1(t *testing.T) {
	svc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1", "HTTP1"}})
	dst := rawPeer(t, svc, ModeDestination, 1)
	ev := newEvents()
	cfg := baseConfig(t, svc, ModeSource)
	cfg.OnEvent = ev.add
	src := connect(t, cfg)

	a, _ := src.Dial(testCtx(t), "SSH1")
	writeAll(t, a, []byte("ping"))
	expectMsgs(t, dst,
		wire.Message{Type: tStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1},
		wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1, Payload: []byte("ping")})
	send(t, dst, wire.Message{Type: tData, StreamID: 1, Payload: []byte("pong")})
	if got := readN(t, a, 4); string(got) != "pong" {
		t.Fatalf("got %q", got)
	}
	if d := waitEvent[PeerVersionDetected](t, ev, nil); d.Version != 1 {
		t.Fatalf("event %+v", d)
	}
	writeAll(t, a, []byte("more"))
	expectMsgs(t, dst, wire.Message{Type: tData, StreamID: 1, Payload: []byte("more")})
	// V1: one connection per tunnel, whatever the service.
	h, _ := src.Dial(testCtx(t), "HTTP1")
	expectMsgs(t, dst, wire.Message{Type: tReset, StreamID: 1}, wire.Message{Type: tStart, StreamID: 2})
	if _, err := readAll(t, a); !errors.Is(err, ErrStreamReset) {
		t.Fatalf("replaced connection: %v", err)
	}
	h.Close()
	expectMsgs(t, dst, wire.Message{Type: tReset, StreamID: 2})
}

func TestSourceExplicitPeerVersion(t *testing.T) {
	for _, tc := range []struct {
		peer  int
		start wire.Message
		reset wire.Message
	}{
		{2, wire.Message{Type: tStart, StreamID: 1, ServiceID: "SSH1"}, wire.Message{Type: tReset, StreamID: 1, ServiceID: "SSH1"}},
		{1, wire.Message{Type: tStart, StreamID: 1}, wire.Message{Type: tReset, StreamID: 1}},
	} {
		t.Run(subprotocol(tc.peer), func(t *testing.T) {
			svc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1"}})
			dst := rawPeer(t, svc, ModeDestination, tc.peer)
			cfg := baseConfig(t, svc, ModeSource)
			cfg.PeerVersion = tc.peer
			src := connect(t, cfg)
			a, _ := src.Dial(testCtx(t), "SSH1")
			writeAll(t, a, []byte("x"))
			data := tc.start
			data.Type, data.Payload = tData, []byte("x")
			expectMsgs(t, dst, tc.start, data)
			a.Close()
			expectMsgs(t, dst, tc.reset)
		})
	}
}

// TestDestinationV3 serves a V3 source: simultaneous connections, resets,
// stale messages.
func TestDestinationV3(t *testing.T) {
	svc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1", "HTTP1"}})
	ev := newEvents()
	cfg := baseConfig(t, svc, ModeDestination)
	cfg.OnEvent = ev.add
	dst := connect(t, cfg)
	src := rawPeer(t, svc, ModeSource, 3)

	send(t, src,
		wire.Message{Type: tStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1},
		wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1, Payload: []byte("one")},
		wire.Message{Type: tCStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 2},
		wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 2, Payload: []byte("two")})
	c1, err := dst.Accept(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := dst.Accept(testCtx(t))
	if c1.ConnectionID() != 1 || c2.ConnectionID() != 2 || c2.ServiceID() != "SSH1" {
		t.Fatalf("accepted %v and %v", c1.LocalAddr(), c2.LocalAddr())
	}
	if got := readN(t, c1, 3); string(got) != "one" {
		t.Fatalf("c1 got %q", got)
	}
	if got := readN(t, c2, 3); string(got) != "two" {
		t.Fatalf("c2 got %q", got)
	}
	waitEvent(t, ev, func(e ConnectionStarted) bool { return e.ConnectionID == 2 && e.Remote })

	writeAll(t, c2, []byte("back"))
	expectMsgs(t, src, wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 2, Payload: []byte("back")})

	// Stale and unknown messages are dropped without harm.
	send(t, src,
		wire.Message{Type: tData, StreamID: 7, ServiceID: "SSH1", ConnectionID: 1, Payload: []byte("stale")},
		wire.Message{Type: tData, StreamID: 1, ServiceID: "HTTP1", ConnectionID: 1, Payload: []byte("wrong service")},
		wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 9, Payload: []byte("no such conn")},
		wire.Message{Type: tReset, StreamID: 7, ServiceID: "SSH1"},
		wire.Message{Type: tCReset, StreamID: 1, ServiceID: "SSH1", ConnectionID: 9},
		wire.Message{Type: tCStart, StreamID: 5, ServiceID: "SSH1", ConnectionID: 3},
		wire.Message{Type: wire.Type(42), StreamID: 1, Ignorable: true},
		wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1, Payload: []byte("fresh")})
	if got := readN(t, c1, 5); string(got) != "fresh" {
		t.Fatalf("c1 got %q", got)
	}

	// CONNECTION_RESET: data first, then EOF; the other connection lives.
	send(t, src,
		wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 2, Payload: []byte("tail")},
		wire.Message{Type: tCReset, StreamID: 1, ServiceID: "SSH1", ConnectionID: 2})
	if got, err := readAll(t, c2); string(got) != "tail" || err != nil {
		t.Fatalf("c2 after reset: %q, %v", got, err)
	}
	writeAll(t, c1, []byte("alive"))
	expectMsgs(t, src, wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1, Payload: []byte("alive")})

	// Local close: CONNECTION_RESET.
	send(t, src, wire.Message{Type: tCStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 3})
	c3, _ := dst.Accept(testCtx(t))
	c3.Close()
	expectMsgs(t, src, wire.Message{Type: tCReset, StreamID: 1, ServiceID: "SSH1", ConnectionID: 3})

	// Reject of one of several connections: CONNECTION_RESET; of the only
	// one too (the reference sends STREAM_RESET): the source tells a
	// refused service from a missing destination, whose STREAM_START the
	// service answers with STREAM_RESET.
	send(t, src, wire.Message{Type: tCStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 4})
	c4, _ := dst.Accept(testCtx(t))
	c4.Reject()
	expectMsgs(t, src, wire.Message{Type: tCReset, StreamID: 1, ServiceID: "SSH1", ConnectionID: 4})
	send(t, src, wire.Message{Type: tStart, StreamID: 2, ServiceID: "HTTP1", ConnectionID: 1})
	h, _ := dst.Accept(testCtx(t))
	h.Reject()
	expectMsgs(t, src, wire.Message{Type: tCReset, StreamID: 2, ServiceID: "HTTP1", ConnectionID: 1})

	// A new STREAM_START replaces the service's stream: its connections end.
	send(t, src,
		wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1, Payload: []byte("end")},
		wire.Message{Type: tStart, StreamID: 3, ServiceID: "SSH1", ConnectionID: 1})
	if got, err := readAll(t, c1); string(got) != "end" || err != nil {
		t.Fatalf("replaced c1: %q, %v", got, err)
	}
	n1, _ := dst.Accept(testCtx(t))
	if n1.StreamID() != 3 {
		t.Fatalf("new stream %d", n1.StreamID())
	}

	// SESSION_RESET ends everything, with an error.
	if err := svc.Send(fakeservice.Destination, &wire.Message{Type: wire.TypeSessionReset}); err != nil {
		t.Fatal(err)
	}
	if _, err := readAll(t, n1); !errors.Is(err, ErrStreamReset) {
		t.Fatalf("after SESSION_RESET: %v", err)
	}
	waitEvent[SessionReset](t, ev, nil)
}

func TestDestinationV2Source(t *testing.T) {
	svc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1"}})
	dst := connect(t, baseConfig(t, svc, ModeDestination))
	src := rawPeer(t, svc, ModeSource, 2)
	send(t, src,
		wire.Message{Type: tStart, StreamID: 1, ServiceID: "SSH1"},
		wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", Payload: []byte("hi")})
	c, _ := dst.Accept(testCtx(t))
	if got := readN(t, c, 2); string(got) != "hi" {
		t.Fatalf("got %q", got)
	}
	writeAll(t, c, []byte("yo"))
	expectMsgs(t, src, wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", Payload: []byte("yo")})
	// A new stream replaces it.
	send(t, src, wire.Message{Type: tStart, StreamID: 2, ServiceID: "SSH1"})
	if _, err := readAll(t, c); err != nil {
		t.Fatalf("replaced: %v", err)
	}
	c2, _ := dst.Accept(testCtx(t))
	c2.Close()
	expectMsgs(t, src, wire.Message{Type: tReset, StreamID: 2, ServiceID: "SSH1"})
	// A failed dial is reported with STREAM_RESET.
	send(t, src, wire.Message{Type: tStart, StreamID: 3, ServiceID: "SSH1"})
	c3, _ := dst.Accept(testCtx(t))
	c3.Reject()
	expectMsgs(t, src, wire.Message{Type: tReset, StreamID: 3, ServiceID: "SSH1"})
}

// TestDestinationV3DataWithoutConnectionID: a DATA without connection ID
// switches the stream to the V2 format, as the reference does.
func TestDestinationV3DataWithoutConnectionID(t *testing.T) {
	svc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1"}})
	dst := connect(t, baseConfig(t, svc, ModeDestination))
	src := rawPeer(t, svc, ModeSource, 3)
	send(t, src,
		wire.Message{Type: tStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1},
		wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", Payload: []byte("v2")})
	c, _ := dst.Accept(testCtx(t))
	if got := readN(t, c, 2); string(got) != "v2" {
		t.Fatalf("got %q", got)
	}
	writeAll(t, c, []byte("ok"))
	expectMsgs(t, src, wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", Payload: []byte("ok")})
}

func TestDestinationV1Source(t *testing.T) {
	svc := fakeservice.Start(t, fakeservice.Options{})
	dst := connect(t, baseConfig(t, svc, ModeDestination))
	if s := dst.Services(); s != nil {
		t.Fatalf("Services = %q", s)
	}
	ln, err := dst.Listen("")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := dst.Listen("SSH1"); !errors.Is(err, ErrUnknownService) {
		t.Fatalf("Listen SSH1 on a tunnel without services: %v", err)
	}
	src := rawPeer(t, svc, ModeSource, 1)
	send(t, src,
		wire.Message{Type: tStart, StreamID: 1},
		wire.Message{Type: tData, StreamID: 1, Payload: []byte("v1")})
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c := nc.(*Conn)
	if got := readN(t, c, 2); string(got) != "v1" || c.ServiceID() != "" {
		t.Fatalf("got %q on %q", got, c.ServiceID())
	}
	writeAll(t, c, []byte("ok"))
	expectMsgs(t, src, wire.Message{Type: tData, StreamID: 1, Payload: []byte("ok")})
	send(t, src, wire.Message{Type: tReset, StreamID: 1})
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("after reset: %v", err)
	}
}
