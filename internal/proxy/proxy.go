package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/sectun/sectun/tunnel"
)

// Dialer opens tunnel connections: a *tunnel.Session in source mode.
type Dialer interface {
	Dial(ctx context.Context, serviceID string) (*tunnel.Conn, error)
}

// Acceptor yields the tunnel's incoming connections: a *tunnel.Session in
// destination mode.
type Acceptor interface {
	Accept(ctx context.Context) (*tunnel.Conn, error)
}

// Service ties a tunnel service to a local socket address: where a Source
// listens, or what a Destination dials.
type Service struct {
	// ServiceID is the tunnel's service ID; "" is the anonymous service of
	// a tunnel without service IDs (V1), and, in a Destination with a
	// single Service, serves whatever service the connection names.
	ServiceID string
	// Network is "tcp" (the default when empty) or "unix".
	Network string
	// Address is host:port for TCP (a Source listening on port 0 picks a
	// free port), a socket path for Unix.
	Address string
	// Listener (Source only), if set, is served instead of listening on
	// Address at start, so that a caller can bind its ports before it
	// opens the tunnel; NewSource owns it from then on (it closes it on
	// failure and at Close). Listening again after a failure uses its
	// address.
	Listener net.Listener
}

func (s Service) network() string {
	if s.Network == "" {
		return "tcp"
	}
	return s.Network
}

// name is the service for log messages.
func (s Service) name() string {
	if s.ServiceID == "" {
		return "the tunnel's service"
	}
	return s.ServiceID
}

var (
	// ErrListen: a Source could not listen on a service's address.
	ErrListen = errors.New("proxy: cannot listen")
	// ErrConfig: the Config is invalid.
	ErrConfig = errors.New("proxy: invalid config")
)

const (
	defaultBufferSize = 32 << 10
	minBufferSize     = 4 << 10
	maxBufferSize     = 256 << 10
	defaultRetryDelay = 2500 * time.Millisecond
	// linger bounds how long a local socket stays open after the tunnel side
	// ended and FIN was sent, waiting for the local side to close.
	linger = 2 * time.Second
	// drainTimeout bounds the writing of received data to a local socket
	// that does not read, once the tunnel side has ended.
	drainTimeout = 30 * time.Second
)

// bufferSize clamps a configured copy buffer size.
func bufferSize(n int) int {
	if n <= 0 {
		return defaultBufferSize
	}
	return min(max(n, minBufferSize), maxBufferSize)
}

func checkServices(svcs []Service) error {
	seen := map[string]bool{}
	for _, s := range svcs {
		if n := s.network(); n != "tcp" && n != "unix" {
			return fmt.Errorf("%w: service %q: network %q (want tcp or unix)", ErrConfig, s.ServiceID, s.Network)
		}
		if s.Address == "" {
			return fmt.Errorf("%w: service %q: empty address", ErrConfig, s.ServiceID)
		}
		if seen[s.ServiceID] {
			return fmt.Errorf("%w: service %q listed twice", ErrConfig, s.ServiceID)
		}
		seen[s.ServiceID] = true
	}
	return nil
}

func discardLogger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// pair is a joined local and tunnel connection, tracked so that Close can
// end it.
type pair struct {
	local net.Conn
	tun   net.Conn // nil until dialed
}

// pairs is the set of live pairs of a Source or Destination.
type pairs struct {
	mu     sync.Mutex
	set    map[*pair]struct{}
	closed bool
}

// add registers p unless the set is closed or holds limit pairs already
// (limit <= 0: no limit). It reports whether p was added and how many pairs
// there are.
func (ps *pairs) add(p *pair, limit int) (bool, int) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.closed || limit > 0 && len(ps.set) >= limit {
		return false, len(ps.set)
	}
	if ps.set == nil {
		ps.set = map[*pair]struct{}{}
	}
	ps.set[p] = struct{}{}
	return true, len(ps.set)
}

// setTun records p's tunnel connection; it reports false (and the caller
// closes tun) when the set was closed meanwhile.
func (ps *pairs) setTun(p *pair, tun net.Conn) bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.closed {
		return false
	}
	p.tun = tun
	return true
}

func (ps *pairs) remove(p *pair) {
	ps.mu.Lock()
	delete(ps.set, p)
	ps.mu.Unlock()
}

func (ps *pairs) len() int {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return len(ps.set)
}

// closeAll closes every pair's connections and refuses new ones.
func (ps *pairs) closeAll() {
	ps.mu.Lock()
	ps.closed = true
	list := make([]net.Conn, 0, 2*len(ps.set))
	for p := range ps.set {
		list = append(list, p.local)
		if p.tun != nil {
			list = append(list, p.tun)
		}
	}
	ps.mu.Unlock()
	for _, c := range list {
		c.Close()
	}
}

// bufPool hands out copy buffers of one size.
type bufPool struct{ p sync.Pool }

func newBufPool(size int) *bufPool {
	bp := &bufPool{}
	bp.p.New = func() any {
		b := make([]byte, size)
		return &b
	}
	return bp
}

func (bp *bufPool) get() *[]byte  { return bp.p.Get().(*[]byte) }
func (bp *bufPool) put(b *[]byte) { bp.p.Put(b) }

// sleepCtx waits d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
