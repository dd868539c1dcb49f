package tunnel

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/sectun/sectun/tunnel/internal/fakeservice"
	"github.com/sectun/sectun/wire"
)

// recorder collects the WebSocket messages a FrameWriter sends.
type recorder struct{ msgs [][]byte }

func (r *recorder) WriteMessage(p []byte) error {
	r.msgs = append(r.msgs, append([]byte(nil), p...))
	return nil
}

// frames decodes every tunnel frame recorded, as "TYPE svc/conn len".
func (r *recorder) frames(t *testing.T) []string {
	var out []string
	for _, m := range r.msgs {
		if len(m) > wire.MaxWebSocketMessageSize {
			t.Fatalf("WebSocket message of %d bytes", len(m))
		}
		fr := wire.NewFrameReader(strings.NewReader(string(m)))
		for {
			msg, err := fr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, fmt.Sprintf("%v %s/%d %d", msg.Type, msg.ServiceID, msg.ConnectionID, len(msg.Payload)))
		}
	}
	return out
}

// TestWriterRoundRobin drives the writer by hand: control messages first,
// then one DATA message per ready connection in turn.
func TestWriterRoundRobin(t *testing.T) {
	s, err := newSession(Config{Mode: ModeSource, AccessToken: "x", Endpoint: "ws://127.0.0.1:1", MaxDataSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer s.ev.close()
	defer s.cancel()
	l := &link{s: s, log: s.log, wake: make(chan struct{}, 1), done: make(chan struct{})}
	s.version = 3
	open := func(svc string) *Conn {
		s.mu.Lock()
		defer s.mu.Unlock()
		c, err := s.openLocked(l, svc)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	bulk, small := open("BULK"), open("SSH")
	bulk.Write(make([]byte, 3500))
	small.Write(make([]byte, 10))
	rec := &recorder{}
	fw := wire.NewFrameWriter(rec, 0)
	var batch []*Conn
	var ctrl []wire.Message
	round := func() int {
		var n int
		batch, ctrl, n, err = l.drain(fw, batch, ctrl)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	round()
	late := open("SSH") // a control message between two rounds goes first
	for round() > 0 {
	}
	bulk.Close()
	for round() > 0 {
	}
	fw.Flush()
	want := []string{
		"STREAM_START BULK/1 0", "STREAM_START SSH/1 0",
		"DATA BULK/1 1000", "DATA SSH/1 10",
		"CONNECTION_START SSH/2 0",
		"DATA BULK/1 1000", "DATA BULK/1 1000", "DATA BULK/1 500",
		"CONNECTION_RESET BULK/1 0",
	}
	if got := rec.frames(t); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("frames\n got %q\nwant %q", got, want)
	}
	if len(rec.msgs) != 1 {
		t.Fatalf("%d WebSocket messages, want 1 (flushed only when idle)", len(rec.msgs))
	}
	_ = late
}

// TestDataSize: DATA payloads never exceed MaxDataSize.
func TestDataSize(t *testing.T) {
	svc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1"}})
	dst := rawPeer(t, svc, ModeDestination, 3)
	cfg := baseConfig(t, svc, ModeSource)
	cfg.MaxDataSize = 5000
	src := connect(t, cfg)
	a, _ := src.Dial(testCtx(t), "SSH1")
	writeAll(t, a, make([]byte, 100_000))
	expectMsgs(t, dst, wire.Message{Type: tStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1})
	for got := 0; got < 100_000; {
		m := readMsg(t, dst)
		if m.Type != tData || len(m.Payload) > 5000 || len(m.Payload) == 0 {
			t.Fatalf("message %v", &m)
		}
		got += len(m.Payload)
	}
	// Payloads up to the protocol's limit are accepted.
	send(t, dst, wire.Message{Type: tData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1, Payload: make([]byte, wire.MaxPayloadSize)})
	readN(t, a, wire.MaxPayloadSize)
}

// TestDataSizeDefault: by default a bulk write goes out in DATA messages
// of the protocol's largest payload, as the reference sends them: fewer
// frames per byte for both ends.
func TestDataSizeDefault(t *testing.T) {
	svc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1"}})
	dst := rawPeer(t, svc, ModeDestination, 3)
	src := connect(t, baseConfig(t, svc, ModeSource))
	a, _ := src.Dial(testCtx(t), "SSH1")
	const total = 16 * wire.MaxPayloadSize
	go a.Write(make([]byte, total))
	expectMsgs(t, dst, wire.Message{Type: tStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1})
	full, msgs := 0, 0
	for got := 0; got < total; msgs++ {
		m := readMsg(t, dst)
		if m.Type != tData || len(m.Payload) > wire.MaxPayloadSize || len(m.Payload) == 0 {
			t.Fatalf("message %v", &m)
		}
		if len(m.Payload) == wire.MaxPayloadSize {
			full++
		}
		got += len(m.Payload)
	}
	t.Logf("%d DATA messages, %d of %d bytes", msgs, full, wire.MaxPayloadSize)
	if full < 12 {
		t.Errorf("%d of %d DATA messages carry %d bytes, want at least 12 of the 16 a full chunk each would give", full, msgs, wire.MaxPayloadSize)
	}
}

func TestListen(t *testing.T) {
	_, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1", "HTTP1"}}, func(s, d *Config) { d.MaxConns = 3 })
	ln, err := dst.Listen("SSH1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dst.Listen("SSH1"); err == nil {
		t.Fatal("second listener for SSH1")
	}
	if _, err := dst.Listen("FTP"); !errors.Is(err, ErrUnknownService) {
		t.Fatalf("Listen FTP: %v", err)
	}
	if _, err := src.Listen("SSH1"); !errors.Is(err, ErrWrongMode) {
		t.Fatalf("Listen on a source: %v", err)
	}
	if _, err := dst.Dial(testCtx(t), "SSH1"); !errors.Is(err, ErrWrongMode) {
		t.Fatalf("Dial on a destination: %v", err)
	}
	h, _ := src.Dial(testCtx(t), "HTTP1")
	defer h.Close()
	s, _ := src.Dial(testCtx(t), "SSH1")
	defer s.Close()
	c, err := ln.Accept()
	if err != nil || c.(*Conn).ServiceID() != "SSH1" {
		t.Fatalf("listener got %v, %v", c, err)
	}
	defer c.Close()
	c2, err := dst.Accept(testCtx(t))
	if err != nil || c2.ServiceID() != "HTTP1" {
		t.Fatalf("Accept got %v, %v", c2, err)
	}
	defer c2.Close()
	if ln.Addr().String() != "SSH1/0/0" || ln.Addr().Network() != "sectun" {
		t.Fatalf("Addr %v", ln.Addr())
	}
	// MaxConns: the destination rejects the fourth connection.
	s2, _ := src.Dial(testCtx(t), "SSH1")
	s3, _ := src.Dial(testCtx(t), "SSH1")
	defer s2.Close()
	defer s3.Close()
	if c3, err := ln.Accept(); err != nil {
		t.Fatal(err)
	} else {
		defer c3.Close()
	}
	if b, err := readAll(t, s3); len(b) != 0 || err != nil {
		t.Fatalf("the fourth connection: %q, %v, want EOF", b, err)
	}
	// Closing the listener rejects what it holds and stops Accept.
	ln.Close()
	if _, err := ln.Accept(); !errors.Is(err, netErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
}

func TestMaxConnsDial(t *testing.T) {
	_, src, _ := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, func(s, d *Config) { s.MaxConns = 2 })
	a, _ := src.Dial(testCtx(t), "SSH1")
	b, _ := src.Dial(testCtx(t), "SSH1")
	if _, err := src.Dial(testCtx(t), "SSH1"); !errors.Is(err, ErrTooManyConns) {
		t.Fatalf("third Dial: %v", err)
	}
	a.Close()
	deadline := time.Now().Add(testTimeout)
	for {
		c, err := src.Dial(testCtx(t), "SSH1")
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Dial after a Close: %v", err)
		}
		time.Sleep(5 * time.Millisecond) // the closed conn is released once its reset is sent
	}
	b.Close()
}

// TestDataPathAllocs: the steady-state data path allocates nothing of its
// own; what remains is the WebSocket library's per-message allocations
// (one or two per WebSocket message at each of the four hops through the
// fake service).
func TestDataPathAllocs(t *testing.T) {
	_, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, nil)
	a, b := dialAccept(t, src, dst, "SSH1")
	msg := make([]byte, 1024)
	buf := make([]byte, 1024)
	rt := func() {
		a.Write(msg)
		io.ReadFull(b, buf)
		b.Write(buf)
		io.ReadFull(a, buf)
	}
	rt()
	if n := testing.AllocsPerRun(200, rt); n > 20 {
		t.Fatalf("%.1f allocations per round trip, want <= 20", n)
	} else {
		t.Logf("%.1f allocations per round trip (two messages, four WebSocket hops each)", n)
	}
}
