package relay

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/ratelimit"
	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/wsconn"
	"github.com/sectun/sectun/wire"
)

// testClock is a settable clock for the failure limiter.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// handshakeFrom performs a handshake by hand from the local address ip
// (Linux routes all of 127/8 to lo) and returns the response.
func handshakeFrom(t *testing.T, tr *testRelay, ip, target string, header http.Header) *http.Response {
	t.Helper()
	u, _ := url.Parse(tr.srv.URL)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: testTimeout}
	conn, err := d.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	req, _ := http.NewRequest(http.MethodGet, "http://"+u.Host+target, nil)
	req.Header = header
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		io.Copy(io.Discard, resp.Body)
	}
	resp.Body.Close()
	return resp
}

func TestFailureLimit(t *testing.T) {
	clock := &testClock{now: time.Now()}
	tr := newTestRelay(t, Config{HandshakeFailureLimit: ratelimit.Config{PerMinute: 10, Burst: 5, Cooldown: time.Minute, Now: clock.Now}})
	var authorized atomic.Int64
	tr.authz.setHook(func(context.Context, HandshakeRequest) error { authorized.Add(1); return nil })
	src, dst := tr.authz.open("t1", "SSH")
	const ok = "/tunnel?local-proxy-mode=source"
	const attacker, other = "127.0.0.1", "127.0.0.2"
	good := func(tok string) http.Header {
		h := upgradeHeader(tok, SubprotocolV3)
		h.Set("client-token", strings.Repeat("c", 32))
		return h
	}
	status := func(ip, target string, h http.Header) int {
		return handshakeFrom(t, tr, ip, target, h).StatusCode
	}

	// Successes never count: many reconnections, then the full burst of
	// failures is still available.
	for range 10 {
		if got := status(attacker, ok, good(src)); got != 101 {
			t.Fatalf("good handshake: %d", got)
		}
	}
	// 400 and 401 count; five in a row use up the burst.
	if got := status(attacker, "/tunnel?local-proxy-mode=both", good(src)); got != 400 {
		t.Fatalf("bad mode: %d", got)
	}
	for i := range 4 {
		if got := status(attacker, ok, good("guess-"+string(rune('a'+i)))); got != 401 {
			t.Fatalf("bad token %d: %d", i, got)
		}
	}
	calls := authorized.Load()
	for _, tc := range []struct {
		name   string
		target string
		h      http.Header
	}{
		{"bad token", ok, good("guess-z")},
		{"good token", ok, good(src)},
		{"malformed", "/tunnel", upgradeHeader("", "")},
	} {
		resp := handshakeFrom(t, tr, attacker, tc.target, tc.h)
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "60" || resp.Header.Get("channel-id") == "" {
			t.Fatalf("%s while blocked: %d Retry-After %q channel-id %q", tc.name, resp.StatusCode, resp.Header.Get("Retry-After"), resp.Header.Get("channel-id"))
		}
	}
	if n := authorized.Load(); n != calls {
		t.Fatalf("Authorize called %d times for blocked handshakes", n-calls)
	}
	// Another address is not affected.
	if got := status(other, "/tunnel?local-proxy-mode=destination", good(dst)); got != 101 {
		t.Fatalf("good token from %s: %d", other, got)
	}
	// The cool-down ends.
	clock.advance(59 * time.Second)
	if resp := handshakeFrom(t, tr, attacker, ok, good(src)); resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("1 s before the end: %d %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	clock.advance(time.Second)
	if got := status(attacker, ok, good(src)); got != 101 {
		t.Fatalf("after the cool-down: %d", got)
	}
	st := tr.Stats()
	if st.HandshakeFailures["rate_limited"] != 4 || st.AddressesBlocked != 1 || st.HandshakeFailures["unauthorized"] != 4 {
		t.Fatalf("stats %+v", st)
	}
}

// Server-side failures (5xx) are not the client's fault and do not count;
// loopback can be exempted.
func TestFailureLimitScope(t *testing.T) {
	t.Run("5xx", func(t *testing.T) {
		tr := newTestRelay(t, Config{HandshakeFailureLimit: ratelimit.Config{Burst: 2}})
		src, _ := tr.authz.open("t1")
		tr.authz.setHook(func(ctx context.Context, req HandshakeRequest) error {
			if req.AccessToken == "boom" {
				return context.DeadlineExceeded // not ErrUnauthorized: 500
			}
			return nil
		})
		for range 5 {
			if got := handshakeFrom(t, tr, "127.0.0.1", "/tunnel?local-proxy-mode=source", upgradeHeader("boom", SubprotocolV3)).StatusCode; got != 500 {
				t.Fatalf("got %d, want 500", got)
			}
		}
		if got := handshakeFrom(t, tr, "127.0.0.1", "/tunnel?local-proxy-mode=source", upgradeHeader(src, SubprotocolV3)).StatusCode; got != 101 {
			t.Fatalf("after 5xx refusals: %d", got)
		}
	})
	t.Run("exempt loopback", func(t *testing.T) {
		tr := newTestRelay(t, Config{HandshakeFailureLimit: ratelimit.Config{Burst: 2, ExemptLoopback: true}})
		for range 10 {
			if got := handshakeFrom(t, tr, "127.0.0.1", "/tunnel?local-proxy-mode=source", upgradeHeader("nope", SubprotocolV3)).StatusCode; got != 401 {
				t.Fatalf("got %d, want 401", got)
			}
		}
	})
	t.Run("off", func(t *testing.T) {
		tr := newTestRelay(t, Config{HandshakeFailureLimit: ratelimit.Config{PerMinute: -1}})
		for range 30 {
			if got := handshakeFrom(t, tr, "127.0.0.1", "/tunnel?local-proxy-mode=source", upgradeHeader("nope", SubprotocolV3)).StatusCode; got != 401 {
				t.Fatalf("got %d, want 401", got)
			}
		}
	})
}

// A peer that stops reading does not make the relay buffer: the sender is
// blocked (TCP backpressure, at most one message held by the relay), and
// after WriteTimeout the stuck peer is dropped, the sender gets its
// stream reset and goes on.
func TestStuckReceiverBlocksSender(t *testing.T) {
	const writeTimeout = 2 * time.Second
	tr := newTestRelay(t, Config{WriteTimeout: writeTimeout, PingInterval: -1, IdleTimeout: -1})
	src, dst := tr.dialPair(t, "stuck", "SSH")
	src.send(start(1, "SSH"))
	if m := dst.recv(); m.Type != wire.TypeStreamStart {
		t.Fatalf("got %v", m)
	}
	// dst stops reading from here on.
	if tc, ok := dst.conn.NetConn().(*net.TCPConn); ok {
		tc.SetReadBuffer(16 << 10)
	}

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heap0 := ms.HeapAlloc

	var sent atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		msg := frameBytes(t, data(1, "SSH", make([]byte, wire.MaxPayloadSize)), data(1, "SSH", make([]byte, wire.MaxPayloadSize)))
		for {
			select {
			case <-stop:
				return
			default:
			}
			if writeWithin(src.conn, testTimeout, msg) != nil {
				return
			}
			sent.Add(int64(len(msg)))
		}
	})
	defer func() { close(stop); src.conn.Close(wsconn.CloseNormal, ""); wg.Wait() }()

	// The sender stalls well before the relay gives up on dst.
	deadline := time.Now().Add(writeTimeout)
	last, since := sent.Load(), time.Now()
	for time.Since(since) < 300*time.Millisecond {
		if time.Now().After(deadline) {
			t.Fatalf("sender never blocked: %d bytes sent", sent.Load())
		}
		time.Sleep(20 * time.Millisecond)
		if n := sent.Load(); n != last {
			last, since = n, time.Now()
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	grew := int64(ms.HeapAlloc) - int64(heap0)
	t.Logf("sender blocked after %d bytes; heap grew %d bytes", last, grew)
	if grew > 2<<20 {
		t.Errorf("heap grew %d bytes while the receiver was stuck: the relay buffers", grew)
	}

	// The relay drops dst after WriteTimeout; src learns its stream is gone.
	tr.authz.waitConnected(t, "stuck", store.ModeDestination, false)
	for {
		m, err := src.fr.Next()
		if err != nil {
			t.Fatalf("source: %v", err)
		}
		if m.Type == wire.TypeStreamReset && m.StreamID == 1 {
			break
		}
	}
	if !tr.authz.connected("stuck", store.ModeSource) {
		t.Fatal("the sender was disconnected too")
	}
	// dst's connection ends (its close frame may be stuck behind the data).
	dst.conn.SetLiveness(testTimeout)
	for {
		if _, err := dst.conn.Read(make([]byte, 64<<10)); err != nil {
			var ce *wsconn.CloseError
			if errors.As(err, &ce) && ce.Code != wsconn.ClosePolicyViolation && ce.Code != 1006 { // 1006: cut without a close frame
				t.Fatalf("dst closed with %d %q", ce.Code, ce.Reason)
			}
			break
		}
	}
}

// While the relay is blocked writing one end's frames to the other end,
// which does not read, it does not read the first end either: that end's
// pings wait unanswered. The relay pings it every stallPing meanwhile, so
// a client with a liveness window shorter than PingInterval (20 s here)
// keeps the healthy connection.
func TestStuckReceiverSenderKeptAlive(t *testing.T) {
	tr := newTestRelay(t, Config{})
	src, dst := tr.dialPair(t, "alive")
	stuck := tr.currentPeer(t, "alive", store.ModeDestination)
	if err := stuck.conn.SetSocketBuffers(8<<10, 8<<10); err != nil {
		t.Fatal(err)
	}
	if err := dst.conn.SetSocketBuffers(8<<10, 8<<10); err != nil {
		t.Fatal(err)
	}
	// dst reads nothing. src sends until its writes block too, for at most
	// 1 s: then its connection refuses writes at once, and its pongs fail
	// without holding up its reader (a blocked writer would hold them for
	// wsconn's 5 s pong deadline).
	msg := frameBytes(t, data(1, "", make([]byte, wire.MaxPayloadSize)), data(1, "", make([]byte, wire.MaxPayloadSize)))
	wctx, wcancel := context.WithTimeout(context.Background(), time.Second)
	defer wcancel()
	for range 32 {
		if src.conn.WriteMessage(wctx, msg) != nil {
			break
		}
	}
	waitWriteBlocked(t, stuck)
	const window = 3 * time.Second
	src.conn.SetLiveness(window)
	done := make(chan error, 1)
	go func() {
		_, err := src.conn.Read(make([]byte, 1024))
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("the sender's connection ended while the receiver was stuck: %v", err)
	case <-time.After(window + window/2):
	}
	src.conn.Close(wsconn.CloseNormal, "")
	<-done
}
