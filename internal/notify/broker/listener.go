package broker

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// netListener adapts a net.Listener to mochi's listeners.Listener. Unlike
// mochi's own, it bounds the time to CONNECT, closes connections that have
// not sent CONNECT when the broker stops, and can wait for every goroutine
// it started.
type netListener struct {
	id             string
	ln             net.Listener
	anonymous      bool // the listener's anonymous policy (see anonymousAllowed)
	connectTimeout time.Duration
	lim            *limiter
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

func newNetListener(id string, ln net.Listener, anonymous bool, connectTimeout time.Duration, lim *limiter, log *slog.Logger) *netListener {
	return &netListener{
		id:             id,
		ln:             ln,
		anonymous:      anonymous,
		connectTimeout: connectTimeout,
		lim:            lim,
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
		if reason := l.lim.admit(c); reason != "" {
			l.lim.refuse(reason, "remote", c.RemoteAddr().String(), "listener", l.id)
			c.Close()
			continue
		}
		// mochi replaces this deadline with the keep-alive one after CONNECT.
		c.SetDeadline(time.Now().Add(l.connectTimeout))
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			c.Close()
			l.lim.done(c)
			return
		}
		l.conns[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go func() {
			defer l.wg.Done()
			err := establish(l.id, c)
			c.Close()
			l.lim.done(c)
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
