package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/wsconn"
	"github.com/sectun/sectun/wire"
)

// linkPeer is a Peer standing for a link to another node: it records what
// the pairing sends it.
type linkPeer struct {
	t      testing.TB
	sent   chan []byte // a copy of each Send
	closed chan string // "code reason" of Close, or "abort"
	mu     sync.Mutex
	sends  int // concurrent Sends in progress (must stay <= 1)
	fail   error
}

func newLinkPeer(t testing.TB) *linkPeer {
	return &linkPeer{t: t, sent: make(chan []byte, 100), closed: make(chan string, 2)}
}

func (l *linkPeer) Send(b []byte) error {
	l.mu.Lock()
	l.sends++
	n, err := l.sends, l.fail
	l.mu.Unlock()
	defer func() { l.mu.Lock(); l.sends--; l.mu.Unlock() }()
	if n > 1 {
		l.t.Errorf("concurrent Sends")
	}
	if err != nil {
		return err
	}
	l.sent <- slices.Clone(b)
	return nil
}

func (l *linkPeer) Close(code int, reason string) {
	l.closed <- fmt.Sprintf("%d %s", code, reason)
}

func (l *linkPeer) Abort() { l.closed <- "abort" }

// recv returns the next frames sent to the link, decoded.
func (l *linkPeer) recv() []*wire.Message {
	l.t.Helper()
	select {
	case b := <-l.sent:
		var msgs []*wire.Message
		for len(b) > 0 {
			if len(b) < wire.FrameHeaderSize {
				l.t.Fatalf("partial frame header sent to the link")
			}
			n := int(b[0])<<8 | int(b[1])
			if len(b) < wire.FrameHeaderSize+n {
				l.t.Fatalf("partial frame sent to the link")
			}
			m := new(wire.Message)
			if err := m.Unmarshal(b[wire.FrameHeaderSize : wire.FrameHeaderSize+n]); err != nil {
				l.t.Fatal(err)
			}
			m.Payload = slices.Clone(m.Payload)
			msgs = append(msgs, m)
			b = b[wire.FrameHeaderSize+n:]
		}
		return msgs
	case <-time.After(testTimeout):
		l.t.Fatal("nothing sent to the link")
	}
	return nil
}

func (l *linkPeer) expectClosed(want string) {
	l.t.Helper()
	select {
	case got := <-l.closed:
		if !strings.HasPrefix(got, want) {
			l.t.Fatalf("link peer closed with %q, want %q", got, want)
		}
	case <-time.After(testTimeout):
		l.t.Fatalf("link peer not closed, want %q", want)
	}
}

func frames(t testing.TB, msgs ...*wire.Message) []byte {
	t.Helper()
	return frameBytes(t, msgs...)
}

// A local source paired with a remote destination: frames go both ways,
// checked once, and when the link goes (Detach) the source gets
// STREAM_RESET for its active stream and stays connected.
func TestRemoteEnd(t *testing.T) {
	tr := newTestRelay(t, Config{})
	s, _ := tr.authz.open("rm", "SSH")
	src := tr.dial(t, s, dialOpts{})
	src.expectServiceIDs([]string{"SSH"})
	tr.authz.waitConnected(t, "rm", store.ModeSource, true)

	link := newLinkPeer(t)
	a, err := tr.AttachRemote(Remote{TunnelID: "rm", Mode: store.ModeDestination, Epoch: 1, Peer: link})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach()

	// Local to remote: whole frames, as sent, in one Send.
	src.send(start(1, "SSH"), data(1, "SSH", []byte("to the other node")))
	got := link.recv()
	if len(got) == 1 { // the relay may split the run only at a read boundary
		got = append(got, link.recv()...)
	}
	if len(got) != 2 || got[0].Type != wire.TypeStreamStart || string(got[1].Payload) != "to the other node" {
		t.Fatalf("link got %v", got)
	}
	// A local frame breaking a rule closes only the local offender, as
	// before; here a frame from the remote side is relayed as checked.
	if err := a.Deliver(frames(t, data(1, "SSH", []byte("from the other node")), data(1, "SSH", []byte("again")))); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"from the other node", "again"} {
		if m := src.recv(); string(m.Payload) != want {
			t.Fatalf("source got %v, want %q", m, want)
		}
	}
	if st := tr.Stats(); st.Peers != 1 || st.FramesRelayed != 4 {
		t.Errorf("Stats = %+v, want 1 peer, 4 frames relayed", st)
	}
	// Bad bytes from the link are refused; the frames before them go.
	bad := append(frames(t, data(1, "SSH", []byte("before"))), 0, 9, 1)
	if err := a.Deliver(bad); !errors.Is(err, ErrBadFrames) {
		t.Errorf("Deliver(partial frame) = %v, want ErrBadFrames", err)
	}
	if m := src.recv(); string(m.Payload) != "before" {
		t.Fatalf("source got %v", m)
	}

	// The link is lost: the source's stream is reset, it stays connected.
	a.Detach()
	if m := src.recv(); m.Type != wire.TypeStreamReset || m.StreamID != 1 || m.ServiceID != "SSH" {
		t.Fatalf("source got %v, want STREAM_RESET 1 SSH", m)
	}
	if err := a.Deliver(frames(t, data(1, "SSH", []byte("late")))); !errors.Is(err, ErrDetached) {
		t.Errorf("Deliver after Detach = %v, want ErrDetached", err)
	}
	src.send(start(2, "SSH"))
	if m := src.recv(); m.Type != wire.TypeStreamReset || m.StreamID != 2 {
		t.Fatalf("source got %v, want STREAM_RESET 2 (no destination)", m)
	}
	if !tr.authz.connected("rm", store.ModeSource) {
		t.Error("source reported disconnected")
	}
	select {
	case c := <-link.closed:
		t.Errorf("Detach closed the link peer: %s", c)
	default:
	}
}

// The remote end's frames go through the pairing's stream tracking: a
// STREAM_START from the remote side is reset to the local peer when the
// link goes; the local peer leaving resets the remote side's streams
// through the link, which stays attached for the next local peer.
func TestRemoteEndStreams(t *testing.T) {
	tr := newTestRelay(t, Config{})
	_, d := tr.authz.open("rs", "SSH")
	ct := strings.Repeat("d", 40)
	dst := tr.dial(t, d, dialOpts{clientToken: ct})
	dst.expectServiceIDs([]string{"SSH"})
	link := newLinkPeer(t)
	a, err := tr.AttachRemote(Remote{TunnelID: "rs", Mode: store.ModeSource, Epoch: 3, Peer: link})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach()
	if err := a.Deliver(frames(t, start(7, "SSH"))); err != nil {
		t.Fatal(err)
	}
	if m := dst.recv(); m.Type != wire.TypeStreamStart || m.StreamID != 7 {
		t.Fatalf("destination got %v", m)
	}
	// The destination leaves: the remote source's stream 7 is reset.
	dst.conn.Close(wsconn.CloseNormal, "")
	if got := link.recv(); len(got) != 1 || got[0].Type != wire.TypeStreamReset || got[0].StreamID != 7 {
		t.Fatalf("link got %v, want STREAM_RESET 7", got)
	}
	tr.authz.waitConnected(t, "rs", store.ModeDestination, false)
	// A START while no local peer is there is answered through the link.
	if err := a.Deliver(frames(t, start(8, "SSH"))); err != nil {
		t.Fatal(err)
	}
	if got := link.recv(); len(got) != 1 || got[0].Type != wire.TypeStreamReset || got[0].StreamID != 8 {
		t.Fatalf("link got %v, want STREAM_RESET 8", got)
	}
	// The destination comes back: it pairs with the attached remote end.
	dst2 := tr.dial(t, d, dialOpts{clientToken: ct})
	dst2.expectServiceIDs([]string{"SSH"})
	if err := a.Deliver(frames(t, start(9, "SSH"))); err != nil {
		t.Fatal(err)
	}
	if m := dst2.recv(); m.Type != wire.TypeStreamStart || m.StreamID != 9 {
		t.Fatalf("new destination got %v", m)
	}
	dst2.send(data(9, "SSH", []byte("back")))
	if got := link.recv(); len(got) != 1 || string(got[0].Payload) != "back" {
		t.Fatalf("link got %v", got)
	}
	// The link goes: stream 9 is reset to the destination.
	a.Detach()
	if m := dst2.recv(); m.Type != wire.TypeStreamReset || m.StreamID != 9 {
		t.Fatalf("destination got %v, want STREAM_RESET 9", m)
	}
}

// Replacement does not care which kind each end is: a local handshake
// replaces a remote end (its Peer closed with 1008) and a newer remote end
// replaces a local peer; stale epochs are refused both ways.
func TestRemoteEndReplacement(t *testing.T) {
	tr := newTestRelay(t, Config{})
	s, d := tr.authz.open("rr", "SSH")
	ct := strings.Repeat("e", 40)
	tr.authz.setEpoch(s, 5)
	src := tr.dial(t, s, dialOpts{clientToken: ct})
	src.expectServiceIDs([]string{"SSH"})

	if _, err := tr.AttachRemote(Remote{TunnelID: "nope", Mode: store.ModeDestination, Peer: newLinkPeer(t)}); !errors.Is(err, ErrNotHere) {
		t.Errorf("AttachRemote(unknown tunnel) = %v, want ErrNotHere", err)
	}
	if _, err := tr.AttachRemote(Remote{TunnelID: "rr", Mode: store.ModeSource, Peer: newLinkPeer(t)}); !errors.Is(err, ErrNotHere) {
		t.Errorf("AttachRemote(no local destination) = %v, want ErrNotHere", err)
	}
	if _, err := tr.AttachRemote(Remote{TunnelID: "rr", Mode: store.ModeDestination, LocalEpoch: 4, Peer: newLinkPeer(t)}); !errors.Is(err, ErrStale) {
		t.Errorf("AttachRemote(wrong local epoch) = %v, want ErrStale", err)
	}

	link := newLinkPeer(t)
	a, err := tr.AttachRemote(Remote{TunnelID: "rr", Mode: store.ModeDestination, Epoch: 2, Peer: link})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Deliver(frames(t, start(1, "SSH"))); err != nil {
		t.Fatal(err)
	}
	src.recv()
	if _, err := tr.AttachRemote(Remote{TunnelID: "rr", Mode: store.ModeDestination, Epoch: 1, Peer: newLinkPeer(t)}); !errors.Is(err, ErrStale) {
		t.Errorf("AttachRemote(older epoch) = %v, want ErrStale", err)
	}
	// The destination connects here with epoch 3: it replaces the remote end.
	tr.authz.setEpoch(d, 3)
	dst := tr.dial(t, d, dialOpts{clientToken: ct})
	dst.expectServiceIDs([]string{"SSH"})
	link.expectClosed("1008 replaced by a new connection")
	if m := src.recv(); m.Type != wire.TypeStreamReset || m.StreamID != 1 {
		t.Fatalf("source got %v, want STREAM_RESET 1", m)
	}
	if err := a.Deliver(frames(t, data(1, "SSH", []byte("x")))); !errors.Is(err, ErrDetached) {
		t.Errorf("Deliver after replacement = %v, want ErrDetached", err)
	}
	a.Detach() // not current: no reset
	src.send(start(2, "SSH"))
	if m := dst.recv(); m.Type != wire.TypeStreamStart || m.StreamID != 2 {
		t.Fatalf("destination got %v", m)
	}

	// A remote end of epoch 4 replaces the local destination (epoch 3).
	link2 := newLinkPeer(t)
	a2, err := tr.AttachRemote(Remote{TunnelID: "rr", Mode: store.ModeDestination, Epoch: 4, LocalEpoch: 5, Peer: link2})
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Detach()
	dst.expectClose(wsconn.ClosePolicyViolation, "replaced by a new connection")
	if m := src.recv(); m.Type != wire.TypeStreamReset || m.StreamID != 2 {
		t.Fatalf("source got %v, want STREAM_RESET 2", m)
	}
	// A local handshake with an older epoch loses to it.
	tr.authz.setEpoch(d, 3)
	late := tr.dial(t, d, dialOpts{clientToken: ct})
	late.expectClose(wsconn.ClosePolicyViolation, "replaced by a new connection")
	src.send(data(2, "SSH", []byte("to the remote end")))
	if got := link2.recv(); len(got) != 1 || string(got[0].Payload) != "to the remote end" {
		t.Fatalf("remote end got %v", got)
	}
	// CloseTunnel closes the remote end's Peer too.
	tr.CloseTunnel("rr", "")
	src.expectClose(1000, "tunnel closed")
	link2.expectClosed("1000 tunnel closed")
}

// Shutdown drops remote ends like local ones.
func TestRemoteEndShutdown(t *testing.T) {
	tr := newTestRelay(t, Config{})
	s, _ := tr.authz.open("sd")
	src := tr.dial(t, s, dialOpts{})
	src.expectServiceIDs(nil)
	link := newLinkPeer(t)
	a, err := tr.AttachRemote(Remote{TunnelID: "sd", Mode: store.ModeDestination, Peer: link})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	link.expectClosed("abort")
	src.expectDropped()
	if err := a.Deliver(frames(t, data(1, "", []byte("x")))); !errors.Is(err, ErrDetached) {
		t.Errorf("Deliver after Shutdown = %v, want ErrDetached", err)
	}
}

// countPeer is a Peer that only counts the bytes sent to it.
type countPeer struct{ got chan int }

func (c *countPeer) Send(b []byte) error { c.got <- len(b); return nil }
func (c *countPeer) Close(int, string)   {}
func (c *countPeer) Abort()              {}

// The relay alone allocates nothing per relayed message, both ways: a
// local peer (a raw WebSocket client, allocating nothing itself) paired
// with a remote end (a Peer that only counts).
func TestRelayAllocsAlone(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("allocation counts need a normal build")
	}
	tr := newTestRelay(t, Config{PingInterval: -1})
	s, _ := tr.authz.open("alone")
	addr := strings.TrimPrefix(tr.srv.URL, "http://")
	resp, br, conn := rawUpgrade(t, addr, "/tunnel?local-proxy-mode=source", upgradeHeader(s, SubprotocolV3))
	if resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v", resp.Status)
	}
	readWSMessage(t, br) // SERVICE_IDS
	cp := &countPeer{got: make(chan int, 16)}
	a, err := tr.AttachRemote(Remote{TunnelID: "alone", Mode: store.ModeDestination, Peer: cp})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach()
	msg := frameBytes(t, data(1, "", []byte("small interactive payload")), data(1, "", []byte("and another")))
	// A client frame with a zero masking key: the payload as it is.
	ws := append([]byte{0x82, 0x80 | byte(len(msg)), 0, 0, 0, 0}, msg...)
	conn.SetDeadline(time.Now().Add(time.Minute))
	in := func() {
		if _, err := conn.Write(ws); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(msg); {
			got += <-cp.got
		}
	}
	buf := make([]byte, 2+len(msg))
	out := func() {
		if err := a.Deliver(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(br, buf); err != nil || buf[0] != 0x82 || int(buf[1]) != len(msg) {
			t.Fatalf("read %x: %v", buf[:2], err)
		}
	}
	for range 10 {
		in() // warm up pools
		out()
	}
	for _, c := range []struct {
		name string
		f    func()
	}{{"local to remote", in}, {"remote to local", out}} {
		got := testing.AllocsPerRun(500, c.f)
		t.Logf("%s: %.2f allocations per relayed message", c.name, got)
		if got > 0 {
			t.Errorf("%s: %.2f allocations per relayed message, want 0", c.name, got)
		}
	}
}
