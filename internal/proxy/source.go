package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sectun/sectun/tunnel"
)

// SourceConfig configures a Source. The zero value of every field but
// Services means its default.
type SourceConfig struct {
	// Services are the addresses to listen on, one per service.
	Services []Service
	// MaxConns caps the simultaneous local connections of all services
	// (default 128, the reference's tcp.max_active_connections; negative:
	// no cap). A connection beyond it is accepted and closed at once, with
	// a log line.
	MaxConns int
	// DialTimeout bounds the wait of a new local connection for its tunnel
	// connection, e.g. while the session reconnects (default 30 s;
	// negative: as long as the session tries).
	DialTimeout time.Duration
	// ListenRetries is the number of further attempts after a failed
	// listen, at start and when a listener fails later (the reference's
	// tcp.connection_retry_count); 0: none; negative: forever.
	ListenRetries int
	// ListenRetryDelay is the pause between those attempts (default 2.5 s).
	ListenRetryDelay time.Duration
	// BufferSize is the size of each copy buffer (default 32 KiB; 4 KiB to
	// 256 KiB), for tunnel connections without io.ReaderFrom/io.WriterTo
	// (a *tunnel.Conn has both and needs none).
	BufferSize int
	// Logger receives a line per listener and per connection; nil
	// discards.
	Logger *slog.Logger
}

// Source listens on local addresses and carries every accepted connection
// through the tunnel. See the package documentation.
type Source struct {
	d    Dialer
	cfg  SourceConfig
	log  *slog.Logger
	pool *bufPool

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	pairs  pairs

	mu        sync.Mutex
	listeners []*listener
	closed    bool
	err       error
	done      chan struct{}
	closeOnce sync.Once

	refused     atomic.Int64 // connections refused since the last log line
	lastRefusal atomic.Int64 // unix nanoseconds of the last log line
}

type listener struct {
	svc  Service // Address is the bound address after the first listen
	ln   net.Listener
	addr net.Addr
}

// NewSource listens on every service's address (retrying as configured,
// bounded by ctx) and starts serving. It fails with ErrListen if an address
// cannot be listened on; no listener is left open then.
func NewSource(ctx context.Context, d Dialer, cfg SourceConfig) (*Source, error) {
	cfg.Services = slices.Clone(cfg.Services)
	for i := range cfg.Services {
		if l := cfg.Services[i].Listener; l != nil && cfg.Services[i].Address == "" {
			cfg.Services[i].Address = l.Addr().String()
		}
	}
	closeGiven := func() {
		for _, svc := range cfg.Services {
			if svc.Listener != nil {
				svc.Listener.Close()
			}
		}
	}
	if d == nil {
		closeGiven()
		return nil, fmt.Errorf("%w: nil Dialer", ErrConfig)
	}
	if len(cfg.Services) == 0 {
		return nil, fmt.Errorf("%w: no services", ErrConfig)
	}
	if err := checkServices(cfg.Services); err != nil {
		closeGiven()
		return nil, err
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 128
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 30 * time.Second
	}
	if cfg.ListenRetryDelay <= 0 {
		cfg.ListenRetryDelay = defaultRetryDelay
	}
	s := &Source{
		d:    d,
		cfg:  cfg,
		log:  discardLogger(cfg.Logger),
		pool: newBufPool(bufferSize(cfg.BufferSize)),
		done: make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	for i, svc := range cfg.Services {
		ln, err := svc.Listener, error(nil)
		svc.Listener = nil
		if ln != nil {
			s.log.Info(fmt.Sprintf("Listening for %s on %s", svc.name(), ln.Addr()),
				"service_id", svc.ServiceID, "addr", ln.Addr().String())
		} else {
			ln, err = s.listen(ctx, svc)
		}
		if err != nil {
			s.cancel()
			for _, l := range s.listeners {
				l.ln.Close()
			}
			for _, o := range cfg.Services[i+1:] {
				if o.Listener != nil {
					o.Listener.Close()
				}
			}
			return nil, err
		}
		l := &listener{svc: svc, ln: ln, addr: ln.Addr()}
		if svc.network() == "tcp" {
			// Re-listen on the port picked, not on another free one.
			l.svc.Address = ln.Addr().String()
		}
		s.listeners = append(s.listeners, l)
	}
	for _, l := range s.listeners {
		s.wg.Add(1)
		go s.serve(l)
	}
	return s, nil
}

// listen opens a listener for svc with the configured retries and logs
// where it listens.
func (s *Source) listen(ctx context.Context, svc Service) (net.Listener, error) {
	var lc net.ListenConfig
	for attempt := 0; ; attempt++ {
		ln, err := lc.Listen(ctx, svc.network(), svc.Address)
		if err == nil {
			s.log.Info(fmt.Sprintf("Listening for %s on %s", svc.name(), ln.Addr()),
				"service_id", svc.ServiceID, "addr", ln.Addr().String())
			return ln, nil
		}
		if ctx.Err() != nil || s.cfg.ListenRetries >= 0 && attempt >= s.cfg.ListenRetries {
			return nil, fmt.Errorf("%w for %s on %s: %w", ErrListen, svc.name(), svc.Address, err)
		}
		s.log.Warn("cannot listen; retrying", "service_id", svc.ServiceID, "addr", svc.Address,
			"err", err, "attempt", attempt+1, "delay", s.cfg.ListenRetryDelay)
		if !sleepCtx(ctx, s.cfg.ListenRetryDelay) {
			return nil, fmt.Errorf("%w for %s on %s: %w", ErrListen, svc.name(), svc.Address, err)
		}
	}
}

// Addrs returns the addresses listened on, keyed by service ID.
func (s *Source) Addrs() map[string]net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]net.Addr, len(s.listeners))
	for _, l := range s.listeners {
		m[l.svc.ServiceID] = l.addr
	}
	return m
}

// Active returns the number of local connections being served.
func (s *Source) Active() int { return s.pairs.len() }

// Done is closed when a listener failed for good (see Err).
func (s *Source) Done() <-chan struct{} { return s.done }

// Err returns the error that closed Done (wrapping ErrListen), nil before.
// Close does not set it.
func (s *Source) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *Source) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil && !s.closed {
		s.err = err
		close(s.done)
	}
}

// Close closes the listeners and every connection, and waits for the
// Source's goroutines. It is idempotent and returns nil.
func (s *Source) Close() error {
	s.closeOnce.Do(func() {
		s.cancel() // first: the accept loops then take a closed listener for Close
		s.mu.Lock()
		s.closed = true
		for _, l := range s.listeners {
			l.ln.Close()
		}
		s.mu.Unlock()
		s.pairs.closeAll()
		s.wg.Wait()
	})
	return nil
}

// serve accepts connections on l, reopening the listener when it fails.
func (s *Source) serve(l *listener) {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			if temporary(err) {
				// Out of file descriptors and the like: wait for some to
				// be released rather than spin.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "service_id", l.svc.ServiceID, "err", err, "delay", backoff)
				if !sleepCtx(s.ctx, backoff) {
					return
				}
				continue
			}
			s.log.Error("listener failed; listening again", "service_id", l.svc.ServiceID, "addr", l.addr.String(), "err", err)
			l.ln.Close()
			ln, err := s.listen(s.ctx, l.svc)
			if err != nil {
				if s.ctx.Err() == nil {
					s.log.Error("giving up listening", "service_id", l.svc.ServiceID, "err", err)
					s.fail(err)
				}
				return
			}
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				ln.Close()
				return
			}
			l.ln, l.addr = ln, ln.Addr()
			s.mu.Unlock()
			continue
		}
		backoff = 0
		s.accepted(l.svc, c)
	}
}

// temporary reports accept errors worth retrying on the same listener.
func temporary(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, os.ErrDeadlineExceeded)
}

func (s *Source) accepted(svc Service, c net.Conn) {
	if s.ctx.Err() != nil {
		c.Close() // shutting down
		return
	}
	p := &pair{local: c}
	ok, n := s.pairs.add(p, s.cfg.MaxConns)
	if !ok {
		c.Close()
		s.logRefusal(svc, c, n)
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	s.wg.Add(1)
	go s.handle(svc, p)
}

// logRefusal logs refused connections, at most one line a second so that a
// flood cannot fill the log.
func (s *Source) logRefusal(svc Service, c net.Conn, active int) {
	n := s.refused.Add(1)
	now := time.Now().UnixNano()
	last := s.lastRefusal.Load()
	if now-last < int64(time.Second) || !s.lastRefusal.CompareAndSwap(last, now) {
		return
	}
	s.refused.Add(-n)
	s.log.Warn("refused a connection: too many active connections (tcp.max_active_connections)",
		"service_id", svc.ServiceID, "remote", c.RemoteAddr().String(), "active", active,
		"max", s.cfg.MaxConns, "refused", n)
}

func (s *Source) handle(svc Service, p *pair) {
	defer s.wg.Done()
	defer s.pairs.remove(p)
	remote := p.local.RemoteAddr().String()
	ctx := s.ctx
	if s.cfg.DialTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.DialTimeout)
		defer cancel()
	}
	tc, err := s.d.Dial(ctx, svc.ServiceID)
	if err != nil {
		p.local.Close()
		if s.ctx.Err() == nil {
			s.log.Warn("closed a new connection: cannot open a tunnel connection", "service_id", svc.ServiceID,
				"remote", remote, "err", err)
		}
		return
	}
	if !s.pairs.setTun(p, tc) {
		tc.Close()
		p.local.Close()
		return
	}
	log := s.log.With("service_id", svc.ServiceID, "stream_id", tc.StreamID(), "conn_id", tc.ConnectionID())
	log.Info("accepted connection", "remote", remote, "local", p.local.LocalAddr().String())
	r := join(p.local, tc, s.pool)
	if reason := tc.ResetReason(); reason != nil && !r.localEnded && s.ctx.Err() == nil {
		log.Warn("connection closed: "+explainReset(reason), "sent", r.sent, "received", r.received)
		return
	}
	logEnd(log, r, s.ctx.Err() != nil)
}

// explainReset says why the destination ended a connection before any
// reply (tunnel.Conn.ResetReason) and what to check.
func explainReset(reason error) string {
	switch {
	case errors.Is(reason, tunnel.ErrPeerNotConnected):
		return "the destination is not connected to the tunnel (is the device's agent or local proxy running with the destination token?)"
	case errors.Is(reason, tunnel.ErrServiceRefused):
		return "the destination could not connect to its service (connection refused? check its mapping: -d of localproxy, --map of tunnel-agent)"
	}
	return "the destination reset it before any reply: it could not connect to its service (check its -d or --map), or it is not connected"
}

// logEnd logs the end of a joined pair.
func logEnd(log *slog.Logger, r joinResult, closing bool) {
	args := []any{"sent", r.sent, "received", r.received}
	var msg string
	switch {
	case closing:
		msg = "connection closed: shutting down"
	case r.localEnded && r.err == nil:
		msg = "connection closed by the local side"
	case r.localEnded:
		msg = "connection closed: local socket error"
		args = append(args, "err", r.err)
	case r.err == nil:
		msg = "connection closed by the peer"
	default:
		msg = "connection closed: tunnel connection ended"
		args = append(args, "err", r.err)
	}
	log.Info(msg, args...)
}
