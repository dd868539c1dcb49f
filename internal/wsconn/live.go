package wsconn

import (
	"sync"
	"sync/atomic"
	"time"
)

// liveness is a connection's watchdog (SetLiveness): a timer, not a read
// deadline, so that the reader's own delays are not taken for the peer's
// silence.
type liveness struct {
	c     *Conn
	epoch time.Time    // last counts from here (monotonic)
	d     atomic.Int64 // the liveness timeout; 0: none
	last  atomic.Int64 // when the peer last gave a sign of life, since epoch
	mu    sync.Mutex   // guards dog and over
	dog   *time.Timer
	over  bool // the watchdog has fired for good, or the connection closed
}

func (l *liveness) init(c *Conn) {
	l.c = c
	l.epoch = time.Now()
}

// SetLiveness makes reads fail with a timeout (a net.Error) when nothing
// (message, ping or pong) arrives from the peer for d, counted from this
// call; zero turns the check off. Arriving is what the kernel sees: data
// received but not read yet, because the reader was busy elsewhere (its
// consumer full) or the process did not get the CPU, counts as a sign of
// life (Unread), so a late reader is never told that a live peer went
// silent. SetLiveness may be called again at any time, to restart the
// count; it does not allocate once the watchdog exists.
func (c *Conn) SetLiveness(d time.Duration) {
	l := &c.live
	l.note()
	old := time.Duration(l.d.Swap(int64(d)))
	if d == old && d > 0 {
		return // the watchdog is armed and re-arms itself
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.over {
		return
	}
	switch {
	case d <= 0:
		if l.dog != nil {
			l.dog.Stop()
		}
	case l.dog == nil:
		l.dog = time.AfterFunc(d, l.check)
	default:
		l.dog.Reset(d)
	}
}

// note records a sign of life from the peer (a message, ping or pong
// begins, or the watchdog found its data waiting).
func (l *liveness) note() {
	l.last.Store(int64(time.Since(l.epoch)))
}

// check is the watchdog: it re-arms itself for the rest of the period
// while the peer shows signs of life, and otherwise makes reads fail with
// a timeout (a read deadline in the past).
func (l *liveness) check() {
	d := time.Duration(l.d.Load())
	if d <= 0 {
		return
	}
	silent := time.Since(l.epoch) - time.Duration(l.last.Load())
	if silent < d {
		l.rearm(d - silent)
		return
	}
	if n, err := l.c.Unread(); err == nil && n > 0 {
		// Bytes from the peer wait in the kernel: it is alive, and the
		// reader is behind.
		l.note()
		l.rearm(d)
		return
	}
	l.mu.Lock()
	over := l.over
	l.over = true
	l.mu.Unlock()
	if !over {
		l.c.nc.SetReadDeadline(time.Unix(1, 0))
	}
}

func (l *liveness) rearm(after time.Duration) {
	l.mu.Lock()
	if !l.over && l.d.Load() > 0 {
		l.dog.Reset(after)
	}
	l.mu.Unlock()
}

// stop stops the watchdog for good.
func (l *liveness) stop() {
	l.mu.Lock()
	l.over = true
	if l.dog != nil {
		l.dog.Stop()
	}
	l.mu.Unlock()
}
