package tunnel

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sectun/sectun/tunnel/internal/fakeservice"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testTimeout bounds every wait in the tests: generous, so that a loaded
// machine does not flake, yet a hang fails rather than stalls.
const testTimeout = 20 * time.Second

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// testLogger logs to the test's output; SECTUN_TEST_DEBUG=1 adds debug logs.
func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelInfo
	if os.Getenv("SECTUN_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	if _, ok := t.(*testing.B); ok {
		level = slog.LevelError
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: level}))
}

// events records a session's events.
type events struct {
	mu  sync.Mutex
	evs []Event
	ch  chan struct{}
}

func newEvents() *events { return &events{ch: make(chan struct{}, 1)} }

func (e *events) add(ev Event) {
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
	signal(e.ch)
}

func (e *events) list() []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Event(nil), e.evs...)
}

// wait returns the first event matching f, waiting for it.
func waitEvent[T Event](t testing.TB, e *events, f func(T) bool) T {
	t.Helper()
	deadline := time.After(testTimeout)
	for {
		for _, ev := range e.list() {
			if v, ok := ev.(T); ok && (f == nil || f(v)) {
				return v
			}
		}
		select {
		case <-e.ch:
		case <-deadline:
			var zero T
			t.Fatalf("no %T event; got %#v", zero, e.list())
			return zero
		}
	}
}

func baseConfig(t testing.TB, svc *fakeservice.Service, mode Mode) Config {
	tok := svc.SourceToken
	if mode == ModeDestination {
		tok = svc.DestinationToken
	}
	return Config{
		Mode:         mode,
		AccessToken:  tok,
		Endpoint:     svc.URL,
		Logger:       testLogger(t),
		ReconnectMin: 10 * time.Millisecond,
		ReconnectMax: 200 * time.Millisecond,
	}
}

func connect(t testing.TB, cfg Config) *Session {
	t.Helper()
	s, err := Connect(testCtx(t), cfg)
	if err != nil {
		t.Fatalf("Connect %v: %v", cfg.Mode, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// pair connects a source and a destination to a fake service.
func pair(t testing.TB, opts fakeservice.Options, mod func(src, dst *Config)) (svc *fakeservice.Service, src, dst *Session) {
	t.Helper()
	svc = fakeservice.Start(t, opts)
	scfg, dcfg := baseConfig(t, svc, ModeSource), baseConfig(t, svc, ModeDestination)
	if mod != nil {
		mod(&scfg, &dcfg)
	}
	dst = connect(t, dcfg)
	src = connect(t, scfg)
	return svc, src, dst
}

// dialAccept dials service through src and accepts the result on dst.
func dialAccept(t testing.TB, src, dst *Session, service string) (*Conn, *Conn) {
	t.Helper()
	ctx := testCtx(t)
	c1, err := src.Dial(ctx, service)
	if err != nil {
		t.Fatalf("Dial %q: %v", service, err)
	}
	// The destination learns of the connection only from data or the start
	// message; the start message is sent at once, so Accept returns.
	c2, err := dst.Accept(ctx)
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	t.Cleanup(func() { c1.Close(); c2.Close() })
	return c1, c2
}

// readAll reads from c until EOF or error, with a deadline.
func readAll(t testing.TB, c *Conn) ([]byte, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testTimeout))
	var buf bytes.Buffer
	_, err := io.Copy(&buf, c)
	return buf.Bytes(), err
}

func writeAll(t testing.TB, c *Conn, b []byte) {
	t.Helper()
	c.SetWriteDeadline(time.Now().Add(testTimeout))
	if _, err := c.Write(b); err != nil {
		t.Fatalf("Write: %v", err)
	}
}

func readN(t testing.TB, c *Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(testTimeout))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("ReadFull(%d): %v", n, err)
	}
	return b
}

var netErrClosed = net.ErrClosed

// waitCount waits until n events of type T have been seen.
func waitCount[T Event](t testing.TB, e *events, n int) {
	t.Helper()
	deadline := time.After(testTimeout)
	for {
		k := 0
		for _, ev := range e.list() {
			if _, ok := ev.(T); ok {
				k++
			}
		}
		if k >= n {
			return
		}
		select {
		case <-e.ch:
		case <-deadline:
			var zero T
			t.Fatalf("%d %T events, want %d; got %#v", k, zero, n, e.list())
		}
	}
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
