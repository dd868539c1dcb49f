package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/sectun/sectun/tunnel"
)

// DestinationConfig configures a Destination. The zero value of every
// field but Services means its default.
type DestinationConfig struct {
	// Services are the local services to dial, one per service ID.
	Services []Service
	// BindAddress, if set, is the local host (name or IP address) that
	// outgoing TCP connections are bound to (the reference's -b in
	// destination mode).
	BindAddress string
	// DialRetries is the number of further attempts after a failed dial of
	// a local service before the tunnel connection is rejected (the
	// reference's tcp.connection_retry_count); 0: none; negative: forever.
	DialRetries int
	// DialRetryDelay is the pause between those attempts (default 2.5 s).
	DialRetryDelay time.Duration
	// DialTimeout bounds each dial attempt (default 10 s).
	DialTimeout time.Duration
	// BufferSize is the size of each copy buffer (default 32 KiB; 4 KiB to
	// 256 KiB), for tunnel connections without io.ReaderFrom/io.WriterTo
	// (a *tunnel.Conn has both and needs none).
	BufferSize int
	// Logger receives a line per connection; nil discards.
	Logger *slog.Logger
}

// Destination connects the tunnel's incoming connections to local
// services. See the package documentation.
type Destination struct {
	a       Acceptor
	cfg     DestinationConfig
	log     *slog.Logger
	pool    *bufPool
	targets map[string]Service
	dialer  net.Dialer

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	pairs  pairs

	mu        sync.Mutex
	err       error
	done      chan struct{}
	closeOnce sync.Once
}

// NewDestination starts taking connections from a. It fails with ErrConfig
// on an invalid config or a bind address that does not resolve.
func NewDestination(a Acceptor, cfg DestinationConfig) (*Destination, error) {
	if a == nil {
		return nil, fmt.Errorf("%w: nil Acceptor", ErrConfig)
	}
	if len(cfg.Services) == 0 {
		return nil, fmt.Errorf("%w: no services", ErrConfig)
	}
	if err := checkServices(cfg.Services); err != nil {
		return nil, err
	}
	if cfg.DialRetryDelay <= 0 {
		cfg.DialRetryDelay = defaultRetryDelay
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	d := &Destination{
		a:       a,
		cfg:     cfg,
		log:     discardLogger(cfg.Logger),
		pool:    newBufPool(bufferSize(cfg.BufferSize)),
		targets: make(map[string]Service, len(cfg.Services)),
		done:    make(chan struct{}),
	}
	for _, s := range cfg.Services {
		d.targets[s.ServiceID] = s
	}
	d.dialer.Timeout = cfg.DialTimeout
	if cfg.BindAddress != "" {
		addr, err := net.ResolveTCPAddr("tcp", net.JoinHostPort(cfg.BindAddress, "0"))
		if err != nil {
			return nil, fmt.Errorf("%w: bind address %q: %w", ErrConfig, cfg.BindAddress, err)
		}
		d.dialer.LocalAddr = addr
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.wg.Add(1)
	go d.acceptLoop()
	return d, nil
}

// Done is closed when the Destination stopped taking connections: Accept
// failed (the session ended) or Close was called.
func (d *Destination) Done() <-chan struct{} { return d.done }

// Err returns the Accept error that closed Done; nil while running and
// after Close.
func (d *Destination) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// Active returns the number of tunnel connections being served.
func (d *Destination) Active() int { return d.pairs.len() }

// Close stops taking connections, closes every connection and waits for
// the Destination's goroutines. It is idempotent and returns nil.
func (d *Destination) Close() error {
	d.closeOnce.Do(func() {
		d.cancel()
		d.pairs.closeAll()
		d.wg.Wait()
	})
	return nil
}

func (d *Destination) acceptLoop() {
	defer d.wg.Done()
	for {
		tc, err := d.a.Accept(d.ctx)
		if err != nil {
			d.mu.Lock()
			if d.ctx.Err() == nil {
				d.err = err
			}
			close(d.done)
			d.mu.Unlock()
			return
		}
		d.wg.Add(1)
		go d.handle(tc)
	}
}

// target returns the local service for a tunnel service ID.
func (d *Destination) target(id string) (Service, bool) {
	if s, ok := d.targets[id]; ok {
		return s, true
	}
	if len(d.targets) == 1 {
		// A single mapping serves a tunnel's only service, named or not.
		for _, s := range d.targets {
			if s.ServiceID == "" || id == "" {
				return s, true
			}
		}
	}
	return Service{}, false
}

func (d *Destination) handle(tc *tunnel.Conn) {
	defer d.wg.Done()
	log := d.log.With("service_id", tc.ServiceID(), "stream_id", tc.StreamID(), "conn_id", tc.ConnectionID())
	svc, ok := d.target(tc.ServiceID())
	if !ok {
		log.Error("rejected a connection for a service without mapping")
		tc.Reject()
		return
	}
	local, err := d.dial(log, svc)
	if err != nil {
		if d.ctx.Err() == nil {
			log.Error("rejected a connection: cannot connect to the local service", "addr", svc.Address, "err", err)
		}
		tc.Reject()
		return
	}
	p := &pair{local: local, tun: tc}
	if ok, _ := d.pairs.add(p, 0); !ok {
		local.Close()
		tc.Close()
		return
	}
	defer d.pairs.remove(p)
	if c, ok := local.(*net.TCPConn); ok {
		c.SetNoDelay(true)
	}
	log.Info("connected to the local service", "addr", local.RemoteAddr().String(), "local", local.LocalAddr().String())
	r := join(local, tc, d.pool)
	logEnd(log, r, d.ctx.Err() != nil)
}

// dial connects to svc with the configured retries.
func (d *Destination) dial(log *slog.Logger, svc Service) (net.Conn, error) {
	dialer := d.dialer
	if svc.network() != "tcp" {
		dialer.LocalAddr = nil
	}
	for attempt := 0; ; attempt++ {
		c, err := dialer.DialContext(d.ctx, svc.network(), svc.Address)
		if err == nil {
			return c, nil
		}
		if d.ctx.Err() != nil || d.cfg.DialRetries >= 0 && attempt >= d.cfg.DialRetries {
			return nil, err
		}
		log.Warn("cannot connect to the local service; retrying", "addr", svc.Address, "err", err,
			"attempt", attempt+1, "delay", d.cfg.DialRetryDelay)
		if !sleepCtx(d.ctx, d.cfg.DialRetryDelay) {
			return nil, err
		}
	}
}
