package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sectun/sectun/internal/relaytest"
	"github.com/sectun/sectun/internal/server/relay"
	"github.com/sectun/sectun/tunnel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testTimeout bounds every wait: generous for a loaded machine, yet a hang
// fails rather than stalls.
const testTimeout = 20 * time.Second

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// testLogger logs to the test's output at warning level;
// SECTUN_TEST_DEBUG=1 shows everything.
func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("SECTUN_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	if _, ok := t.(*testing.B); ok {
		level = slog.LevelError
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: level}))
}

// world is a relay on 127.0.0.1 reached through a forwarder whose
// connections a test can cut, to make sessions reconnect.
type world struct {
	t   testing.TB
	svc *relaytest.Service
	fwd *forwarder
	url string // ws://127.0.0.1:port (the forwarder)
}

func newWorld(t testing.TB) *world {
	t.Helper()
	svc := relaytest.NewService(t, relay.Config{})
	fwd := newForwarder(t, svc.Addr)
	return &world{t: t, svc: svc, fwd: fwd, url: "ws://" + fwd.addr()}
}

// open adds a tunnel and returns its tokens.
func (w *world) open(services ...string) (src, dst string) {
	_, src, dst = w.svc.Open(services...)
	return src, dst
}

// connect connects a session; tweak may change the config.
func (w *world) connect(t testing.TB, mode tunnel.Mode, tok string, tweak func(*tunnel.Config)) *tunnel.Session {
	t.Helper()
	cfg := tunnel.Config{
		Mode:         mode,
		AccessToken:  tok,
		Endpoint:     w.url,
		Proxy:        func(*url.URL) (*url.URL, error) { return nil, nil },
		ReconnectMin: 50 * time.Millisecond,
		ReconnectMax: 200 * time.Millisecond,
		Logger:       testLogger(t).With("side", mode.String()),
	}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := tunnel.Connect(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("connect %s: %v", mode, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// pair connects both ends of a new tunnel with the given services.
func (w *world) pair(t testing.TB, services ...string) (src, dst *tunnel.Session) {
	t.Helper()
	st, dt := w.open(services...)
	dst = w.connect(t, tunnel.ModeDestination, dt, nil)
	src = w.connect(t, tunnel.ModeSource, st, nil)
	return src, dst
}

// forwarder relays TCP connections to a target and can cut them all.
type forwarder struct {
	t      testing.TB
	ln     net.Listener
	target string
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
}

func newForwarder(t testing.TB, target string) *forwarder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{t: t, ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.loop()
	t.Cleanup(func() {
		ln.Close()
		f.cut()
		f.wg.Wait()
	})
	return f
}

func (f *forwarder) addr() string { return f.ln.Addr().String() }

func (f *forwarder) loop() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", f.target)
		if err != nil {
			c.Close()
			continue
		}
		f.mu.Lock()
		f.conns[c], f.conns[u] = struct{}{}, struct{}{}
		f.mu.Unlock()
		f.wg.Add(2)
		go f.copy(c, u)
		go f.copy(u, c)
	}
}

func (f *forwarder) copy(dst, src net.Conn) {
	defer f.wg.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
	f.mu.Lock()
	delete(f.conns, dst)
	delete(f.conns, src)
	f.mu.Unlock()
}

// cut closes every forwarded connection.
func (f *forwarder) cut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.Close()
	}
}

// listenAt listens on network/addr for a tcptest.Serve at a given address.
func listenAt(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// waitFor polls cond until it holds (a bounded poll for a state that has no
// event to wait on).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// dialLocal connects to a Source's address for a service.
func dialLocal(t testing.TB, s *Source, service string) net.Conn {
	t.Helper()
	addr := s.Addrs()[service]
	if addr == nil {
		t.Fatalf("no listener for %q", service)
	}
	c, err := net.DialTimeout(addr.Network(), addr.String(), testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() { c.Close() })
	return c
}

// expectEOF reads c until end of file, failing on any data or error.
func expectEOF(t testing.TB, c net.Conn, within time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	var b [64]byte
	n, err := c.Read(b[:])
	if n > 0 || !(errors.Is(err, io.EOF) || isReset(err)) {
		t.Fatalf("read %d bytes, err %v; want end of file within %v", n, err, within)
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

// notifyHandler signals ch for each record whose message contains match.
type notifyHandler struct {
	slog.Handler
	match string
	ch    chan struct{}
}

func (h *notifyHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *notifyHandler) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.match) {
		select {
		case h.ch <- struct{}{}:
		default:
		}
	}
	if h.Handler.Enabled(ctx, r.Level) {
		return h.Handler.Handle(ctx, r)
	}
	return nil
}

func (h *notifyHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &notifyHandler{Handler: h.Handler.WithAttrs(as), match: h.match, ch: h.ch}
}

func (h *notifyHandler) WithGroup(g string) slog.Handler {
	return &notifyHandler{Handler: h.Handler.WithGroup(g), match: h.match, ch: h.ch}
}
