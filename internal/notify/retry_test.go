package notify_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sectun/sectun/internal/notify"
	"github.com/sectun/sectun/internal/token"
)

// funcPublisher is a Publisher whose behaviour the test scripts.
type funcPublisher struct {
	mu    sync.Mutex
	calls []call
	fn    func(ctx context.Context, n notify.Notification) error
}

type call struct {
	at    time.Time
	thing string
}

func (p *funcPublisher) NotifyTunnel(ctx context.Context, n notify.Notification) error {
	p.mu.Lock()
	p.calls = append(p.calls, call{time.Now(), n.ThingName})
	p.mu.Unlock()
	return p.fn(ctx, n)
}

func (p *funcPublisher) Close() error { return nil }

func (p *funcPublisher) things() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var s []string
	for _, c := range p.calls {
		s = append(s, c.thing)
	}
	return s
}

// syncLog is a concurrency-safe log sink.
type syncLog struct {
	mu      sync.Mutex
	sb      strings.Builder
	changed chan struct{} // closed and replaced on every write
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
	return l.sb.Write(p)
}

// waitFor waits until the log contains s.
func (l *syncLog) waitFor(t *testing.T, s string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		l.mu.Lock()
		if strings.Contains(l.sb.String(), s) {
			l.mu.Unlock()
			return
		}
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		ch := l.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("log never contained %q:\n%s", s, l.String())
		}
	}
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sb.String()
}

func (l *syncLog) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func notif(thing string) notify.Notification {
	return notify.Notification{ThingName: thing, Token: "SECRET-" + thing, Region: "us-east-1", Services: []string{"SSH1"}}
}

func TestRetryingBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		logs := &syncLog{}
		fails := 4
		p := &funcPublisher{fn: func(context.Context, notify.Notification) error {
			if fails > 0 {
				fails--
				return notify.ErrNotConnected
			}
			return nil
		}}
		r := notify.NewRetrying(p, notify.RetryConfig{MinBackoff: time.Second, MaxBackoff: 3 * time.Second, Logger: logs.logger()})
		defer r.Close()
		start := time.Now()
		if err := r.NotifyTunnel(t.Context(), notif("dev-1")); err != nil {
			t.Fatal(err)
		}
		if time.Since(start) != 0 {
			t.Fatal("NotifyTunnel waited")
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		p.mu.Lock()
		calls := slices.Clone(p.calls)
		p.mu.Unlock()
		if len(calls) != 5 {
			t.Fatalf("%d attempts, want 5", len(calls))
		}
		// Waits: 1s, 2s, 3s (capped), 3s, each less up to 20% jitter.
		want := []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second}
		for i, w := range want {
			got := calls[i+1].at.Sub(calls[i].at)
			if got > w || got < w*8/10 {
				t.Errorf("wait before attempt %d: %v, want (%v, %v]", i+2, got, w*8/10, w)
			}
		}
		if r.Pending() != 0 {
			t.Fatalf("Pending() = %d after delivery", r.Pending())
		}
		out := logs.String()
		if !strings.Contains(out, "will retry") || !strings.Contains(out, "delivered after retries") {
			t.Fatalf("logs:\n%s", out)
		}
		if strings.Contains(out, "SECRET") || !strings.Contains(out, "token="+token.Short("SECRET-dev-1")) || !strings.Contains(out, "thing=dev-1") {
			t.Fatalf("logs must carry thing and token.Short, never the token:\n%s", out)
		}
	})
}

func TestRetryingQueueFullDropsOldest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		logs := &syncLog{}
		release := make(chan struct{})
		p := &funcPublisher{fn: func(ctx context.Context, n notify.Notification) error {
			if n.ThingName == "d0" {
				<-release
			}
			return nil
		}}
		r := notify.NewRetrying(p, notify.RetryConfig{QueueSize: 3, Logger: logs.logger()})
		defer r.Close()
		r.NotifyTunnel(t.Context(), notif("d0"))
		synctest.Wait() // the worker holds d0
		for _, th := range []string{"d1", "d2", "d3", "d4"} {
			if err := r.NotifyTunnel(t.Context(), notif(th)); err != nil {
				t.Fatal(err)
			}
		}
		if got := r.Pending(); got != 4 {
			t.Fatalf("Pending() = %d, want 4 (one in flight, three queued)", got)
		}
		close(release)
		synctest.Wait()
		if got, want := p.things(), []string{"d0", "d2", "d3", "d4"}; !slices.Equal(got, want) {
			t.Fatalf("delivered %v, want %v", got, want)
		}
		out := logs.String()
		if !strings.Contains(out, "queue full") || !strings.Contains(out, "thing=d1") || strings.Contains(out, "SECRET") {
			t.Fatalf("logs:\n%s", out)
		}
	})
}

func TestRetryingMaxAge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		logs := &syncLog{}
		p := &funcPublisher{fn: func(context.Context, notify.Notification) error { return errors.New("broker down") }}
		r := notify.NewRetrying(p, notify.RetryConfig{MinBackoff: time.Second, MaxBackoff: 10 * time.Second, MaxAge: 30 * time.Second, Logger: logs.logger()})
		defer r.Close()
		r.NotifyTunnel(t.Context(), notif("old"))
		time.Sleep(time.Minute)
		synctest.Wait()
		n := len(p.things())
		if r.Pending() != 0 || n < 4 || n > 8 {
			t.Fatalf("Pending() = %d after %d attempts, want 0 after a few", r.Pending(), n)
		}
		if !strings.Contains(logs.String(), "undelivered for too long") {
			t.Fatalf("logs:\n%s", logs.String())
		}
	})
}

func TestRetryingInvalidIsNotRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &funcPublisher{fn: func(context.Context, notify.Notification) error {
			return notify.ErrInvalidNotification
		}}
		r := notify.NewRetrying(p, notify.RetryConfig{})
		defer r.Close()
		if err := r.NotifyTunnel(t.Context(), notify.Notification{ThingName: "x"}); !errors.Is(err, notify.ErrInvalidNotification) {
			t.Fatalf("invalid notification queued: %v", err)
		}
		r.NotifyTunnel(t.Context(), notif("d"))
		time.Sleep(time.Hour)
		synctest.Wait()
		if n := len(p.things()); n != 1 {
			t.Fatalf("%d attempts of a refused notification, want 1", n)
		}
	})
}

func TestRetryingClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		logs := &syncLog{}
		p := &funcPublisher{fn: func(ctx context.Context, n notify.Notification) error {
			<-ctx.Done() // hangs until the attempt is cancelled
			return ctx.Err()
		}}
		r := notify.NewRetrying(p, notify.RetryConfig{AttemptTimeout: time.Hour, Logger: logs.logger()})
		r.NotifyTunnel(t.Context(), notif("busy"))
		r.NotifyTunnel(t.Context(), notif("queued"))
		synctest.Wait()
		start := time.Now()
		r.Close()
		if time.Since(start) != 0 {
			t.Fatal("Close waited for the attempt timeout")
		}
		r.Close()
		if err := r.NotifyTunnel(t.Context(), notif("late")); !errors.Is(err, notify.ErrClosed) {
			t.Fatalf("after Close: %v", err)
		}
		out := logs.String()
		if strings.Count(out, "not delivered") != 2 || !strings.Contains(out, "thing=queued") {
			t.Fatalf("logs:\n%s", out)
		}
	})
}

func TestRetryingCopiesServices(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		got := make(chan []string, 1)
		release := make(chan struct{})
		p := &funcPublisher{fn: func(_ context.Context, n notify.Notification) error {
			<-release
			got <- n.Services
			return nil
		}}
		r := notify.NewRetrying(p, notify.RetryConfig{})
		defer r.Close()
		n := notif("d")
		r.NotifyTunnel(t.Context(), n)
		n.Services[0] = "CHANGED"
		close(release)
		if s := <-got; s[0] != "SSH1" {
			t.Fatalf("services aliased the caller's slice: %v", s)
		}
	})
}
