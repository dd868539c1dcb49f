package chanlisten

import (
	"context"
	"net"
	"sync"
)

// Listener is a net.Listener fed by Deliver. Make it with New.
type Listener struct {
	addr net.Addr
	ch   chan net.Conn // bounded backlog
	done chan struct{}
	once sync.Once
	mu   sync.RWMutex // Deliver holds R while it may send; Close holds W to drain
}

var _ net.Listener = (*Listener)(nil)

// New returns a Listener reporting addr as its address (nil = a
// placeholder, network "conn") with room for backlog connections
// delivered but not yet accepted (minimum 1).
func New(addr net.Addr, backlog int) *Listener {
	if addr == nil {
		addr = placeholder{}
	}
	return &Listener{addr: addr, ch: make(chan net.Conn, max(backlog, 1)), done: make(chan struct{})}
}

type placeholder struct{}

func (placeholder) Network() string { return "conn" }
func (placeholder) String() string  { return "handed-over" }

// Deliver queues c for Accept, waiting while the backlog is full until ctx
// is done. After Close it returns net.ErrClosed. Once Deliver returns nil
// the listener owns c (Close closes connections never accepted); on error
// the caller still owns c.
func (l *Listener) Deliver(ctx context.Context, c net.Conn) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	// Checked first: a select with both ready would pick at random.
	select {
	case <-l.done:
		return net.ErrClosed
	default:
	}
	select {
	case l.ch <- c:
		return nil
	case <-l.done:
		return net.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Accept returns the next delivered connection; after Close, net.ErrClosed.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops Accept and Deliver and closes the connections delivered but
// not accepted. It is idempotent and always returns nil.
func (l *Listener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.mu.Lock() // wait for Deliver calls that may still send
		defer l.mu.Unlock()
		for {
			select {
			case c := <-l.ch:
				c.Close()
			default:
				return
			}
		}
	})
	return nil
}

// Addr returns the address given to New.
func (l *Listener) Addr() net.Addr { return l.addr }
