package notify

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sectun/sectun/internal/token"
)

// RetryConfig configures Retrying. The zero value means the defaults.
type RetryConfig struct {
	// QueueSize bounds the notifications waiting for delivery (default
	// 1000). When it is full the oldest waiting notification is dropped and
	// logged: a newer token is worth more than an older one.
	QueueSize int
	// AttemptTimeout bounds one publish attempt, including the wait for
	// the broker's PUBACK (default 10s).
	AttemptTimeout time.Duration
	// MinBackoff is the wait after a first failed attempt (default 500ms);
	// it doubles after each further failure, up to MaxBackoff (default
	// 30s). Waits are jittered by up to -20%.
	MinBackoff, MaxBackoff time.Duration
	// MaxAge drops a notification still undelivered this long after its
	// NotifyTunnel call (default 1h): its token is likely used, rotated or
	// expired by then.
	MaxAge time.Duration
	// Logger receives delivery failures and drops (nil = discard). Entries
	// carry thing, token (token.Short, never the token) and tunnel_id.
	Logger *slog.Logger
}

func (c *RetryConfig) setDefaults() {
	if c.QueueSize <= 0 {
		c.QueueSize = 1000
	}
	if c.AttemptTimeout <= 0 {
		c.AttemptTimeout = 10 * time.Second
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 500 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = c.MinBackoff
	}
	if c.MaxAge <= 0 {
		c.MaxAge = time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Retrying is a Publisher that queues notifications and delivers them in
// order from one background goroutine through another Publisher, retrying
// failures with exponential backoff. Its NotifyTunnel never waits for the
// network, so that opening a tunnel never fails or stalls because of MQTT.
//
// Delivery is at least once from Retrying's side: an attempt that timed out
// may still reach the broker, and the retry then publishes a duplicate.
// Devices should ignore a token they already act on.
type Retrying struct {
	p   Publisher
	cfg RetryConfig
	log *slog.Logger

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wake   chan struct{} // capacity 1: "the queue is not empty"
	done   chan struct{} // closed when run returns

	mu       sync.Mutex
	queue    []queued // oldest first, len <= cfg.QueueSize
	inflight bool     // run holds an item outside the queue
	closed   bool
}

type queued struct {
	n   Notification
	enq time.Time
}

// NewRetrying starts a Retrying that publishes through p. Close stops it;
// it does not close p, which the caller closes afterwards.
func NewRetrying(p Publisher, cfg RetryConfig) *Retrying {
	cfg.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	r := &Retrying{
		p:      p,
		cfg:    cfg,
		log:    cfg.Logger,
		ctx:    ctx,
		cancel: cancel,
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	go r.run()
	return r
}

// NotifyTunnel validates n and queues it for delivery; it does not block
// on the network and ignores ctx. It fails only for an invalid
// notification (ErrInvalidNotification) or after Close (ErrClosed).
func (r *Retrying) NotifyTunnel(_ context.Context, n Notification) error {
	if err := n.Validate(); err != nil {
		return err
	}
	n.Services = append([]string(nil), n.Services...) // the caller may reuse its slice
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	var dropped *queued
	if len(r.queue) >= r.cfg.QueueSize {
		d := r.queue[0]
		dropped = &d
		r.queue[0] = queued{}
		r.queue = r.queue[1:]
	}
	r.queue = append(r.queue, queued{n: n, enq: time.Now()})
	r.mu.Unlock()
	if dropped != nil {
		r.log.Warn("notify: queue full, dropped the oldest undelivered notification",
			append(logAttrs(dropped.n), "queue_size", r.cfg.QueueSize)...)
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return nil
}

// Pending returns the number of notifications not yet delivered.
func (r *Retrying) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.queue)
	if r.inflight {
		n++
	}
	return n
}

// Close stops delivery, cancelling an attempt in progress, and waits for
// the background goroutine. Notifications still pending are logged and
// dropped. It does not close the wrapped Publisher. Close is idempotent.
func (r *Retrying) Close() error {
	r.mu.Lock()
	already := r.closed
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	<-r.done
	if already {
		return nil
	}
	r.mu.Lock()
	left := r.queue
	r.queue = nil
	r.mu.Unlock()
	for _, q := range left {
		r.log.Warn("notify: shutting down, notification not delivered", logAttrs(q.n)...)
	}
	return nil
}

func (r *Retrying) run() {
	defer close(r.done)
	for {
		q, ok := r.next()
		if !ok {
			return
		}
		r.deliver(q)
		r.mu.Lock()
		r.inflight = false
		r.mu.Unlock()
	}
}

// next takes the oldest queued notification, waiting for one.
func (r *Retrying) next() (queued, bool) {
	for {
		r.mu.Lock()
		if len(r.queue) > 0 {
			q := r.queue[0]
			r.queue[0] = queued{}
			r.queue = r.queue[1:]
			r.inflight = true
			r.mu.Unlock()
			return q, true
		}
		r.mu.Unlock()
		select {
		case <-r.wake:
		case <-r.ctx.Done():
			return queued{}, false
		}
	}
}

func (r *Retrying) deliver(q queued) {
	backoff := r.cfg.MinBackoff
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(r.ctx, r.cfg.AttemptTimeout)
		err := r.p.NotifyTunnel(actx, q.n)
		cancel()
		switch {
		case err == nil:
			if attempt > 1 {
				r.log.Info("notify: notification delivered after retries", append(logAttrs(q.n), "attempts", attempt)...)
			} else {
				r.log.Debug("notify: notification delivered", logAttrs(q.n)...)
			}
			return
		case r.ctx.Err() != nil:
			r.log.Warn("notify: shutting down, notification not delivered", append(logAttrs(q.n), "error", err)...)
			return
		case errors.Is(err, ErrInvalidNotification):
			r.log.Error("notify: notification refused, not retrying", append(logAttrs(q.n), "error", err)...)
			return
		}
		wait := jitter(backoff)
		if age := time.Since(q.enq); age+wait > r.cfg.MaxAge {
			r.log.Warn("notify: notification dropped, undelivered for too long",
				append(logAttrs(q.n), "attempts", attempt, "age", age.Round(time.Millisecond), "error", err)...)
			return
		}
		r.log.Warn("notify: publish failed, will retry",
			append(logAttrs(q.n), "attempt", attempt, "retry_in", wait.Round(time.Millisecond), "error", err)...)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-r.ctx.Done():
			t.Stop()
			r.log.Warn("notify: shutting down, notification not delivered", logAttrs(q.n)...)
			return
		}
		backoff = min(2*backoff, r.cfg.MaxBackoff)
	}
}

// jitter returns d less up to 20%, so that many tunneld nodes that lost the
// same broker do not retry in lock step.
func jitter(d time.Duration) time.Duration {
	return d - time.Duration(rand.Int64N(int64(d)/5+1))
}

// logAttrs returns the log attributes that identify n without its token.
func logAttrs(n Notification) []any {
	a := []any{"thing", n.ThingName, "token", token.Short(n.Token)}
	if n.TunnelID != "" {
		a = append(a, "tunnel_id", n.TunnelID)
	}
	return a
}
