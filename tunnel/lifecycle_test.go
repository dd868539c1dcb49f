package tunnel

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sectun/sectun/tunnel/internal/fakeservice"
)

// TestReconnect drops the source's WebSocket: open connections fail at
// once, the session reconnects with the same client token, and Dial works
// again.
func TestReconnect(t *testing.T) {
	ev := newEvents()
	svc, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, func(s, d *Config) { s.OnEvent = ev.add })
	a, b := dialAccept(t, src, dst, "SSH1")
	writeAll(t, a, []byte("before"))
	readN(t, b, 6)

	svc.Drop(fakeservice.Source)
	if _, err := readAll(t, a); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("source conn after drop: %v, want ErrDisconnected", err)
	}
	if _, err := a.Write([]byte("x")); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("Write after drop: %v", err)
	}
	// The destination's stream is reset by the service.
	if _, err := readAll(t, b); err != nil {
		t.Fatalf("destination conn after the source dropped: %v", err)
	}
	waitEvent(t, ev, func(e Disconnected) bool { return errors.Is(e.Err, ErrDisconnected) })
	waitEvent(t, ev, func(e Connected) bool { return e.Reconnect })

	toks := svc.ClientTokens(fakeservice.Source)
	if len(toks) != 2 || toks[0] != toks[1] || toks[0] == "" {
		t.Fatalf("client tokens %q: want the same one twice", toks)
	}
	c, d := dialAccept(t, src, dst, "SSH1")
	if c.StreamID() != 2 {
		t.Fatalf("stream ID after reconnect %d, want 2 (never reused)", c.StreamID())
	}
	writeAll(t, c, []byte("after"))
	if got := readN(t, d, 5); string(got) != "after" {
		t.Fatalf("got %q", got)
	}
}

// TestDialWaitsForReconnect: Dial during a reconnect waits for it.
func TestDialWaitsForReconnect(t *testing.T) {
	ev := newEvents()
	svc, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, func(s, d *Config) { s.OnEvent = ev.add })
	svc.FailNext(3, 503, "busy")
	svc.Drop(fakeservice.Source)
	waitEvent[Disconnected](t, ev, nil)
	a, err := src.Dial(testCtx(t), "SSH1")
	if err != nil {
		t.Fatalf("Dial during reconnect: %v", err)
	}
	b, err := dst.Accept(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, a, []byte("hi"))
	readN(t, b, 2)
	a.Close()
	b.Close()
	if n := svc.Handshakes(fakeservice.Source); n != 5 {
		t.Fatalf("%d source handshakes, want 5 (first, 3 refused, success)", n)
	}
	// The Dial's context bounds the wait.
	svc.FailNext(1000, 503, "busy")
	svc.Drop(fakeservice.Source)
	waitCount[Disconnected](t, ev, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := src.Dial(ctx, "SSH1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial: %v, want DeadlineExceeded", err)
	}
}

func TestTokenRejected(t *testing.T) {
	svc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1"}})
	for _, tc := range []struct {
		name   string
		mod    func(*Config)
		status int
		reason string
	}{
		{"bad token", func(c *Config) { c.AccessToken = "nope" }, 401, "check the token"},
		{"wrong mode", func(c *Config) { c.AccessToken = svc.DestinationToken }, 401, "other mode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := baseConfig(t, svc, ModeSource)
			tc.mod(&cfg)
			before := svc.Handshakes(fakeservice.Source)
			_, err := Connect(testCtx(t), cfg)
			var he *HandshakeError
			if !errors.As(err, &he) || !errors.Is(err, ErrTokenRejected) || he.StatusCode != tc.status || he.ChannelID == "" {
				t.Fatalf("Connect: %v", err)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("error %q does not say %q", err, tc.reason)
			}
			if n := svc.Handshakes(fakeservice.Source) - before; n != 1 {
				t.Errorf("%d attempts; a 4xx must not be retried", n)
			}
		})
	}
}

// TestTokenReuse: a used token only reconnects with the first client token.
func TestTokenReuse(t *testing.T) {
	svc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1"}})
	cfg := baseConfig(t, svc, ModeSource)
	cfg.ClientToken = strings.Repeat("a", 32)
	s := connect(t, cfg)
	s.Close()
	if err := svc.WaitConnected(testCtx(t), fakeservice.Source, false); err != nil {
		t.Fatal(err)
	}
	cfg.ClientToken = strings.Repeat("b", 32)
	_, err := Connect(testCtx(t), cfg)
	if !errors.Is(err, ErrTokenRejected) || !strings.Contains(err.Error(), "rotate-tunnel-access-token --tunnel-id TUNNEL_ID --client-mode SOURCE") {
		t.Fatalf("reuse with another client token: %v", err)
	}
	cfg.ClientToken = strings.Repeat("a", 32)
	connect(t, cfg)
}

// TestRejectedOnReconnect: a running session that gets a 4xx when it
// reconnects stops, with the reason.
func TestRejectedOnReconnect(t *testing.T) {
	ev := newEvents()
	svc, src, _ := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, func(s, d *Config) { s.OnEvent = ev.add })
	svc.FailNext(1, 401, "access token already used")
	svc.Drop(fakeservice.Source)
	select {
	case <-src.Done():
	case <-time.After(testTimeout):
		t.Fatal("session still running")
	}
	var he *HandshakeError
	if err := src.Err(); !errors.As(err, &he) || he.StatusCode != 401 {
		t.Fatalf("Err = %v", err)
	}
	st := waitEvent[Stopped](t, ev, nil)
	if !errors.Is(st.Err, ErrTokenRejected) {
		t.Fatalf("Stopped %v", st.Err)
	}
	if _, err := src.Dial(testCtx(t), "SSH1"); !errors.Is(err, ErrTokenRejected) {
		t.Fatalf("Dial after stop: %v", err)
	}
}

func TestServerErrorRetried(t *testing.T) {
	svc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1"}})
	svc.FailNext(2, 503, "try later")
	ev := newEvents()
	cfg := baseConfig(t, svc, ModeSource)
	cfg.OnEvent = ev.add
	connect(t, cfg)
	if n := svc.Handshakes(fakeservice.Source); n != 3 {
		t.Fatalf("%d handshakes, want 3", n)
	}
	r := waitEvent(t, ev, func(e Reconnecting) bool { return e.Attempt == 3 })
	var he *HandshakeError
	if !errors.As(r.Err, &he) || he.StatusCode != 503 || errors.Is(r.Err, ErrTokenRejected) {
		t.Fatalf("Reconnecting.Err = %v", r.Err)
	}

	// MaxAttempts gives up.
	svc.FailNext(3, 500, "down")
	cfg = baseConfig(t, svc, ModeSource)
	cfg.MaxAttempts = 2
	cfg.ClientToken = svc.ClientTokens(fakeservice.Source)[0] // reconnect allowed
	_, err := Connect(testCtx(t), cfg)
	if err == nil || !strings.Contains(err.Error(), "gave up after 2") {
		t.Fatalf("Connect: %v", err)
	}

	// The context bounds Connect.
	cfg.MaxAttempts = 0
	svc.FailNext(1000, 502, "bad gateway")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = Connect(ctx, cfg)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "502") {
		t.Fatalf("Connect: %v", err)
	}
}

func TestKeepaliveDetectsSilence(t *testing.T) {
	ev := newEvents()
	svc, src, _ := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, func(s, d *Config) {
		s.OnEvent = ev.add
		s.KeepaliveInterval = 200 * time.Millisecond
	})
	start := time.Now()
	svc.Freeze(fakeservice.Source)
	d := waitEvent[Disconnected](t, ev, nil)
	if !errors.Is(d.Err, ErrDisconnected) || !strings.Contains(d.Err.Error(), "keepalive") {
		t.Fatalf("Disconnected %v", d.Err)
	}
	t.Logf("silence detected after %v", time.Since(start))
	waitEvent(t, ev, func(e Connected) bool { return e.Reconnect })
	if src.Err() != nil {
		t.Fatal(src.Err())
	}
}

func TestTunnelClosed(t *testing.T) {
	ev := newEvents()
	svc, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, func(s, d *Config) { s.OnEvent = ev.add })
	a, b := dialAccept(t, src, dst, "SSH1")
	svc.CloseTunnel()
	for _, s := range []*Session{src, dst} {
		select {
		case <-s.Done():
		case <-time.After(testTimeout):
			t.Fatal("session still running")
		}
		if !errors.Is(s.Err(), ErrTunnelClosed) {
			t.Fatalf("Err = %v", s.Err())
		}
	}
	for _, c := range []*Conn{a, b} {
		// EOF if the service reset the stream before closing this side.
		if _, err := readAll(t, c); err != nil && !errors.Is(err, ErrTunnelClosed) {
			t.Fatalf("conn after tunnel closed: %v", err)
		}
	}
	if _, err := src.Dial(testCtx(t), "SSH1"); !errors.Is(err, ErrTunnelClosed) {
		t.Fatalf("Dial: %v", err)
	}
	if _, err := dst.Accept(testCtx(t)); !errors.Is(err, ErrTunnelClosed) {
		t.Fatalf("Accept: %v", err)
	}
	waitEvent[Stopped](t, ev, nil)
	evs := ev.list()
	if _, ok := evs[len(evs)-1].(Stopped); !ok {
		t.Fatalf("last event %#v, want Stopped", evs[len(evs)-1])
	}
	if _, ok := evs[0].(Connected); !ok {
		t.Fatalf("first event %#v, want Connected", evs[0])
	}
}

// TestServiceRestartReconnects: a going-away close frame is not the end.
func TestServiceRestartReconnects(t *testing.T) {
	ev := newEvents()
	svc, _, _ := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, func(s, d *Config) { s.OnEvent = ev.add })
	svc.CloseWith(fakeservice.Source, 1001, "going away")
	waitEvent(t, ev, func(e Connected) bool { return e.Reconnect })
}

func TestSessionClose(t *testing.T) {
	_, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, nil)
	a, b := dialAccept(t, src, dst, "SSH1")
	writeAll(t, b, []byte("unread"))
	readN(t, a, 6)
	src.Close()
	src.Close()
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, ErrSessionClosed) {
		t.Fatalf("Read after session Close: %v", err)
	}
	if _, err := src.Dial(testCtx(t), "SSH1"); !errors.Is(err, ErrSessionClosed) {
		t.Fatalf("Dial after Close: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, netErrClosed) {
		t.Fatalf("Read after Conn.Close: %v", err)
	}
	// The destination's connection is reset by the service.
	if _, err := readAll(t, b); err != nil {
		t.Fatal(err)
	}
}

func TestDisableReconnect(t *testing.T) {
	svc, src, _ := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, func(s, d *Config) { s.DisableReconnect = true })
	svc.Drop(fakeservice.Source)
	select {
	case <-src.Done():
	case <-time.After(testTimeout):
		t.Fatal("session still running")
	}
	if !errors.Is(src.Err(), ErrDisconnected) {
		t.Fatalf("Err = %v", src.Err())
	}
}

// TestNoServiceIDs: without SERVICE_IDS Connect waits ServiceIDsTimeout
// and goes on without checking service IDs.
func TestNoServiceIDs(t *testing.T) {
	svc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1"}, SkipServiceIDs: true})
	cfg := baseConfig(t, svc, ModeSource)
	cfg.ServiceIDsTimeout = 50 * time.Millisecond
	s := connect(t, cfg)
	if s.Services() != nil {
		t.Fatalf("Services = %q", s.Services())
	}
	c, err := s.Dial(testCtx(t), "SSH1")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// TestNoSubprotocolEcho: without Sec-WebSocket-Protocol in the answer the
// highest version offered is assumed.
func TestNoSubprotocolEcho(t *testing.T) {
	svc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1"}, OmitSubprotocol: true})
	s := connect(t, baseConfig(t, svc, ModeSource))
	if v := s.Version(); v != 3 {
		t.Fatalf("Version = %d", v)
	}
}

// TestMalformedFromService: garbage from the service costs a reconnect,
// not a hang or a crash.
func TestMalformedFromService(t *testing.T) {
	ev := newEvents()
	svc, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, func(s, d *Config) { s.OnEvent = ev.add })
	if err := svc.SendRaw(fakeservice.Source, []byte{0, 3, 0xff, 0xff, 0xff}); err != nil {
		t.Fatal(err)
	}
	d := waitEvent[Disconnected](t, ev, nil)
	if !errors.Is(d.Err, ErrDisconnected) {
		t.Fatalf("Disconnected %v", d.Err)
	}
	waitEvent(t, ev, func(e Connected) bool { return e.Reconnect })
	a, b := dialAccept(t, src, dst, "SSH1")
	writeAll(t, a, []byte("ok"))
	readN(t, b, 2)
}
