package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// ErrConfig is returned by New for an invalid Config.
var ErrConfig = errors.New("faultproxy: invalid config")

// Faults shape the data of every connection. The zero value forwards data
// unchanged and at once.
type Faults struct {
	// Latency delays each chunk of data, in each direction (so a round
	// trip gets twice as long).
	Latency time.Duration
	// Jitter adds a uniformly random delay in [0, Jitter) to each chunk.
	// Order is kept: a chunk waits for the one before it.
	Jitter time.Duration
	// Bandwidth caps each direction of each connection, in bytes per
	// second; 0 means no cap.
	Bandwidth int64
	// Segment, when positive, is the most bytes written per write call
	// (1: one-byte segments); 0 means whole chunks.
	Segment int
}

// Mode is what the proxy does with new connections.
type Mode int32

const (
	// Pass forwards new connections to the target (the default).
	Pass Mode = iota
	// Refuse accepts new connections and resets them at once.
	Refuse
	// Hole accepts new connections and never forwards a byte of them.
	Hole
)

func (m Mode) String() string {
	switch m {
	case Pass:
		return "pass"
	case Refuse:
		return "refuse"
	case Hole:
		return "hole"
	}
	return fmt.Sprintf("Mode(%d)", int32(m))
}

// Config configures a Proxy.
type Config struct {
	// Target is the address connections are forwarded to (host:port).
	// Required.
	Target string
	// Listen is the address to listen on; default 127.0.0.1:0.
	Listen string
	// Faults are the initial faults (see SetFaults).
	Faults Faults
	// Logger receives debug logs of connections and injected faults; nil
	// discards them.
	Logger *slog.Logger
}

// Stats counts what the proxy did since New.
type Stats struct {
	// Accepted counts accepted connections, Active those still open
	// (blackholed ones included).
	Accepted, Active int64
	// Up and Down count bytes written to the target and to the client.
	Up, Down int64
	// Resets counts connections aborted with RST (Reset, Refuse mode,
	// failed dials, errors), Blackholed those blackholed.
	Resets, Blackholed int64
}

const (
	chunkSize  = 32 << 10
	queueDepth = 8
)

var chunkPool = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// Proxy is a running fault-injecting TCP proxy.
type Proxy struct {
	cfg    Config
	log    *slog.Logger
	ln     net.Listener
	faults atomic.Pointer[Faults]
	mode   atomic.Int32

	mu     sync.Mutex
	conns  map[*conn]struct{}
	closed bool
	wg     sync.WaitGroup

	closeOnce sync.Once

	accepted, resets, blackholed atomic.Int64
	up, down                     atomic.Int64
}

// New listens on cfg.Listen and starts forwarding to cfg.Target.
func New(cfg Config) (*Proxy, error) {
	if cfg.Target == "" {
		return nil, fmt.Errorf("%w: Target is empty", ErrConfig)
	}
	if _, _, err := net.SplitHostPort(cfg.Target); err != nil {
		return nil, fmt.Errorf("%w: Target %q: %v", ErrConfig, cfg.Target, err)
	}
	if err := cfg.Faults.check(); err != nil {
		return nil, err
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: %w", err)
	}
	p := &Proxy{cfg: cfg, log: log.With("faultproxy", ln.Addr().String()), ln: ln, conns: map[*conn]struct{}{}}
	f := cfg.Faults
	p.faults.Store(&f)
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

func (f Faults) check() error {
	if f.Latency < 0 || f.Jitter < 0 || f.Bandwidth < 0 || f.Segment < 0 {
		return fmt.Errorf("%w: negative fault %+v", ErrConfig, f)
	}
	return nil
}

// Addr returns the address clients connect to.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetFaults replaces the faults; live connections apply them from their
// next chunk. It panics on negative values (a test bug).
func (p *Proxy) SetFaults(f Faults) {
	if err := f.check(); err != nil {
		panic(err)
	}
	p.faults.Store(&f)
	p.log.Debug("faults set", "latency", f.Latency, "jitter", f.Jitter, "bandwidth", f.Bandwidth, "segment", f.Segment)
}

// Faults returns the current faults.
func (p *Proxy) Faults() Faults { return *p.faults.Load() }

// SetMode sets what happens to new connections.
func (p *Proxy) SetMode(m Mode) {
	p.mode.Store(int32(m))
	p.log.Debug("mode set", "mode", m.String())
}

// Reset aborts every live connection with a TCP RST to both ends and
// returns how many there were.
func (p *Proxy) Reset() int {
	n := 0
	for _, c := range p.live() {
		if c.abort() {
			n++
		}
	}
	p.log.Debug("reset", "conns", n)
	return n
}

// Blackhole makes every live connection silent in both directions, with
// nothing closed, and returns how many were affected.
func (p *Proxy) Blackhole() int {
	n := 0
	for _, c := range p.live() {
		if c.hole() {
			n++
		}
	}
	p.log.Debug("blackhole", "conns", n)
	return n
}

// DropBlackholed aborts the blackholed connections (RST, which their ends
// may or may not still be there to receive) and returns how many there
// were: the proxy's way of forgetting them.
func (p *Proxy) DropBlackholed() int {
	n := 0
	for _, c := range p.live() {
		if c.holed.Load() && c.abort() {
			n++
		}
	}
	return n
}

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	active := int64(len(p.conns))
	p.mu.Unlock()
	return Stats{
		Accepted: p.accepted.Load(), Active: active,
		Up: p.up.Load(), Down: p.down.Load(),
		Resets: p.resets.Load(), Blackholed: p.blackholed.Load(),
	}
}

// WaitForwarded waits until at least n bytes (both directions together)
// have been forwarded since New, or ctx ends.
func (p *Proxy) WaitForwarded(ctx context.Context, n int64) error {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for p.up.Load()+p.down.Load() < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("faultproxy: %d of %d bytes forwarded: %w", p.up.Load()+p.down.Load(), n, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Close stops accepting, aborts every connection and waits for the
// proxy's goroutines. It is idempotent.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.ln.Close()
		for _, c := range p.live() {
			c.abort()
		}
	})
	p.wg.Wait()
	return nil
}

func (p *Proxy) live() []*conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	cs := make([]*conn, 0, len(p.conns))
	for c := range p.conns {
		cs = append(cs, c)
	}
	return cs
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		p.accepted.Add(1)
		client := c.(*net.TCPConn)
		switch Mode(p.mode.Load()) {
		case Refuse:
			p.resets.Add(1)
			rst(client)
			continue
		case Hole:
			p.blackholed.Add(1)
			cn := &conn{p: p, client: client, kill: make(chan struct{})}
			cn.holed.Store(true)
			if !p.add(cn) {
				rst(client)
				continue
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				<-cn.kill
				p.remove(cn)
			}()
			continue
		}
		p.wg.Add(1)
		go p.serve(client)
	}
}

func (p *Proxy) add(c *conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) remove(c *conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// serve dials the target and forwards until both directions end.
func (p *Proxy) serve(client *net.TCPConn) {
	defer p.wg.Done()
	d := net.Dialer{Timeout: 10 * time.Second}
	tc, err := d.Dial("tcp", p.cfg.Target)
	if err != nil {
		p.log.Debug("target dial failed; resetting the client", "err", err)
		p.resets.Add(1)
		rst(client)
		return
	}
	target := tc.(*net.TCPConn)
	client.SetNoDelay(true)
	target.SetNoDelay(true)
	c := &conn{p: p, client: client, target: target, kill: make(chan struct{})}
	if !p.add(c) {
		rst(client)
		rst(target)
		return
	}
	defer p.remove(c)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.pipe(client, target, &p.up) }()
	go func() { defer wg.Done(); c.pipe(target, client, &p.down) }()
	wg.Wait()
	if !c.aborted.Load() {
		client.Close()
		target.Close()
	}
}

// rst closes c with a TCP RST.
func rst(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

// conn is one proxied connection.
type conn struct {
	p              *Proxy
	client, target *net.TCPConn // target is nil for a connection accepted in Hole mode

	holed   atomic.Bool
	aborted atomic.Bool
	kill    chan struct{} // closed by abort
	once    sync.Once
}

// abort resets both sockets; it reports whether this call did it.
func (c *conn) abort() bool {
	did := false
	c.once.Do(func() {
		did = true
		c.aborted.Store(true)
		c.p.resets.Add(1)
		close(c.kill)
		rst(c.client)
		if c.target != nil {
			rst(c.target)
		}
	})
	return did
}

// hole blackholes the connection: pending reads and writes are
// interrupted by deadlines in the past and the pipes then wait for kill.
func (c *conn) hole() bool {
	if c.aborted.Load() || c.holed.Swap(true) {
		return false
	}
	c.p.blackholed.Add(1)
	past := time.Unix(1, 0)
	c.client.SetDeadline(past)
	if c.target != nil {
		c.target.SetDeadline(past)
	}
	return true
}

// chunk is data read from one side, due to be written at a time.
type chunk struct {
	buf *[]byte
	n   int
	due time.Time
	end error // io.EOF for a clean end, another error for a reset; nil for data
}

// pipe forwards src to dst: a reader goroutine feeds a bounded queue and
// this goroutine writes, applying the faults.
func (c *conn) pipe(src, dst *net.TCPConn, count *atomic.Int64) {
	q := make(chan chunk, queueDepth)
	go c.read(src, q)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.kill:
			cancel()
		case <-ctx.Done():
		}
	}()
	var lim *rate.Limiter
	var timer *time.Timer
	failed := false
	for ch := range q {
		if failed || c.holed.Load() || c.aborted.Load() {
			put(ch.buf)
			continue
		}
		if ch.end != nil {
			if errors.Is(ch.end, io.EOF) {
				dst.CloseWrite() // forward the FIN
			} else if !c.holed.Load() {
				c.p.log.Debug("read failed; resetting the connection", "err", ch.end)
				c.abort()
			}
			continue
		}
		if d := time.Until(ch.due); d > 0 {
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			select {
			case <-timer.C:
			case <-c.kill:
			}
		}
		if err := c.write(ctx, dst, (*ch.buf)[:ch.n], &lim, count); err != nil {
			failed = true
			if !c.holed.Load() && !c.aborted.Load() {
				c.p.log.Debug("write failed; resetting the connection", "err", err)
				c.abort()
			}
		}
		put(ch.buf)
	}
	if timer != nil {
		timer.Stop()
	}
}

func put(b *[]byte) {
	if b != nil {
		chunkPool.Put(b)
	}
}

// write writes b to dst in segments, within the bandwidth cap.
func (c *conn) write(ctx context.Context, dst *net.TCPConn, b []byte, lim **rate.Limiter, count *atomic.Int64) error {
	for len(b) > 0 {
		f := c.p.faults.Load()
		n := len(b)
		if f.Segment > 0 {
			n = min(n, f.Segment)
		}
		if f.Bandwidth > 0 {
			burst := int(min(max(f.Bandwidth/20, 1), chunkSize))
			if *lim == nil {
				*lim = rate.NewLimiter(rate.Limit(f.Bandwidth), burst)
			} else if (*lim).Limit() != rate.Limit(f.Bandwidth) {
				(*lim).SetLimit(rate.Limit(f.Bandwidth))
				(*lim).SetBurst(burst)
			}
			n = min(n, burst)
			if err := (*lim).WaitN(ctx, n); err != nil {
				return err
			}
		}
		if c.holed.Load() {
			return errHoled
		}
		w, err := dst.Write(b[:n])
		count.Add(int64(w))
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

var errHoled = errors.New("faultproxy: blackholed")

// read feeds src's data into q, stamped with their due times, until src
// ends or the connection is blackholed or aborted.
func (c *conn) read(src *net.TCPConn, q chan<- chunk) {
	defer close(q)
	var last time.Time
	for {
		buf := chunkPool.Get().(*[]byte)
		n, err := src.Read(*buf)
		if c.holed.Load() || c.aborted.Load() {
			put(buf)
			if c.holed.Load() {
				<-c.kill // read nothing more: the sender's buffers fill up
			}
			return
		}
		if n > 0 {
			f := c.p.faults.Load()
			due := time.Now().Add(f.Latency)
			if f.Jitter > 0 {
				due = due.Add(rand.N(f.Jitter))
			}
			if due.Before(last) {
				due = last // never overtake the chunk before
			}
			last = due
			select {
			case q <- chunk{buf: buf, n: n, due: due}:
			case <-c.kill:
				put(buf)
				return
			}
		} else {
			put(buf)
		}
		if err != nil {
			select {
			case q <- chunk{end: err}:
			case <-c.kill:
			}
			return
		}
	}
}
