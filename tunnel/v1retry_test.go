package tunnel

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/relaytest"
	"github.com/sectun/sectun/internal/server/relay"
	"github.com/sectun/sectun/wire"
)

// relayTunnel opens a tunnel on the real relay (tunneld's /tunnel with
// its token rules) and returns source and destination configs for it.
func relayTunnel(t *testing.T, services ...string) (src, dst Config) {
	t.Helper()
	svc := relaytest.NewService(t, relay.Config{})
	_, st, dt := svc.Open(services...)
	base := Config{Endpoint: svc.URL, Logger: testLogger(t), ReconnectMin: 10 * time.Millisecond, ReconnectMax: 200 * time.Millisecond}
	src, dst = base, base
	src.Mode, src.AccessToken = ModeSource, st
	dst.Mode, dst.AccessToken = ModeDestination, dt
	return src, dst
}

// v1OnlyDestination is a destination like the AWS IoT Device Client: it
// connects with subprotocol 3.0 but answers only streams started in V1
// framing (no service ID); replies it would have to frame with a service
// ID or connection ID it drops. It echoes what it receives. It returns
// the messages it received, on a channel.
func v1OnlyDestination(t *testing.T, cfg Config) <-chan wire.Message {
	t.Helper()
	cfg.Subprotocols = []string{subprotocol(3)}
	r, err := DialRaw(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan wire.Message, 100)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		v1 := int32(0) // the stream started in V1 framing
		for {
			m, err := r.ReadMessage()
			if err != nil {
				return
			}
			cp := *m
			cp.Payload = append([]byte(nil), m.Payload...)
			select {
			case got <- cp:
			default:
			}
			switch {
			case m.Type == wire.TypeStreamStart && m.ServiceID == "":
				v1 = m.StreamID
			case m.Type == wire.TypeData && m.ServiceID == "" && m.StreamID == v1:
				r.WriteMessage(&wire.Message{Type: wire.TypeData, StreamID: v1, Payload: m.Payload})
			}
			// Everything else would need V2/V3 framing: dropped
			// (DATA_PROTOCOL_VERSION_MISMATCH in the Device Client's log).
		}
	}()
	t.Cleanup(func() { r.Close(); wg.Wait() })
	return got
}

// TestV1RetryDeviceClientLike: without PeerVersion, a source against a
// destination that answers only in V1 framing retries the silent first
// connection in V1 framing, replaying what it sent, and stays in V1.
func TestV1RetryDeviceClientLike(t *testing.T) {
	scfg, dcfg := relayTunnel(t, "SSH")
	v1OnlyDestination(t, dcfg)
	ev := newEvents()
	scfg.V1Retry = 300 * time.Millisecond
	scfg.OnEvent = ev.add
	src := connect(t, scfg)

	c, err := src.Dial(testCtx(t), "SSH")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	writeAll(t, c, []byte("SSH-2.0-client\r\n"))
	if got := readN(t, c, 16); string(got) != "SSH-2.0-client\r\n" {
		t.Fatalf("got %q", got)
	}
	t.Logf("first reply after %v (V1Retry %v)", time.Since(start).Round(time.Millisecond), scfg.V1Retry)
	writeAll(t, c, []byte("more"))
	if got := readN(t, c, 4); string(got) != "more" {
		t.Fatalf("got %q", got)
	}
	d := waitEvent(t, ev, func(e PeerVersionDetected) bool { return true })
	if d.Version != 1 || d.ServiceID != "SSH" {
		t.Fatalf("detected %+v, want V1 for SSH", d)
	}
	// The session stays in V1: the next connection answers at once.
	c.Close()
	c2, err := src.Dial(testCtx(t), "SSH")
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	start = time.Now()
	writeAll(t, c2, []byte("second"))
	if got := readN(t, c2, 6); string(got) != "second" {
		t.Fatalf("got %q", got)
	}
	if el := time.Since(start); el > scfg.V1Retry {
		t.Errorf("second connection answered after %v: not V1 from the start", el)
	}
}

// TestV1RetryExplicitPeerVersion: an explicit PeerVersion 3 is the
// override: no retry, the connection stays silent.
func TestV1RetryExplicitPeerVersion(t *testing.T) {
	scfg, dcfg := relayTunnel(t, "SSH")
	got := v1OnlyDestination(t, dcfg)
	scfg.V1Retry = 100 * time.Millisecond
	scfg.PeerVersion = 3
	src := connect(t, scfg)
	c, err := src.Dial(testCtx(t), "SSH")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	writeAll(t, c, []byte("x"))
	c.SetReadDeadline(time.Now().Add(10 * scfg.V1Retry))
	if n, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %d, %v: want a timeout (no retry with PeerVersion 3)", n, err)
	}
	for len(got) > 0 {
		if m := <-got; m.Type == wire.TypeStreamStart && m.ServiceID == "" {
			t.Fatalf("a V1 retry was sent: %v", m)
		}
	}
}

// TestV1RetryNotForSlowV3: a V3 destination that answers after the
// retry delay is not switched to V1: sectun's destination refuses the
// retry at once; a V3 peer that ignores it gets it reset once its V3
// reply came. The connection stays on its V3 stream.
func TestV1RetryNotForSlowV3(t *testing.T) {
	const retry = 150 * time.Millisecond
	t.Run("sectun destination", func(t *testing.T) {
		scfg, dcfg := relayTunnel(t, "SSH")
		ev := newEvents()
		scfg.V1Retry, scfg.OnEvent = retry, ev.add
		dst := connect(t, dcfg)
		src := connect(t, scfg)
		c, err := src.Dial(testCtx(t), "SSH")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		writeAll(t, c, []byte("request"))
		d, err := dst.Accept(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		if got := readN(t, d, 7); string(got) != "request" {
			t.Fatalf("destination got %q", got)
		}
		// Slow: answer well after the retry delay; the retry must not
		// have reached Accept (it would be a second connection to the
		// service, replaying the request).
		actx, cancel := context.WithTimeout(testCtx(t), 6*retry)
		if extra, err := dst.Accept(actx); err == nil {
			t.Fatalf("the V1 retry reached the destination's Accept: %v", extra.LocalAddr())
		}
		cancel()
		writeAll(t, d, []byte("late reply"))
		if got := readN(t, c, 10); string(got) != "late reply" {
			t.Fatalf("source got %q", got)
		}
		for _, e := range ev.list() {
			if _, ok := e.(PeerVersionDetected); ok {
				t.Fatalf("switched: %#v", e)
			}
		}
		// Still V3: a second simultaneous connection joins the stream.
		c2, err := src.Dial(testCtx(t), "SSH")
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close()
		if c2.ConnectionID() != 2 {
			t.Fatalf("second connection has ID %d, want 2 (V3)", c2.ConnectionID())
		}
		if d2, err := dst.Accept(testCtx(t)); err != nil || d2.ConnectionID() != 2 {
			t.Fatalf("second accept: %v, %v", d2, err)
		}
	})
	t.Run("V3 peer ignoring the retry", func(t *testing.T) {
		scfg, dcfg := relayTunnel(t, "SSH")
		ev := newEvents()
		scfg.V1Retry, scfg.OnEvent = retry, ev.add
		dcfg.Subprotocols = []string{subprotocol(3)}
		r, err := DialRaw(testCtx(t), dcfg)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if m, err := r.ReadMessage(); err != nil || m.Type != wire.TypeServiceIDs {
			t.Fatalf("first message %v, %v", m, err)
		}
		src := connect(t, scfg)
		c, err := src.Dial(testCtx(t), "SSH")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		writeAll(t, c, []byte("q"))
		var v3 int32
		var sawRetry bool
		for !sawRetry {
			m := readRaw(t, r)
			switch {
			case m.Type == wire.TypeStreamStart && m.ServiceID == "SSH":
				v3 = m.StreamID
			case m.Type == wire.TypeStreamStart && m.ServiceID == "":
				sawRetry = true
			}
		}
		r.WriteMessage(&wire.Message{Type: wire.TypeData, StreamID: v3, ServiceID: "SSH", ConnectionID: 1, Payload: []byte("v3!")})
		if got := readN(t, c, 3); string(got) != "v3!" {
			t.Fatalf("got %q", got)
		}
		// The retry is reset; the V3 stream goes on.
		for {
			m := readRaw(t, r)
			if m.Type == wire.TypeStreamReset && m.ServiceID == "" {
				break
			}
			if m.Type == wire.TypeStreamReset {
				t.Fatalf("the V3 stream was reset: %v", m)
			}
		}
		writeAll(t, c, []byte("again"))
		for {
			m := readRaw(t, r)
			if m.Type == wire.TypeData {
				if m.StreamID != v3 || m.ServiceID != "SSH" || m.ConnectionID != 1 || string(m.Payload) != "again" {
					t.Fatalf("after the V3 reply: %v, want V3 DATA on stream %d", m, v3)
				}
				break
			}
		}
		for _, e := range ev.list() {
			if _, ok := e.(PeerVersionDetected); ok {
				t.Fatalf("switched: %#v", e)
			}
		}
	})
}

func readRaw(t *testing.T, r *RawConn) wire.Message {
	t.Helper()
	r.ws.NetConn().SetReadDeadline(time.Now().Add(testTimeout))
	m, err := r.ReadMessage()
	if err != nil {
		t.Fatalf("ReadMessage: %v", err)
	}
	cp := *m
	cp.Payload = append([]byte(nil), m.Payload...)
	return cp
}

// TestResetReasons: a source tells a refused service (the destination's
// CONNECTION_RESET) from a missing destination (the service's
// STREAM_RESET), logs the destination coming and going, and gives no
// version hint for either.
func TestResetReasons(t *testing.T) {
	scfg, dcfg := relayTunnel(t, "SSH")
	ev := newEvents()
	scfg.OnEvent = ev.add
	scfg.NoReplyWarning = 50 * time.Millisecond
	scfg.V1Retry = -1
	src := connect(t, scfg)

	// No destination: the relay resets the stream at once, so the reset
	// may already have arrived when the write is made.
	c, err := src.Dial(testCtx(t), "SSH")
	if err != nil {
		t.Fatal(err)
	}
	c.SetWriteDeadline(time.Now().Add(testTimeout))
	if _, err := c.Write([]byte("x")); err != nil && !errors.Is(err, ErrStreamReset) {
		t.Fatalf("Write: %v", err)
	}
	if b, err := readAll(t, c); len(b) != 0 || err != nil {
		t.Fatalf("read %q, %v; want EOF", b, err)
	}
	if r := c.ResetReason(); !errors.Is(r, ErrPeerNotConnected) || !errors.Is(r, ErrStreamReset) {
		t.Fatalf("ResetReason = %v, want ErrPeerNotConnected", r)
	}
	waitEvent(t, ev, func(e DestinationStatus) bool { return !e.Connected })
	c.Close()

	// The destination connects; its service refuses.
	dst := connect(t, dcfg)
	c, err = src.Dial(testCtx(t), "SSH")
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, c, []byte("x"))
	d, err := dst.Accept(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	d.Reject()
	if b, err := readAll(t, c); len(b) != 0 || err != nil {
		t.Fatalf("read %q, %v; want EOF", b, err)
	}
	if r := c.ResetReason(); !errors.Is(r, ErrServiceRefused) {
		t.Fatalf("ResetReason = %v, want ErrServiceRefused", r)
	}
	waitEvent(t, ev, func(e DestinationStatus) bool { return e.Connected })
	c.Close()

	// A working connection, then the destination leaves.
	c, err = src.Dial(testCtx(t), "SSH")
	if err != nil {
		t.Fatal(err)
	}
	d, err = dst.Accept(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, d, []byte("hi"))
	if got := readN(t, c, 2); string(got) != "hi" {
		t.Fatalf("got %q", got)
	}
	n := len(ev.list())
	dst.Close()
	if _, err := io.ReadAll(c); err != nil && !errors.Is(err, ErrStreamReset) {
		t.Fatalf("after the destination left: %v", err)
	}
	if c.ResetReason() != nil {
		t.Errorf("ResetReason after a reply = %v, want nil", c.ResetReason())
	}
	waitEvent(t, ev, func(e DestinationStatus) bool { return !e.Connected && len(ev.list()) > n })
	for _, e := range ev.list() {
		if _, ok := e.(PeerSilent); ok {
			t.Errorf("version hint after a reset: %#v", e)
		}
	}
}

// sdkLikeDestination is a destination like the AWS IoT Device Client's
// SDK: V1 replies only, and a V1-framed STREAM_START while it holds a
// V3-framed stream makes it drop its WebSocket and connect again (same
// token and client token), after which it serves V1 streams by echoing.
func sdkLikeDestination(t *testing.T, cfg Config) {
	t.Helper()
	cfg.Subprotocols = []string{subprotocol(3)}
	cfg.ClientToken = "sdk-like-destination-0000000000000000"
	var wg sync.WaitGroup
	done := make(chan struct{})
	var mu sync.Mutex
	var cur *RawConn
	dial := func() *RawConn {
		r, err := DialRaw(context.Background(), cfg)
		if err != nil {
			t.Errorf("DialRaw: %v", err)
			return nil
		}
		mu.Lock()
		cur = r
		mu.Unlock()
		return r
	}
	r := dial()
	if r == nil {
		t.FailNow()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for r != nil {
			v3, v1 := false, int32(0)
			for {
				m, err := r.ReadMessage()
				if err != nil {
					r = nil
					break
				}
				switch {
				case m.Type == wire.TypeStreamStart && m.ServiceID != "":
					v3 = true
				case m.Type == wire.TypeStreamStart && v3:
					r.Close() // protocol version changed: start over
					select {
					case <-done:
						r = nil
					case <-time.After(200 * time.Millisecond): // the SDK's reconnect delay
						r = dial()
					}
				case m.Type == wire.TypeStreamStart:
					v1 = m.StreamID
				case m.Type == wire.TypeData && m.ServiceID == "" && m.StreamID == v1:
					r.WriteMessage(&wire.Message{Type: wire.TypeData, StreamID: v1, Payload: m.Payload})
				}
				if m.Type == wire.TypeStreamStart && v3 && m.ServiceID == "" {
					break
				}
			}
		}
	}()
	t.Cleanup(func() {
		close(done)
		mu.Lock()
		if cur != nil {
			cur.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// TestV1RetryDestinationReconnects: when the destination drops its
// WebSocket at the V1 retry (as the Device Client does to change protocol
// version), the source keeps the local connection, switches to V1 and
// starts it again in V1 framing once the destination is back.
func TestV1RetryDestinationReconnects(t *testing.T) {
	scfg, dcfg := relayTunnel(t, "SSH")
	sdkLikeDestination(t, dcfg)
	ev := newEvents()
	scfg.V1Retry, scfg.OnEvent = 200*time.Millisecond, ev.add
	src := connect(t, scfg)
	c, err := src.Dial(testCtx(t), "SSH")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	writeAll(t, c, []byte("banner"))
	if got := readN(t, c, 6); string(got) != "banner" {
		t.Fatalf("got %q", got)
	}
	writeAll(t, c, []byte("more"))
	if got := readN(t, c, 4); string(got) != "more" {
		t.Fatalf("got %q", got)
	}
	if d := waitEvent(t, ev, func(e PeerVersionDetected) bool { return true }); d.Version != 1 {
		t.Fatalf("detected %+v", d)
	}
}
