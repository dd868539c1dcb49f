package broker

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// ConnListener is a net.Listener whose connections are handed in by the
// program (Deliver) instead of accepted from a socket: for a server that
// accepts on one port and dispatches each connection by protocol (ALPN),
// to MQTT, HTTPS, ... It is not specific to MQTT.
type ConnListener struct {
	addr net.Addr
	ch   chan net.Conn // bounded backlog
	done chan struct{}
	once sync.Once
	mu   sync.RWMutex // Deliver holds R while it may send; Close holds W to drain
}

// NewConnListener returns a ConnListener reporting addr as its address
// (nil = a placeholder) with room for backlog connections delivered but
// not yet accepted (minimum 1).
func NewConnListener(addr net.Addr, backlog int) *ConnListener {
	if addr == nil {
		addr = connAddr{}
	}
	return &ConnListener{addr: addr, ch: make(chan net.Conn, max(backlog, 1)), done: make(chan struct{})}
}

type connAddr struct{}

func (connAddr) Network() string { return "conn" }
func (connAddr) String() string  { return "handed-over" }

// Deliver queues c for Accept, waiting while the backlog is full until ctx
// is done. After Close it returns net.ErrClosed. Once Deliver returns nil
// the listener owns c (Close closes connections never accepted); on error
// the caller still owns c.
func (l *ConnListener) Deliver(ctx context.Context, c net.Conn) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
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
func (l *ConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops Accept and Deliver and closes the connections delivered but
// not accepted. It is idempotent.
func (l *ConnListener) Close() error {
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

// Addr returns the address given to NewConnListener.
func (l *ConnListener) Addr() net.Addr { return l.addr }

// netListener adapts a net.Listener to mochi's listeners.Listener. Unlike
// mochi's own, it bounds the time to CONNECT, closes connections that have
// not sent CONNECT when the broker stops, and can wait for every goroutine
// it started.
type netListener struct {
	id             string
	ln             net.Listener
	anonymous      bool // the listener's anonymous policy (see anonymousAllowed)
	connectTimeout time.Duration
	log            *slog.Logger
	// disconnect, when set, replaces mochi's closeListenerClients in
	// Close (see Broker.disconnectClients).
	disconnect listeners.CloseFn

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup // Serve and one goroutine per connection
}

var _ listeners.Listener = (*netListener)(nil)

func newNetListener(id string, ln net.Listener, anonymous bool, connectTimeout time.Duration, log *slog.Logger) *netListener {
	return &netListener{
		id:             id,
		ln:             ln,
		anonymous:      anonymous,
		connectTimeout: connectTimeout,
		log:            log.With("listener", id),
		conns:          map[net.Conn]struct{}{},
	}
}

func (l *netListener) Init(*slog.Logger) error { return nil }
func (l *netListener) ID() string              { return l.id }
func (l *netListener) Address() string         { return l.ln.Addr().String() }
func (l *netListener) Protocol() string        { return l.ln.Addr().Network() }

// Serve accepts connections until Close and runs establish (mochi's
// connection handler, which returns when the client is gone) for each.
func (l *netListener) Serve(establish listeners.EstablishFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.wg.Add(1)
	l.mu.Unlock()
	defer l.wg.Done()

	var delay time.Duration // backoff on accept errors such as EMFILE, as net/http does
	for {
		c, err := l.ln.Accept()
		if err != nil {
			l.mu.Lock()
			closed := l.closed
			l.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Warn("broker: accept failed, retrying", "error", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		// mochi replaces this deadline with the keep-alive one after CONNECT.
		c.SetDeadline(time.Now().Add(l.connectTimeout))
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			c.Close()
			return
		}
		l.conns[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go func() {
			defer l.wg.Done()
			err := establish(l.id, c)
			c.Close()
			l.mu.Lock()
			delete(l.conns, c)
			l.mu.Unlock()
			l.log.Debug("broker: connection ended", "remote", c.RemoteAddr().String(), "error", err)
		}()
	}
}

// Close stops accepting, has mochi disconnect this listener's clients,
// closes every connection, including those that never sent CONNECT, and
// waits for Serve and the connection goroutines. It must wait: mochi's
// Close waits for its clients next (Listeners.CloseAll), with a
// sync.WaitGroup to which each connection adds itself when establish
// starts, and an Add concurrent with that Wait is a race (the race
// detector reports it).
func (l *netListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	conns := make([]net.Conn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	l.ln.Close()
	if l.disconnect != nil {
		closeClients = l.disconnect
	}
	closeClients(l.id)
	for _, c := range conns {
		c.Close()
	}
	l.wg.Wait()
}

// wait waits for Serve and the connection goroutines to return (as Close
// does: for a listener mochi never closed).
func (l *netListener) wait() { l.wg.Wait() }

// anonymousAllowed is the anonymous-client policy of a listener bound to
// addr: only a loopback address (127.0.0.0/8, ::1, "localhost"), and only
// if the configuration does not refuse anonymous clients altogether.
func anonymousAllowed(addr string, noAnonymous bool) bool {
	if noAnonymous {
		return false
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
