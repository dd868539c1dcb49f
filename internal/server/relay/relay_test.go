package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/wsconn"
	"github.com/sectun/sectun/wire"
)

func frameBytes(t testing.TB, msgs ...*wire.Message) []byte {
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = wire.AppendFrame(b, m); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func TestRelayBothWays(t *testing.T) {
	tr := newTestRelay(t, Config{})
	src, dst := tr.dialPair(t, "t", "SSH1", "HTTP")

	src.send(start(1, "SSH1"), data(1, "SSH1", []byte("hello")))
	if m := dst.recv(); m.Type != wire.TypeStreamStart || m.StreamID != 1 || m.ServiceID != "SSH1" || m.ConnectionID != 1 {
		t.Fatalf("dst got %v", m)
	}
	if m := dst.recv(); m.Type != wire.TypeData || string(m.Payload) != "hello" {
		t.Fatalf("dst got %v", m)
	}
	dst.send(data(1, "SSH1", []byte("world")))
	if m := src.recv(); m.Type != wire.TypeData || string(m.Payload) != "world" {
		t.Fatalf("src got %v", m)
	}

	// Frames split across WebSocket messages, at every possible point,
	// including inside the length prefix.
	big := bytes.Repeat([]byte("0123456789abcdef"), wire.MaxPayloadSize/16)
	enc := frameBytes(t, data(1, "SSH1", big), data(1, "SSH1", []byte("x")))
	for _, cut := range []int{1, 2, 3, 100, len(enc) - 4} {
		src.sendRaw(enc[:cut])
		src.sendRaw(enc[cut:])
		if m := dst.recv(); !bytes.Equal(m.Payload, big) {
			t.Fatalf("cut %d: payload of %d bytes differs", cut, len(m.Payload))
		}
		if m := dst.recv(); string(m.Payload) != "x" {
			t.Fatalf("cut %d: got %v", cut, m)
		}
	}
	// One byte per message.
	small := frameBytes(t, data(1, "SSH1", []byte("bytewise")))
	for i := range small {
		src.sendRaw(small[i : i+1])
	}
	if m := dst.recv(); string(m.Payload) != "bytewise" {
		t.Fatalf("got %v", m)
	}
	// Many frames in one message, in order, from the destination.
	var msgs []*wire.Message
	for i := range 500 {
		msgs = append(msgs, data(1, "SSH1", []byte{byte(i), byte(i >> 8)}))
	}
	dst.send(msgs...)
	for i := range 500 {
		if m := src.recv(); m.Payload[0] != byte(i) || m.Payload[1] != byte(i>>8) {
			t.Fatalf("frame %d: got %v", i, m)
		}
	}
	// Maximum-size frames back to back in maximum-size messages: nothing
	// is merged, split or lost.
	full := frameBytes(t, data(7, "HTTP", big), data(7, "HTTP", big))
	if len(full) > wire.MaxWebSocketMessageSize {
		t.Fatalf("test bug: %d", len(full))
	}
	src.send(start(7, "HTTP"))
	dst.recv()
	// Sent while dst reads: 2.6 MB need not fit in the kernel's buffers.
	sent := make(chan error, 1)
	wctx, wcancel := context.WithTimeout(context.Background(), testTimeout)
	defer wcancel()
	go func() {
		var err error
		for range 20 {
			if err = src.conn.WriteMessage(wctx, full); err != nil {
				break
			}
		}
		sent <- err
	}()
	defer func() {
		if err := <-sent; err != nil {
			t.Errorf("send: %v", err)
		}
	}()
	for i := range 40 {
		if m := dst.recv(); m.StreamID != 7 || !bytes.Equal(m.Payload, big) {
			t.Fatalf("big frame %d: %v", i, m)
		}
	}
	st := tr.Stats()
	if st.Tunnels != 1 || st.Peers != 2 || st.FramesRelayed != 555 || st.FramesDropped != 0 {
		t.Errorf("Stats = %+v", st)
	}
}

// appendField appends a raw protobuf field to an encoded message.
func withField(t testing.TB, m *wire.Message, num protowire.Number, v uint64) []byte {
	b := m.Marshal()
	b = protowire.AppendTag(b, num, protowire.VarintType)
	b = protowire.AppendVarint(b, v)
	return b
}

func rawFrame(encoded []byte) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(encoded))), encoded...)
}

func TestViolationsCloseOnlyTheOffender(t *testing.T) {
	tests := []struct {
		name      string
		services  []string
		fromDst   bool
		before    []*wire.Message // sent first by the source, relayed
		raw       func(t testing.TB) []byte
		text      bool
		oversized bool
		code      int
		reason    string
	}{
		{name: "type unset", raw: func(t testing.TB) []byte { return rawFrame((&wire.Message{StreamID: 1}).Marshal()) }, code: 1008, reason: "invalid UNKNOWN"},
		{name: "start from destination", fromDst: true, raw: func(t testing.TB) []byte { return frameBytes(t, start(1, "")) }, code: 1008, reason: "invalid STREAM_START"},
		{name: "service ids from client", raw: func(t testing.TB) []byte {
			return frameBytes(t, &wire.Message{Type: wire.TypeServiceIDs, AvailableServiceIDs: []string{"a"}})
		}, code: 1008, reason: "invalid SERVICE_IDS"},
		{name: "session reset from client", fromDst: true, raw: func(t testing.TB) []byte { return frameBytes(t, &wire.Message{Type: wire.TypeSessionReset}) }, code: 1008, reason: "invalid SESSION_RESET"},
		{name: "stream id zero", raw: func(t testing.TB) []byte { return frameBytes(t, data(0, "", []byte("x"))) }, code: 1008, reason: "invalid DATA"},
		{name: "unknown type", raw: func(t testing.TB) []byte { return frameBytes(t, &wire.Message{Type: 42, StreamID: 1}) }, code: 1008, reason: "invalid TYPE_42"},
		{name: "unknown service", services: []string{"SSH1"}, raw: func(t testing.TB) []byte { return frameBytes(t, start(1, "SSH2")) }, code: 1008, reason: "service ID is not"},
		{name: "service on tunnel without", raw: func(t testing.TB) []byte { return frameBytes(t, data(1, "SSH1", []byte("x"))) }, code: 1008, reason: "service ID is not"},
		{name: "service on anonymous stream", services: []string{"SSH1"}, before: []*wire.Message{start(5, "")},
			raw: func(t testing.TB) []byte { return frameBytes(t, data(5, "SSH1", []byte("x"))) }, code: 1008, reason: "service ID on a stream"},
		{name: "service on anonymous stream reset", services: []string{"SSH1"}, before: []*wire.Message{start(5, "")},
			raw: func(t testing.TB) []byte {
				return frameBytes(t, &wire.Message{Type: wire.TypeStreamReset, StreamID: 5, ServiceID: "SSH1"})
			}, code: 1008, reason: "service ID on a stream"},
		{name: "extra field", raw: func(t testing.TB) []byte { return rawFrame(withField(t, data(1, "", []byte("x")), 8, 1)) }, code: 1002, reason: "malformed tunnel frame"},
		{name: "garbage", raw: func(t testing.TB) []byte { return rawFrame([]byte{0xff, 0xff, 0xff}) }, code: 1002, reason: "malformed tunnel frame"},
		{name: "empty frame", raw: func(t testing.TB) []byte { return []byte{0, 0} }, code: 1002, reason: "malformed tunnel frame"},
		{name: "text message", text: true, code: 1003},
		{name: "oversized message", oversized: true, code: 1009},
	}
	tr := newTestRelay(t, Config{})
	// A bystander tunnel that must keep working throughout.
	bs, bd := tr.dialPair(t, "bystander")
	bs.send(start(1, ""))
	bd.recv()
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := "v" + string(rune('a'+i))
			src, dst := tr.dialPair(t, id, tc.services...)
			for _, m := range tc.before {
				src.send(m)
				dst.recv()
			}
			offender, other, offMode := src, dst, store.ModeSource
			if tc.fromDst {
				offender, other, offMode = dst, src, store.ModeDestination
			}
			before := tr.Stats().Violations
			switch {
			case tc.text:
				if err := sendRawFrame(offender, 0x1, 5); err != nil {
					t.Fatal(err)
				}
			case tc.oversized:
				// Only the header: the relay refuses the length before
				// reading any payload.
				if err := sendRawFrame(offender, 0x2, wire.MaxWebSocketMessageSize+1); err != nil {
					t.Fatal(err)
				}
			default:
				offender.sendRaw(tc.raw(t))
			}
			offender.expectClose(tc.code, tc.reason)
			tr.authz.waitConnected(t, id, offMode, false)
			if !tr.authz.connected(id, map[bool]store.Mode{true: store.ModeSource, false: store.ModeDestination}[tc.fromDst]) {
				t.Error("the other end was disconnected")
			}
			if tc.code != 1009 && tr.Stats().Violations != before+1 {
				t.Errorf("violations %d, want %d", tr.Stats().Violations, before+1)
			}
			// The other peer's connection is still up: it reads no close.
			other.send(data(1, "", []byte("ping")))
			bs.send(data(1, "", []byte(tc.name)))
			if m := bd.recv(); string(m.Payload) != tc.name {
				t.Fatalf("bystander got %v", m)
			}
		})
	}
}

// sendRawFrame writes a masked frame header with the opcode and length
// straight to the client's socket, and a payload when it is short.
func sendRawFrame(c *client, opcode byte, length int) error {
	mask := [4]byte{1, 2, 3, 4}
	var b []byte
	if length < 126 {
		b = []byte{0x80 | opcode, 0x80 | byte(length)}
		b = append(b, mask[:]...)
		for i := range length {
			b = append(b, 'x'^mask[i%4])
		}
	} else {
		b = []byte{0x80 | opcode, 0x80 | 127}
		b = binary.BigEndian.AppendUint64(b, uint64(length))
		b = append(b, mask[:]...)
	}
	_, err := c.conn.NetConn().Write(b)
	return err
}

func TestPeerReplacement(t *testing.T) {
	tr := newTestRelay(t, Config{})
	s, d := tr.authz.open("r", "SSH1", "HTTP")
	ct := strings.Repeat("c", 40)
	dst := tr.dial(t, d, dialOpts{clientToken: ct})
	dst.expectServiceIDs([]string{"SSH1", "HTTP"})
	src := tr.dial(t, s, dialOpts{clientToken: ct})
	src.expectServiceIDs([]string{"SSH1", "HTTP"})
	tr.authz.waitConnected(t, "r", store.ModeDestination, true)

	src.send(start(3, "SSH1"), start(4, "HTTP"), start(9, "HTTP"), &wire.Message{Type: wire.TypeStreamReset, StreamID: 3, ServiceID: "SSH1"}, start(5, "SSH1"))
	for range 5 {
		dst.recv()
	}
	// The destination reconnects with the same tokens.
	dst2 := tr.dial(t, d, dialOpts{clientToken: ct})
	dst2.expectServiceIDs([]string{"SSH1", "HTTP"})
	dst.expectClose(1008, "replaced by a new connection")
	for _, want := range []*wire.Message{
		{Type: wire.TypeStreamReset, StreamID: 9, ServiceID: "HTTP"},
		{Type: wire.TypeStreamReset, StreamID: 5, ServiceID: "SSH1"},
	} {
		if m := src.recv(); m.Type != want.Type || m.StreamID != want.StreamID || m.ServiceID != want.ServiceID {
			t.Errorf("source got %v, want %v", m, want)
		}
	}
	// Only the new destination is connected, and it relays.
	src.send(start(6, "SSH1"))
	if m := dst2.recv(); m.StreamID != 6 {
		t.Errorf("new destination got %v", m)
	}
	if !tr.authz.connected("r", store.ModeDestination) {
		t.Error("destination reported disconnected after replacement")
	}
	if st := tr.Stats(); st.Replaced != 1 || st.Peers != 2 {
		t.Errorf("Stats = %+v", st)
	}
	// A different client token is refused by the authorizer.
	if _, err := tr.tryDial(t, d, dialOpts{clientToken: strings.Repeat("x", 40)}); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("other client token: %v", err)
	}
}

// A peer that stopped reading (blackholed) is replaced by its reconnection:
// the new connection gets SERVICE_IDS at once, not after the close frame
// to the old one, which waits (1 s) behind a write stuck on its socket.
func TestReplacedStuckPeerDoesNotDelay(t *testing.T) {
	tr := newTestRelay(t, Config{PingInterval: -1})
	s, d := tr.authz.open("bh", "SSH")
	ct := strings.Repeat("c", 40)
	dst := tr.dial(t, d, dialOpts{clientToken: ct})
	dst.expectServiceIDs([]string{"SSH"})
	src := tr.dial(t, s, dialOpts{clientToken: ct})
	src.expectServiceIDs([]string{"SSH"})
	tr.authz.waitConnected(t, "bh", store.ModeDestination, true)
	// dst reads nothing from here on; small buffers on both sides of its
	// connection so that the relay's writes to it block soon.
	old := tr.currentPeer(t, "bh", store.ModeDestination)
	if err := old.conn.SetSocketBuffers(8<<10, 8<<10); err != nil {
		t.Fatal(err)
	}
	if err := dst.conn.SetSocketBuffers(8<<10, 8<<10); err != nil {
		t.Fatal(err)
	}
	src.send(start(1, "SSH"))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	defer func() { close(stop); src.conn.Close(wsconn.CloseNormal, ""); wg.Wait() }()
	wg.Go(func() {
		msg := frameBytes(t, data(1, "SSH", make([]byte, wire.MaxPayloadSize)))
		for {
			select {
			case <-stop:
				return
			default:
			}
			if writeWithin(src.conn, testTimeout, msg) != nil {
				return
			}
		}
	})
	waitWriteBlocked(t, old) // the source's reader is stuck writing to dst

	dst2 := tr.dial(t, d, dialOpts{clientToken: ct})
	begin := time.Now()
	dst2.expectServiceIDs([]string{"SSH"})
	// Without the fix this is at least 1 s (the close frame's deadline).
	if wait := time.Since(begin); wait >= time.Second {
		t.Errorf("SERVICE_IDS came %v after the handshake", wait)
	}
	// The source's reader, stuck writing to the old peer, is freed soon
	// (replaceGrace) and relays to the new one. Without the cut this is
	// at least 1 s (the close frame's wait for the write lock), and 3 s
	// when the close frame's failure is followed by the linger. (2 s: a
	// margin for loaded machines.)
	if m := dst2.recv(); m.Type != wire.TypeData {
		t.Errorf("new destination got %v, want DATA", m)
	}
	if wait := time.Since(begin); wait >= 2*time.Second {
		t.Errorf("first DATA came %v after the handshake", wait)
	}
	if m := src.recv(); m.Type != wire.TypeStreamReset || m.StreamID != 1 {
		t.Errorf("source got %v, want STREAM_RESET 1", m)
	}
}

func TestDisconnectResetsStreams(t *testing.T) {
	for _, leaver := range []store.Mode{store.ModeSource, store.ModeDestination} {
		t.Run(string(leaver), func(t *testing.T) {
			tr := newTestRelay(t, Config{})
			src, dst := tr.dialPair(t, "d", "SSH1")
			src.send(start(2, "SSH1"), data(2, "SSH1", []byte("a")))
			dst.recv()
			dst.recv()
			gone, stays := src, dst
			if leaver == store.ModeDestination {
				gone, stays = dst, src
			}
			// The leaver's last frame is delivered before the reset.
			gone.send(data(2, "SSH1", []byte("last")))
			gone.conn.Close(wsconn.CloseNormal, "")
			if m := stays.recv(); string(m.Payload) != "last" {
				t.Fatalf("got %v", m)
			}
			if m := stays.recv(); m.Type != wire.TypeStreamReset || m.StreamID != 2 || m.ServiceID != "SSH1" {
				t.Fatalf("got %v, want STREAM_RESET 2 SSH1", m)
			}
			tr.authz.waitConnected(t, "d", leaver, false)
		})
	}
}

func TestFramesToAbsentPeer(t *testing.T) {
	tr := newTestRelay(t, Config{})
	s, _ := tr.authz.open("a", "SSH1")
	src := tr.dial(t, s, dialOpts{})
	src.expectServiceIDs([]string{"SSH1"})
	src.send(data(1, "SSH1", []byte("nobody")), start(1, "SSH1"), &wire.Message{Type: wire.TypeConnectionStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 2})
	if m := src.recv(); m.Type != wire.TypeStreamReset || m.StreamID != 1 || m.ServiceID != "SSH1" {
		t.Errorf("got %v, want STREAM_RESET", m)
	}
	if m := src.recv(); m.Type != wire.TypeConnectionReset || m.StreamID != 1 || m.ConnectionID != 2 {
		t.Errorf("got %v, want CONNECTION_RESET", m)
	}
	if st := tr.Stats(); st.FramesDropped != 3 || st.FramesRelayed != 0 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestCloseTunnel(t *testing.T) {
	tr := newTestRelay(t, Config{})
	src, dst := tr.dialPair(t, "c")
	other, _ := tr.dialPair(t, "other")
	tr.CloseTunnel("c", "tunnel closed by CloseTunnel")
	src.expectClose(1000, "tunnel closed by CloseTunnel")
	dst.expectClose(1000, "tunnel closed by CloseTunnel")
	tr.authz.waitConnected(t, "c", store.ModeSource, false)
	tr.authz.waitConnected(t, "c", store.ModeDestination, false)
	waitFor(t, "tunnel forgotten", func() bool { return tr.Stats().Tunnels == 1 })
	_ = other
}

func TestDisconnectPeer(t *testing.T) {
	tr := newTestRelay(t, Config{})
	src, dst := tr.dialPair(t, "p", "SSH1")
	src.send(start(1, "SSH1"))
	dst.recv()
	tr.DisconnectPeer("p", store.ModeSource, "")
	src.expectClose(1008, "access token rotated")
	if m := dst.recv(); m.Type != wire.TypeStreamReset || m.StreamID != 1 {
		t.Errorf("destination got %v", m)
	}
	tr.authz.waitConnected(t, "p", store.ModeSource, false)
	if !tr.authz.connected("p", store.ModeDestination) {
		t.Error("destination disconnected")
	}
}

// A handshake authorized just before CloseTunnel or DisconnectPeer must
// not leave a peer connected.
func TestFenceRefusesInFlightHandshake(t *testing.T) {
	for _, tc := range []struct {
		name   string
		act    func(r *Relay)
		code   int
		reason string
	}{
		{"close", func(r *Relay) { r.CloseTunnel("f", "") }, 1000, "tunnel closed"},
		{"rotate", func(r *Relay) { r.DisconnectPeer("f", store.ModeSource, "") }, 1008, "access token rotated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTestRelay(t, Config{})
			s, _ := tr.authz.open("f")
			tr.authz.setHook(func(ctx context.Context, req HandshakeRequest) error {
				tc.act(tr.Relay) // the store changed while Authorize ran
				return nil
			})
			c := tr.dial(t, s, dialOpts{})
			c.expectClose(tc.code, tc.reason)
			if f := tr.Stats().HandshakeFailures["fenced"]; f != 1 {
				t.Errorf("fenced = %d", f)
			}
		})
	}
}

func TestShutdown(t *testing.T) {
	tr := newTestRelay(t, Config{})
	var clients []*client
	for _, id := range []string{"x", "y", "z"} {
		s, d := tr.dialPair(t, id)
		clients = append(clients, s, d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// No close frame: the reference local proxy exits on any close frame,
	// and reconnects after a dropped connection.
	for _, c := range clients {
		c.expectDropped()
	}
	s, _ := tr.authz.open("late")
	if _, err := tr.tryDial(t, s, dialOpts{}); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("handshake after shutdown: %v", err)
	}
	if st := tr.Stats(); st.Peers != 0 {
		t.Errorf("peers after shutdown: %d", st.Peers)
	}
	if err := tr.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}

// Shutdown with a receiver that does not read: the sender's reader is
// blocked writing to it. Shutdown cuts that write after shutdownDrain,
// drops both connections without a close frame, and what the receiver
// then reads is whole frames, in order.
func TestShutdownStuckReceiver(t *testing.T) {
	tr := newTestRelay(t, Config{PingInterval: -1})
	src, dst := tr.dialPair(t, "stuck")
	var sent atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(stop); wg.Wait() }()
	wg.Go(func() {
		payload := make([]byte, wire.MaxPayloadSize)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			binary.BigEndian.PutUint32(payload, uint32(i))
			if writeWithin(src.conn, testTimeout, frameBytes(t, data(1, "", payload))) != nil {
				return
			}
			sent.Add(1)
		}
	})
	waitWriteBlocked(t, tr.currentPeer(t, "stuck", store.ModeDestination))

	begin := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took < shutdownDrain || took > shutdownDrain+2*time.Second {
		t.Errorf("Shutdown took %v, want about %v", took, shutdownDrain)
	}
	src.expectDropped()
	for i := uint32(0); ; i++ {
		m, err := dst.fr.Next()
		if err != nil {
			var ce *wsconn.CloseError
			if errors.As(err, &ce) && ce.Code != 1006 {
				t.Fatalf("receiver closed with %d %q", ce.Code, ce.Reason)
			}
			t.Logf("receiver read %d frames of %d sent, then %v", i, sent.Load(), err)
			break
		}
		if got := binary.BigEndian.Uint32(m.Payload); got != i || len(m.Payload) != wire.MaxPayloadSize {
			t.Fatalf("frame %d: sequence %d, %d bytes", i, got, len(m.Payload))
		}
	}
}

func TestIdleTimeout(t *testing.T) {
	t.Run("silent peer dropped", func(t *testing.T) {
		tr := newTestRelay(t, Config{IdleTimeout: 200 * time.Millisecond, PingInterval: -1})
		s, _ := tr.authz.open("i")
		c := tr.dial(t, s, dialOpts{})
		c.expectServiceIDs(nil)
		c.expectDropped()
	})
	t.Run("pings keep it alive", func(t *testing.T) {
		// Generous margins: a stall of the test process longer than
		// IdleTimeout minus PingInterval would fail it.
		tr := newTestRelay(t, Config{IdleTimeout: time.Second, PingInterval: 100 * time.Millisecond})
		s, _ := tr.authz.open("i")
		c := tr.dial(t, s, dialOpts{})
		c.expectServiceIDs(nil)
		// The client only reads (answering the relay's pings) and is
		// still connected well past the idle timeout.
		done := make(chan error, 1)
		go func() { _, err := c.fr.Next(); done <- err }()
		select {
		case err := <-done:
			t.Fatalf("connection ended: %v", err)
		case <-time.After(2 * time.Second):
		}
		c.conn.Close(wsconn.CloseNormal, "")
		<-done
	})
}

func TestBandwidthLimit(t *testing.T) {
	const limit = 512 << 10
	const total = 2 << 20
	tr := newTestRelay(t, Config{BandwidthLimit: limit})
	src, dst := tr.dialPair(t, "bw")
	payload := make([]byte, 16<<10)
	msg := frameBytes(t, data(1, "", payload))
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for src.conn.WriteMessage(context.Background(), msg) == nil {
		}
	}()
	// A byte count, and a lower bound on the time it takes: a slow machine
	// only makes it take longer.
	begin := time.Now()
	var got int
	for got < total {
		m, err := dst.fr.Next()
		if err != nil {
			t.Fatal(err)
		}
		got += wire.FrameHeaderSize + m.Size()
	}
	elapsed := time.Since(begin)
	src.conn.Close(wsconn.CloseNormal, "") // unblocks the writer
	<-sent
	// What may pass without waiting: the burst, what the reader consumed
	// before waiting for it (one read: up to its whole buffer, since
	// wsconn's server reads take all the connection holds) and one message
	// in flight.
	free := limiterBurst + inBufSize + len(msg)
	minimum := time.Duration(float64(got-free) / limit * float64(time.Second))
	t.Logf("received %d bytes in %v (%.0f B/s, limit %d, minimum time %v)", got, elapsed, float64(got)/elapsed.Seconds(), limit, minimum)
	if elapsed < minimum*95/100 {
		t.Errorf("received %d bytes in %v: faster than the limit of %d B/s allows (%v)", got, elapsed, limit, minimum)
	}
}

// Random bytes, random message cuts: the relay never panics, closes the
// offender, and keeps serving a bystander tunnel.
func TestHostileFrames(t *testing.T) {
	tr := newTestRelay(t, Config{})
	bs, bd := tr.dialPair(t, "bystander")
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		id := "h" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		s, d := tr.authz.open(id, "SSH1")
		dst := tr.dial(t, d, dialOpts{})
		src := tr.dial(t, s, dialOpts{})
		go func() {
			for {
				if _, err := dst.fr.Next(); err != nil {
					return
				}
			}
		}()
		var b []byte
		switch rng.IntN(3) {
		case 0: // pure noise
			b = make([]byte, rng.IntN(300))
			for j := range b {
				b[j] = byte(rng.Uint32())
			}
		case 1: // valid frames with a mutated byte
			b = frameBytes(t, start(1, "SSH1"), data(1, "SSH1", []byte("abc")), &wire.Message{Type: wire.TypeConnectionReset, StreamID: 1, ConnectionID: 3})
			b[rng.IntN(len(b))] ^= byte(1 + rng.IntN(255))
		case 2: // random plausible messages
			for range 1 + rng.IntN(5) {
				m := &wire.Message{Type: wire.Type(rng.IntN(10)), StreamID: int32(rng.IntN(3)), ServiceID: []string{"", "SSH1", "X"}[rng.IntN(3)], Ignorable: rng.IntN(2) == 0, ConnectionID: uint32(rng.IntN(3))}
				if rng.IntN(2) == 0 {
					m.Payload = []byte("p")
				}
				if fb, err := wire.AppendFrame(b, m); err == nil {
					b = fb
				}
			}
		}
		for len(b) > 0 {
			n := 1 + rng.IntN(len(b))
			if src.conn.WriteMessage(context.Background(), b[:n]) != nil {
				break
			}
			b = b[n:]
		}
		src.conn.Close(wsconn.CloseNormal, "")
		dst.conn.Close(wsconn.CloseNormal, "")
	}
	bs.send(data(1, "", []byte("still here")))
	if m := bd.recv(); string(m.Payload) != "still here" {
		t.Fatalf("bystander got %v", m)
	}
}

func TestMetricsRegistered(t *testing.T) {
	tr := newTestRelay(t, Config{})
	_ = tr
	reg := prometheus.NewRegistry()
	r, err := New(Config{Authorizer: newMemAuthz(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, n := range []string{"tunneld_relay_peers", "tunneld_relay_bytes_total", "tunneld_relay_handshake_failures_total"} {
		if !names[n] {
			t.Errorf("metric %s missing", n)
		}
	}
	if _, err := New(Config{Authorizer: newMemAuthz(), Registerer: reg}); err == nil {
		t.Error("registering twice succeeded")
	}
	r.Shutdown(context.Background())
}

var _ = errors.New
var _ = http.StatusOK

// Nothing on the path of a relayed message allocates, clients included
// (wsconn's reader and writer on both sides, the relay, wire's
// FrameReader): gorilla's reader allocated one object per message.
func TestDataPathAllocs(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("allocation counts need a normal build")
	}
	tr := newTestRelay(t, Config{PingInterval: -1})
	src, dst := tr.dialPair(t, "allocs")
	msg := frameBytes(t, data(1, "", []byte("small interactive payload")), data(1, "", []byte("and another")))
	relay := func() {
		src.sendRaw(msg)
		for range 2 {
			if _, err := dst.fr.NextFrame(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for range 10 {
		relay() // warm up pools
	}
	got := testing.AllocsPerRun(500, relay)
	t.Logf("%.2f allocations per relayed message (clients included)", got)
	if got >= 0.5 { // 0, but for a rare pool refill after a GC
		t.Errorf("%.2f allocations per relayed message, want 0", got)
	}
}

// Over TLS a read returns one 16 KiB record. With a bulk transfer under
// way the relay reads ahead what the kernel already holds instead of
// sending each record's frames as a message of their own: messages to the
// receiver carry several 16 KiB frames.
func TestReadAheadTLS(t *testing.T) {
	a := newMemAuthz()
	r, err := New(Config{Authorizer: a, PingInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(r)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		r.Shutdown(ctx)
		srv.Close()
	})
	s, d := a.open("tls")
	tlsCfg := srv.Client().Transport.(*http.Transport).TLSClientConfig
	host := strings.TrimPrefix(srv.URL, "https://")

	// The receiver by hand, to see WebSocket message boundaries.
	raw, err := tls.Dial("tcp", host, tlsCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	raw.SetDeadline(time.Now().Add(testTimeout))
	req, _ := http.NewRequest(http.MethodGet, "https://"+host+"/tunnel?local-proxy-mode=destination", nil)
	req.Header = upgradeHeader(d, SubprotocolV3)
	if err := req.Write(raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(raw)
	resp, err := http.ReadResponse(br, req)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	readWSMessage(t, br) // SERVICE_IDS

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	h := http.Header{}
	h.Set("access-token", s)
	src, _, err := wsconn.Dial(ctx, "wss://"+host+"/tunnel?local-proxy-mode=source", wsconn.DialOptions{
		Header: h, Subprotocols: []string{SubprotocolV3}, TLS: tlsCfg,
		Proxy: func(*url.URL) (*url.URL, error) { return nil, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close(wsconn.CloseNormal, "") })
	const frames = 350
	payload := make([]byte, 16<<10)
	msg := frameBytes(t, data(1, "", payload), data(1, "", payload), data(1, "", payload), data(1, "", payload), data(1, "", payload), data(1, "", payload), data(1, "", payload))
	sent := make(chan error, 1)
	go func() {
		var err error
		for range frames / 7 {
			if err = src.WriteMessage(context.Background(), msg); err != nil {
				break
			}
		}
		sent <- err
	}()
	var got, msgs int
	for got < frames {
		raw.SetDeadline(time.Now().Add(testTimeout))
		m := readWSMessage(t, br)
		msgs++
		for len(m) > 0 {
			n := int(binary.BigEndian.Uint16(m))
			m = m[wire.FrameHeaderSize+n:]
			got++
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	perMsg := float64(got) / float64(msgs)
	t.Logf("%d frames of 16 KiB in %d messages: %.2f per message", got, msgs, perMsg)
	// One frame per message, always, when every record is sent on its own
	// (each read completes at most one 16 KiB frame); how many more depends
	// on how far the sender is ahead of the relay (2.3-2.7 unloaded, 1.4
	// with -race on a loaded machine).
	if msgs >= got {
		t.Errorf("%.2f frames per message: the relay sends one TLS record's worth at a time", perMsg)
	}
}
