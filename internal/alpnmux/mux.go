package alpnmux

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/sectun/sectun/internal/chanlisten"
)

// Route sends the connections that negotiate one ALPN protocol to a
// handler.
type Route struct {
	// Proto is the ALPN protocol name, e.g. "x-amzn-mqtt-ca".
	Proto string
	// TLS is the server configuration for clients offering Proto, e.g. with
	// ClientAuth tls.RequireAndVerifyClientCert; nil means Config.TLS. It
	// is cloned; its NextProtos are replaced by [Proto].
	TLS *tls.Config
	// Serve takes over a connection whose handshake negotiated Proto and
	// must close it eventually. It runs on the connection's goroutine; ctx
	// ends when the Mux closes, and Close waits for Serve to return.
	Serve func(ctx context.Context, c *tls.Conn)
	// Admit, when set, is asked when a client offers Proto, before the
	// handshake's expensive part: false aborts the handshake (the client
	// gets a TLS alert; OnHandshakeError or the log see ErrRefused), so a
	// route at its capacity costs no key exchange. Serve must still check
	// for itself: Admit is only an early answer.
	Admit func() bool
}

// ErrRefused is the handshake error of a connection whose route's Admit
// said no.
var ErrRefused = errors.New("alpnmux: route refused the connection (at capacity)")

// Config configures a Mux.
type Config struct {
	// TLS is the server configuration of every connection not taken by a
	// route (required, with certificates). Its NextProtos are the
	// protocols offered to those clients, e.g. ["http/1.1"]. It is cloned;
	// GetConfigForClient must be nil (the Mux uses it to choose).
	TLS *tls.Config
	// Routes are tried in order: the first whose Proto the client offers
	// takes the connection.
	Routes []Route
	// HandshakeTimeout bounds each TLS handshake (default 10 s).
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds the handshakes in progress (default 1024);
	// Serve waits before accepting more.
	MaxHandshakes int
	// Backlog bounds the connections handshaken but not yet returned by
	// Listener().Accept (default 64).
	Backlog int
	// Logger receives failed handshakes (nil = discard).
	Logger *slog.Logger
	// OnHandshakeError, when set, is called instead of logging a failed
	// handshake (not one aborted by Close), with the client's raw
	// connection, still open (for example to answer a plain HTTP request
	// with a 400), and the handshake's error; proto is the route's ALPN
	// protocol the client offered, or "". It runs on the connection's
	// goroutine.
	OnHandshakeError func(raw net.Conn, proto string, err error)
}

// Mux is a TLS listener that dispatches connections by ALPN protocol.
type Mux struct {
	ln       net.Listener
	timeout  time.Duration
	sem      chan struct{}
	log      *slog.Logger
	onErr    func(net.Conn, string, error)
	front    *tls.Config          // only GetConfigForClient: the per-client choice
	fallback *tls.Config          // Config.TLS
	plain    *tls.Config          // Config.TLS without ALPN, for clients offering nothing we know
	routes   []routeState         // in order
	def      *chanlisten.Listener // the default protocol's connections, delivered by handshake goroutines

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
	mu     sync.Mutex // guards closed, so that Serve's wg.Add never follows Close's Wait
	closed bool
}

type routeState struct {
	proto string
	tls   *tls.Config
	serve func(context.Context, *tls.Conn)
	admit func() bool
}

// New returns a Mux accepting from ln, which it owns from now on (Close
// closes it). Serve starts the work.
func New(ln net.Listener, cfg Config) (*Mux, error) {
	if cfg.TLS == nil {
		return nil, errors.New("alpnmux: Config.TLS is required")
	}
	if cfg.TLS.GetConfigForClient != nil {
		return nil, errors.New("alpnmux: Config.TLS.GetConfigForClient must be nil")
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = 1024
	}
	if cfg.Backlog <= 0 {
		cfg.Backlog = 64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Mux{
		ln:       ln,
		timeout:  cfg.HandshakeTimeout,
		sem:      make(chan struct{}, cfg.MaxHandshakes),
		log:      cfg.Logger,
		onErr:    cfg.OnHandshakeError,
		fallback: cfg.TLS.Clone(),
		plain:    cfg.TLS.Clone(),
		def:      chanlisten.New(ln.Addr(), cfg.Backlog),
		ctx:      ctx,
		cancel:   cancel,
	}
	m.plain.NextProtos = nil
	seen := map[string]bool{}
	for _, r := range cfg.Routes {
		switch {
		case r.Proto == "":
			cancel()
			return nil, errors.New("alpnmux: route with an empty protocol")
		case seen[r.Proto]:
			cancel()
			return nil, fmt.Errorf("alpnmux: protocol %q is routed twice", r.Proto)
		case r.Serve == nil:
			cancel()
			return nil, fmt.Errorf("alpnmux: route %q has no Serve function", r.Proto)
		}
		seen[r.Proto] = true
		base := r.TLS
		if base == nil {
			base = cfg.TLS
		}
		if base.GetConfigForClient != nil {
			cancel()
			return nil, fmt.Errorf("alpnmux: route %q: GetConfigForClient must be nil", r.Proto)
		}
		t := base.Clone()
		t.NextProtos = []string{r.Proto}
		m.routes = append(m.routes, routeState{proto: r.Proto, tls: t, serve: r.Serve, admit: r.Admit})
	}
	// The configuration the handshake starts with only chooses; session
	// ticket keys come from it, so resumption works across connections.
	m.front = &tls.Config{GetConfigForClient: m.configFor}
	return m, nil
}

// conn is what the handshake sees as the client's net.Conn: it records
// the route chosen for it.
type conn struct {
	net.Conn
	route *routeState
}

// NetConn returns the connection c wraps: wsconn reaches the TCP socket
// under a WebSocket through NetConn methods (tls.Conn's, then this one)
// for its short kernel queues (TCP_NOTSENT_LOWAT, socket buffers), the
// relay's read-ahead and the liveness check's kernel-unread count.
func (c *conn) NetConn() net.Conn { return c.Conn }

func (m *Mux) configFor(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	c, _ := hello.Conn.(*conn)
	for i := range m.routes {
		r := &m.routes[i]
		if slices.Contains(hello.SupportedProtos, r.proto) {
			if c != nil {
				c.route = r
			}
			if r.admit != nil && !r.admit() {
				return nil, ErrRefused
			}
			return r.tls, nil
		}
	}
	if len(hello.SupportedProtos) > 0 && len(m.fallback.NextProtos) > 0 &&
		!slices.ContainsFunc(hello.SupportedProtos, func(p string) bool { return slices.Contains(m.fallback.NextProtos, p) }) {
		// Nothing in common: serve without ALPN rather than abort.
		return m.plain, nil
	}
	return m.fallback, nil
}

// Listener returns the net.Listener of the connections no route took,
// with their handshake complete (each is a *tls.Conn).
func (m *Mux) Listener() net.Listener { return m.def }

// Addr returns the address of the underlying listener.
func (m *Mux) Addr() net.Addr { return m.ln.Addr() }

// Serve accepts connections until Close. It returns nil after Close, or
// the first permanent error of the underlying listener.
func (m *Mux) Serve() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.wg.Add(1)
	m.mu.Unlock()
	defer m.wg.Done()
	var delay time.Duration // backoff on errors such as EMFILE, as net/http does
	for {
		select {
		case m.sem <- struct{}{}:
		case <-m.ctx.Done():
			return nil
		}
		c, err := m.ln.Accept()
		if err != nil {
			<-m.sem
			if m.ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				m.log.Warn("alpnmux: accept failed, retrying", "error", err, "retry_in", delay)
				select {
				case <-time.After(delay):
				case <-m.ctx.Done():
					return nil
				}
				continue
			}
			return fmt.Errorf("alpnmux: accept: %w", err)
		}
		delay = 0
		m.wg.Add(1)
		go m.handle(c)
	}
}

func isTemporary(err error) bool {
	t, ok := err.(interface{ Temporary() bool })
	return ok && t.Temporary()
}

// handle completes the handshake of c and dispatches it.
func (m *Mux) handle(raw net.Conn) {
	defer m.wg.Done()
	released := false
	release := func() {
		if !released {
			released = true
			<-m.sem
		}
	}
	defer release()
	wrapped := &conn{Conn: raw}
	tc := tls.Server(wrapped, m.front)
	raw.SetDeadline(time.Now().Add(m.timeout))
	err := tc.HandshakeContext(m.ctx)
	if err != nil {
		if m.onErr != nil && m.ctx.Err() == nil {
			proto := ""
			if wrapped.route != nil {
				proto = wrapped.route.proto
			}
			m.onErr(raw, proto, err)
			tc.Close()
			return
		}
		tc.Close()
		if m.ctx.Err() != nil {
			return
		}
		level := slog.LevelDebug
		attrs := []any{"remote", raw.RemoteAddr().String(), "error", err}
		if wrapped.route != nil {
			level = slog.LevelInfo
			attrs = append(attrs, "alpn", wrapped.route.proto)
		}
		m.log.Log(m.ctx, level, "alpnmux: TLS handshake failed", attrs...)
		return
	}
	raw.SetDeadline(time.Time{})
	release() // the handshake is over: the next one may start
	if r := wrapped.route; r != nil && tc.ConnectionState().NegotiatedProtocol == r.proto {
		r.serve(m.ctx, tc)
		return
	}
	if err := m.def.Deliver(m.ctx, tc); err != nil {
		tc.Close()
	}
}

// Close stops accepting, aborts handshakes, closes the Listener and the
// connections waiting in its backlog, ends the context of Route.Serve
// calls and waits for all of them. It is idempotent and returns the
// underlying listener's Close error.
func (m *Mux) Close() error {
	var err error
	m.once.Do(func() {
		m.mu.Lock()
		m.closed = true
		m.mu.Unlock()
		m.cancel()
		err = m.ln.Close()
		m.def.Close()
		m.wg.Wait()
	})
	return err
}
