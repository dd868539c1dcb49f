package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sectun/sectun/internal/token"
	"github.com/sectun/sectun/internal/wsconn"
	"github.com/sectun/sectun/wire"
)

// Session is one end of a tunnel: a WebSocket to the tunneling service,
// kept up in the background, carrying any number of Conns.
type Session struct {
	cfg         Config
	url         string
	host        string
	clientToken string
	log         *slog.Logger
	ev          *eventQueue

	ctx       context.Context // canceled by Close
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	done      chan struct{}

	warnedSilent atomic.Bool
	everUp       atomic.Bool // a link has been activated once

	mu            sync.Mutex
	stopped       bool
	err           error
	link          *link         // nil while (re)connecting
	linkUp        chan struct{} // closed when link is set
	version       int
	services      []string
	servicesKnown bool
	detected      int                // peer version detected by a source, 0 if none
	streams       map[string]*stream // the active stream of each service ID
	nextStreamID  int32
	nconns        int
	acceptQ       chan *Conn
	listeners     map[string]*listener
	peer          peerState       // source: what the destination's messages say of its presence
	answered      map[string]bool // source: services whose destination sent anything
	retried       map[string]bool // source: services given a V1 retry
}

// peerState is what a source knows of the destination's presence.
type peerState int

const (
	peerUnknown peerState = iota
	peerPresent
	peerAbsent
)

// stream is a service's active stream. Guarded by Session.mu.
type stream struct {
	id       int32
	service  string // key in Session.streams
	wireSvc  string // service ID sent on the wire: "" to a V1 peer
	connIDs  bool   // V3 message format: connection IDs on the wire
	conns    map[uint32]*Conn
	nextConn uint32

	// The V1 retry of the stream's first connection (source).
	probeID      int32 // its stream ID while it runs
	probeConn    *Conn
	probeRefused bool      // the destination reset it: it speaks V2/V3
	probeAt      time.Time // when the retry was started
	rehomeAt     time.Time // when the connection was first started again in V1 (rehomeLocked)
}

// Connect connects to the tunneling service and returns the session once
// the first handshake succeeded and, on V2/V3, SERVICE_IDS arrived (or
// Config.ServiceIDsTimeout passed). Network errors and 5xx answers are
// retried with backoff until ctx ends; a 4xx answer fails at once with a
// *HandshakeError wrapping ErrTokenRejected. ctx bounds the connect phase
// only: afterwards the session reconnects by itself until Close or a
// permanent error (see Done and Err).
func Connect(ctx context.Context, cfg Config) (*Session, error) {
	s, err := newSession(cfg)
	if err != nil {
		return nil, err
	}
	l, err := s.connectLoop(ctx, false, nil)
	if err != nil {
		s.cancel()
		s.ev.close()
		return nil, err
	}
	s.activate(l, false)
	s.wg.Add(1)
	go s.run(l)
	return s, nil
}

func newSession(cfg Config) (*Session, error) {
	u, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	ct := cfg.ClientToken
	if ct == "" {
		ct = token.NewClientToken()
	}
	ctx, cancel := context.WithCancel(context.Background())
	log := cfg.Logger.With("mode", cfg.Mode.String())
	s := &Session{
		cfg: cfg, url: u.String(), host: u.Host, clientToken: ct, log: log,
		ev:     newEventQueue(cfg.OnEvent, log),
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
		linkUp: make(chan struct{}),

		streams:   map[string]*stream{},
		acceptQ:   make(chan *Conn, cfg.MaxConns),
		listeners: map[string]*listener{},
		answered:  map[string]bool{},
		retried:   map[string]bool{},
	}
	return s, nil
}

// Done is closed when the session has ended for good.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err returns why the session ended (ErrSessionClosed after Close, a
// *HandshakeError, an error wrapping ErrTunnelClosed, ...), nil while it
// runs.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Services returns the tunnel's service IDs from the latest SERVICE_IDS,
// nil if the tunnel has none or they were not announced.
func (s *Session) Services() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.services) == 0 {
		return nil
	}
	return slices.Clone(s.services)
}

// Version returns the protocol version (1 to 3) negotiated with the service
// on the latest connection.
func (s *Session) Version() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// Close ends the session: every Conn fails with ErrSessionClosed, the
// WebSocket is closed with a normal close frame, and Close waits for the
// session's goroutines, the OnEvent callback included. It is idempotent and
// always returns nil. Call it even after Done is closed.
func (s *Session) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.wg.Wait()
		s.stop(ErrSessionClosed)
		s.ev.close()
	})
	return nil
}

func (s *Session) stop(err error) {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.stopped = true
	s.err = err
	close(s.done)
	s.mu.Unlock()
	switch {
	case errors.Is(err, ErrSessionClosed):
		s.log.Info("session closed")
	case errors.Is(err, ErrTunnelClosed):
		// The normal end of a tunnel, not a failure.
		s.log.Info("session ended: tunnel closed by the service", "err", err)
	default:
		s.log.Error("session ended", "err", err)
	}
	s.ev.emit(Stopped{Err: err})
}

func permanent(err error) bool {
	return errors.Is(err, ErrTokenRejected) || errors.Is(err, ErrTunnelClosed) ||
		errors.Is(err, ErrVersionMismatch) || errors.Is(err, ErrSessionClosed)
}

// permanentAtStart reports errors that end Connect at once, before the
// session was ever up: a wrong scheme or an untrusted certificate cannot
// change without the user. Once a session has been up they are retried
// like network errors, as a service being redeployed may show them for a
// moment.
func permanentAtStart(err error) bool {
	return errors.Is(err, ErrTLSRequired) || errors.Is(err, ErrTLSNotSpoken) || errors.Is(err, ErrCertificateUntrusted)
}

// run supervises the links: it waits for the active one to die, fails its
// connections and connects again.
func (s *Session) run(l *link) {
	defer s.wg.Done()
	for {
		select {
		case <-l.done:
		case <-s.ctx.Done():
			l.shutdown(ErrSessionClosed)
		}
		err := l.err
		if s.ctx.Err() != nil {
			err = ErrSessionClosed
		}
		s.deactivate(l, err)
		l.wait()
		if s.ctx.Err() != nil {
			s.stop(ErrSessionClosed)
			return
		}
		s.ev.emit(Disconnected{Err: err})
		if permanent(err) || s.cfg.DisableReconnect {
			s.stop(err)
			return
		}
		s.log.Warn("disconnected; reconnecting", "err", err, "channel_id", l.channelID)
		var cerr error
		l, cerr = s.connectLoop(s.ctx, time.Since(l.started) < stableLink, err)
		if cerr != nil {
			if s.ctx.Err() != nil {
				cerr = ErrSessionClosed
			}
			s.stop(cerr)
			return
		}
		s.activate(l, true)
	}
}

func (s *Session) activate(l *link, reconnect bool) {
	s.everUp.Store(true)
	s.mu.Lock()
	s.link = l
	s.version = l.version
	close(s.linkUp)
	var services []string
	if len(s.services) > 0 {
		services = slices.Clone(s.services)
	}
	s.mu.Unlock()
	l.log.Info("connected", "version", l.version, "services", services, "endpoint", s.host)
	s.ev.emit(Connected{Services: services, Version: l.version, ChannelID: l.channelID, Reconnect: reconnect})
}

// deactivate fails every connection of a dead link.
func (s *Session) deactivate(l *link, err error) {
	s.mu.Lock()
	if s.link == l {
		s.link = nil
		s.linkUp = make(chan struct{})
	}
	for _, st := range s.streams {
		s.endStreamLocked(st, err, err)
	}
	s.mu.Unlock()
	close(l.deactivated)
}

// connectLoop makes connection attempts with backoff until one succeeds,
// a permanent error, MaxAttempts, or ctx ends. delayFirst applies backoff
// before the first attempt too.
func (s *Session) connectLoop(ctx context.Context, delayFirst bool, lastErr error) (*link, error) {
	for attempt := 1; ; attempt++ {
		if s.cfg.MaxAttempts > 0 && attempt > s.cfg.MaxAttempts {
			return nil, fmt.Errorf("tunnel: gave up after %d connection attempts: %w", s.cfg.MaxAttempts, lastErr)
		}
		if attempt > 1 || delayFirst {
			d := s.backoff(attempt)
			s.ev.emit(Reconnecting{Attempt: attempt, Delay: d, Err: lastErr})
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, connectCanceled(ctx, lastErr)
			}
		}
		l, err := s.dialOnce(ctx)
		if err == nil {
			return l, nil
		}
		if ctx.Err() != nil {
			// The attempt the deadline cut short says nothing about the
			// service; the one before it, if any, does.
			if lastErr == nil {
				lastErr = err
			}
			return nil, connectCanceled(ctx, lastErr)
		}
		if permanent(err) || !s.everUp.Load() && permanentAtStart(err) {
			return nil, err
		}
		s.log.Warn("connection attempt failed", "attempt", attempt, "err", err)
		lastErr = err
	}
}

func connectCanceled(ctx context.Context, last error) error {
	if last == nil {
		return fmt.Errorf("tunnel: connect: %w", ctx.Err())
	}
	return fmt.Errorf("tunnel: connect: %w (last attempt: %w)", ctx.Err(), last)
}

// backoff returns the full-jitter delay before attempt n: uniform in
// [0, min(ReconnectMax, ReconnectMin * 2^(n-1))).
func (s *Session) backoff(n int) time.Duration {
	ceil := s.cfg.ReconnectMax
	if n-1 < 30 {
		if d := s.cfg.ReconnectMin << (n - 1); d > 0 && d < ceil {
			ceil = d
		}
	}
	if ceil <= 0 {
		return 0
	}
	return rand.N(ceil)
}

// handshake opens the WebSocket and checks the negotiated subprotocol.
func handshake(ctx context.Context, cfg *Config, url, clientToken string) (ws *wsconn.Conn, version int, channelID string, err error) {
	h := http.Header{}
	h.Set("access-token", cfg.AccessToken)
	h.Set("client-token", clientToken)
	ws, resp, err := wsconn.Dial(ctx, url, wsconn.DialOptions{
		Header:       h,
		Subprotocols: cfg.Subprotocols,
		TLS:          cfg.TLS,
		Proxy:        cfg.Proxy,
	})
	if err != nil {
		return nil, 0, "", classifyDialError(ctx, cfg, url, err)
	}
	channelID = resp.Header.Get("channel-id")
	version, err = negotiated(ws.Subprotocol(), cfg.Subprotocols)
	if err != nil {
		ws.Close(wsconn.CloseProtocolError, "unexpected subprotocol")
		return nil, 0, "", err
	}
	return ws, version, channelID, nil
}

// dialOnce makes one connection attempt and waits until the link is ready.
func (s *Session) dialOnce(ctx context.Context) (*link, error) {
	ws, version, channelID, err := handshake(ctx, &s.cfg, s.url, s.clientToken)
	if err != nil {
		return nil, err
	}
	s.log.Debug("handshake done", "channel_id", channelID, "version", version, "token", token.Short(s.cfg.AccessToken))
	l := newLink(s, ws, version, channelID)
	s.mu.Lock()
	s.services = nil
	s.servicesKnown = version < 2 // V1: no service IDs at all
	s.mu.Unlock()
	l.start()
	t := time.NewTimer(s.cfg.ServiceIDsTimeout)
	defer t.Stop()
	select {
	case <-l.readyCh:
		return l, nil
	case <-t.C:
		l.log.Warn("no SERVICE_IDS from the service; service IDs will not be checked", "waited", s.cfg.ServiceIDsTimeout)
		return l, nil
	case <-l.done:
	case <-ctx.Done():
		l.fail(fmt.Errorf("tunnel: connect: %w", ctx.Err()))
	}
	s.deactivate(l, l.err)
	l.wait()
	return nil, l.err
}

// negotiated returns the protocol version of the subprotocol the service
// chose. Without one (the reference local proxy tolerates that too) the
// highest version offered is assumed.
func negotiated(chosen string, offered []string) (int, error) {
	if chosen == "" {
		v := 0
		for _, p := range offered {
			v = max(v, parseSubprotocol(p))
		}
		return v, nil
	}
	if v := parseSubprotocol(chosen); v != 0 && slices.Contains(offered, chosen) {
		return v, nil
	}
	return 0, fmt.Errorf("%w: the service chose subprotocol %q, not one of %q", ErrVersionMismatch, chosen, offered)
}

// Dial (source) opens a connection to serviceID on the destination. On V3
// the first connection of a service starts a stream (STREAM_START) and
// further simultaneous ones join it (CONNECTION_START). A V1/V2 peer
// (Config.PeerVersion, or detected) has one connection per service: a new
// Dial replaces the service's previous connection, which fails with
// ErrStreamReset, as with the reference local proxy; on V1 there is one
// connection per tunnel. serviceID may be "" when the tunnel has no
// service IDs or exactly one. While the session is reconnecting, Dial waits
// for it, bounded by ctx. The destination does not acknowledge: if it
// cannot reach the service, the Conn reads io.EOF.
func (s *Session) Dial(ctx context.Context, serviceID string) (*Conn, error) {
	if s.cfg.Mode != ModeSource {
		return nil, fmt.Errorf("%w: Dial needs ModeSource", ErrWrongMode)
	}
	for {
		s.mu.Lock()
		if s.stopped {
			err := s.err
			s.mu.Unlock()
			return nil, err
		}
		l := s.link
		if l != nil && !isClosed(l.done) {
			c, err := s.openLocked(l, serviceID)
			s.mu.Unlock()
			return c, err
		}
		var wait <-chan struct{} = s.linkUp
		if l != nil {
			wait = l.deactivated
		}
		s.mu.Unlock()
		select {
		case <-wait:
		case <-s.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("tunnel: dial %q: waiting for the service: %w", serviceID, ctx.Err())
		}
	}
}

// peerVersionLocked is the protocol version spoken to the peer.
func (s *Session) peerVersionLocked() int {
	v := s.version
	if p := s.cfg.PeerVersion; p != 0 && p < v {
		v = p
	}
	if d := s.detected; d != 0 && d < v {
		v = d
	}
	return v
}

func (s *Session) resolveServiceLocked(id string) (string, error) {
	if !s.servicesKnown {
		return id, nil
	}
	switch {
	case len(s.services) == 0 && id == "":
		return "", nil
	case len(s.services) == 0:
		return "", fmt.Errorf("%w %q: the tunnel has no service IDs (dial \"\")", ErrUnknownService, id)
	case id == "" && len(s.services) == 1:
		return s.services[0], nil
	case slices.Contains(s.services, id):
		return id, nil
	}
	return "", fmt.Errorf("%w %q: the tunnel's services are %q", ErrUnknownService, id, s.services)
}

func (s *Session) openLocked(l *link, serviceID string) (*Conn, error) {
	svc, err := s.resolveServiceLocked(serviceID)
	if err != nil {
		return nil, err
	}
	v := s.peerVersionLocked()
	replaced := fmt.Errorf("%w: replaced by a new connection (the destination speaks V%d: one connection per service)", ErrStreamReset, v)
	// Replacing a stream resets it on the wire first: a destination that
	// still holds it (the reference proxy) drops a STREAM_START otherwise.
	if v == 1 {
		for _, st := range s.streams {
			l.pushCtrl(wire.Message{Type: wire.TypeStreamReset, StreamID: st.id, ServiceID: st.wireSvc})
			s.endStreamLocked(st, replaced, replaced)
		}
	}
	st := s.streams[svc]
	if st != nil && (v < 3 || !st.connIDs) {
		l.pushCtrl(wire.Message{Type: wire.TypeStreamReset, StreamID: st.id, ServiceID: st.wireSvc})
		s.endStreamLocked(st, replaced, replaced)
		st = nil
	}
	if s.nconns >= s.cfg.MaxConns {
		return nil, fmt.Errorf("%w: %d open (Config.MaxConns)", ErrTooManyConns, s.nconns)
	}
	if st == nil {
		s.nextStreamID++
		if s.nextStreamID <= 0 {
			s.nextStreamID = 1
		}
		st = &stream{id: s.nextStreamID, service: svc, wireSvc: svc, connIDs: v >= 3, conns: map[uint32]*Conn{}, nextConn: 1}
		if v == 1 {
			st.wireSvc = ""
		}
		s.streams[svc] = st
		c := s.addConnLocked(l, st, 1)
		if s.v1RetryEligibleLocked(st) {
			c.replayOn = true
			c.retryTimer = time.AfterFunc(s.cfg.V1Retry, func() { s.retryV1(c) })
		}
		m := wire.Message{Type: wire.TypeStreamStart, StreamID: st.id, ServiceID: st.wireSvc}
		if st.connIDs {
			m.ConnectionID = 1
		}
		l.pushCtrl(m)
		s.ev.emit(StreamStarted{ServiceID: svc, StreamID: st.id, ConnectionID: m.ConnectionID})
		return c, nil
	}
	st.nextConn++
	c := s.addConnLocked(l, st, st.nextConn)
	l.pushCtrl(wire.Message{Type: wire.TypeConnectionStart, StreamID: st.id, ServiceID: st.wireSvc, ConnectionID: c.id})
	s.ev.emit(ConnectionStarted{ServiceID: svc, StreamID: st.id, ConnectionID: c.id})
	return c, nil
}

func (s *Session) addConnLocked(l *link, st *stream, id uint32) *Conn {
	c := newConn(s, l, st, id)
	st.conns[id] = c
	s.nconns++
	return c
}

func (s *Session) removeConnLocked(st *stream, c *Conn) {
	if st.conns[c.id] == c {
		delete(st.conns, c.id)
		s.nconns--
	}
}

// endStreamLocked terminates every connection of st and forgets it.
func (s *Session) endStreamLocked(st *stream, rerr, werr error) {
	s.dropProbeLocked(st)
	for _, c := range st.conns {
		c.terminate(rerr, werr)
		s.removeConnLocked(st, c)
	}
	if s.streams[st.service] == st {
		delete(s.streams, st.service)
	}
}

// Accept (destination) returns the next connection started by the source
// for a service without a Listener. The caller connects it to the local
// service, or calls Reject if that fails. Connections not accepted within
// the backlog (Config.MaxConns) are rejected.
func (s *Session) Accept(ctx context.Context) (*Conn, error) {
	if s.cfg.Mode != ModeDestination {
		return nil, fmt.Errorf("%w: Accept needs ModeDestination", ErrWrongMode)
	}
	select {
	case c := <-s.acceptQ:
		return c, nil
	case <-s.done:
		return nil, s.Err()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Listen (destination) returns a listener receiving the connections of one
// service (serviceID "" on a tunnel without service IDs); Accept no longer
// sees them. It fails with ErrUnknownService if the tunnel announced its
// services and serviceID is not one of them.
func (s *Session) Listen(serviceID string) (net.Listener, error) {
	if s.cfg.Mode != ModeDestination {
		return nil, fmt.Errorf("%w: Listen needs ModeDestination", ErrWrongMode)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil, s.err
	}
	if s.servicesKnown && !(serviceID == "" && len(s.services) == 0) && !slices.Contains(s.services, serviceID) {
		return nil, fmt.Errorf("%w %q: the tunnel's services are %q", ErrUnknownService, serviceID, s.services)
	}
	if s.listeners[serviceID] != nil {
		return nil, fmt.Errorf("tunnel: service %q already has a listener", serviceID)
	}
	ln := &listener{s: s, service: serviceID, q: make(chan *Conn, s.cfg.MaxConns), done: make(chan struct{})}
	s.listeners[serviceID] = ln
	return ln, nil
}

type listener struct {
	s       *Session
	service string
	q       chan *Conn
	done    chan struct{}
	once    sync.Once
}

func (ln *listener) Accept() (net.Conn, error) {
	select {
	case c := <-ln.q:
		return c, nil
	case <-ln.done:
		return nil, net.ErrClosed
	case <-ln.s.done:
		return nil, ln.s.Err()
	}
}

// Close stops the listener and rejects the connections it had not
// returned yet.
func (ln *listener) Close() error {
	ln.once.Do(func() {
		ln.s.mu.Lock()
		if ln.s.listeners[ln.service] == ln {
			delete(ln.s.listeners, ln.service)
		}
		ln.s.mu.Unlock()
		close(ln.done)
		for {
			select {
			case c := <-ln.q:
				c.Reject()
			default:
				return
			}
		}
	})
	return nil
}

func (ln *listener) Addr() net.Addr { return Addr{ServiceID: ln.service} }

// handle processes one received message. Only DATA may block, on a full
// receive buffer.
func (s *Session) handle(l *link, m *wire.Message) error {
	defer l.markReady() // SERVICE_IDS comes first if at all
	if m.Type == wire.TypeData {
		s.mu.Lock()
		var c *Conn
		if !isClosed(l.done) {
			c = s.dataTargetLocked(l, m)
		}
		s.mu.Unlock()
		if c != nil {
			l.deliver(c, m.Payload)
		}
		return nil
	}
	l.log.Debug("received", "msg", m.String())
	s.mu.Lock()
	defer s.mu.Unlock()
	if isClosed(l.done) {
		return nil // the link is being torn down: its connections are being failed
	}
	switch m.Type {
	case wire.TypeServiceIDs:
		s.services = slices.Clone(m.AvailableServiceIDs)
		s.servicesKnown = true
	case wire.TypeStreamStart:
		s.streamStartLocked(l, m)
	case wire.TypeConnectionStart:
		if s.cfg.Mode != ModeDestination {
			l.log.Warn("ignored CONNECTION_START sent to a source", "stream_id", m.StreamID)
			return nil
		}
		st := s.streams[m.ServiceID]
		if st == nil || st.id != m.StreamID || m.ConnectionID == 0 || st.conns[m.ConnectionID] != nil {
			l.log.Debug("ignored stale or duplicate CONNECTION_START", "msg", m.String())
			return nil
		}
		s.incomingLocked(l, st, m.ConnectionID, false)
	case wire.TypeStreamReset:
		if s.cfg.Mode == ModeSource && m.ServiceID == "" {
			if st := s.probeOwnerLocked(m.StreamID); st != nil {
				s.probeRefusedLocked(l, st)
				return nil
			}
		}
		st := s.lookupLocked(m)
		if st == nil {
			l.log.Debug("dropped stale STREAM_RESET", "msg", m.String())
			return nil
		}
		if s.cfg.Mode == ModeSource {
			if s.rehomeLocked(l, st) {
				return nil
			}
			s.remoteResetLocked(l, st, nil)
		}
		s.endStreamLocked(st, io.EOF, fmt.Errorf("%w: stream %d reset by the peer", ErrStreamReset, st.id))
		s.ev.emit(StreamReset{ServiceID: st.service, StreamID: st.id, Remote: true})
	case wire.TypeConnectionReset:
		st := s.lookupLocked(m)
		if st == nil {
			return nil
		}
		id := max(m.ConnectionID, 1)
		c := st.conns[id]
		if c == nil {
			return nil
		}
		if s.cfg.Mode == ModeSource {
			s.remoteResetLocked(l, st, c)
			if st.probeConn == c {
				s.dropProbeLocked(st)
			}
		}
		c.terminate(io.EOF, fmt.Errorf("%w: stream %d connection %d reset by the peer", ErrStreamReset, st.id, id))
		// The stream stays even when this was its last connection, as
		// after a local close (see finishLocalClose): the peer keeps it
		// too, and the next connection is a CONNECTION_START on it.
		s.removeConnLocked(st, c)
		s.ev.emit(ConnectionReset{ServiceID: st.service, StreamID: st.id, ConnectionID: id, Remote: true})
	case wire.TypeSessionReset:
		err := fmt.Errorf("%w: session reset by the service", ErrStreamReset)
		for _, st := range s.streams {
			s.endStreamLocked(st, err, err)
		}
		l.log.Info("session reset by the service")
		s.ev.emit(SessionReset{})
	default:
		if !m.Ignorable {
			l.log.Warn("ignored message of unknown type", "msg", m.String())
		}
	}
	return nil
}

// lookupLocked finds the active stream a message is for, nil if stale.
func (s *Session) lookupLocked(m *wire.Message) *stream {
	if st := s.streams[m.ServiceID]; st != nil && st.id == m.StreamID {
		return st
	}
	if m.ServiceID == "" { // a V1 peer answering on a stream with a service ID
		for _, st := range s.streams {
			if st.id == m.StreamID {
				return st
			}
		}
	}
	return nil
}

func (s *Session) dataTargetLocked(l *link, m *wire.Message) *Conn {
	if s.cfg.Mode == ModeSource && m.ServiceID == "" {
		if st := s.probeOwnerLocked(m.StreamID); st != nil {
			s.probeAnsweredLocked(l, st)
		}
	}
	st := s.lookupLocked(m)
	if st == nil {
		l.log.Debug("dropped stale DATA", "stream_id", m.StreamID, "service_id", m.ServiceID, "conn_id", m.ConnectionID)
		return nil
	}
	if s.cfg.Mode == ModeSource {
		s.setPeerLocked(l, peerPresent, "")
		s.answered[st.service] = true
		if st.probeID != 0 {
			l.log.Info("the destination answered in V3 after all: the V1 retry is dropped", "service_id", st.service, "stream_id", st.id)
			s.dropProbeLocked(st)
		}
		if s.cfg.PeerVersion == 0 {
			if m.ServiceID == "" && st.wireSvc != "" {
				s.detectedLocked(l, st, 1, "")
			} else if m.ConnectionID == 0 && st.connIDs {
				s.detectedLocked(l, st, 2, "")
			}
		}
	} else if m.ConnectionID == 0 && st.connIDs {
		// As the reference does: a V2 source; answer without connection IDs.
		st.connIDs = false
		l.log.Info("source speaks V2: no connection IDs on this stream", "service_id", st.service, "stream_id", st.id)
	}
	return st.conns[max(m.ConnectionID, 1)]
}

// detectedLocked switches a source to the peer version v its replies show.
func (s *Session) detectedLocked(l *link, cur *stream, v int, why string) {
	if s.detected != 0 && s.detected <= v {
		return
	}
	s.detected = v
	broken := fmt.Errorf("%w: the destination speaks V%d, which has one connection per service", ErrVersionMismatch, v)
	for _, st := range s.streams {
		if v == 1 && st != cur {
			s.endStreamLocked(st, broken, broken)
			continue
		}
		st.connIDs = false
		if v == 1 {
			st.wireSvc = ""
		}
		for id, c := range st.conns {
			if id != 1 {
				c.terminate(broken, broken)
				s.removeConnLocked(st, c)
			}
		}
	}
	switch {
	case why != "":
		l.log.Warn(why)
	case v == 1:
		l.log.Warn("destination speaks protocol V1 (no service IDs): switched to V1, one connection per tunnel; set PeerVersion 1 to skip detection")
	default:
		l.log.Warn("destination speaks protocol V2 (no connection IDs): switched to V2, one connection per service; set PeerVersion 2 to skip detection")
	}
	s.ev.emit(PeerVersionDetected{ServiceID: cur.service, Version: v})
}

func (s *Session) streamStartLocked(l *link, m *wire.Message) {
	if s.cfg.Mode != ModeDestination {
		l.log.Warn("ignored STREAM_START sent to a source", "stream_id", m.StreamID)
		return
	}
	svc := m.ServiceID
	if s.servicesKnown && svc != "" && !slices.Contains(s.services, svc) {
		l.log.Warn("rejected stream for a service the tunnel does not have", "service_id", svc, "stream_id", m.StreamID)
		l.pushCtrl(wire.Message{Type: wire.TypeStreamReset, StreamID: m.StreamID, ServiceID: svc})
		return
	}
	if svc == "" && s.namedStreamOpenLocked() {
		// A V1-framed stream while a V3 one is open is a sectun source's
		// V1 retry (Config.V1Retry) of a connection whose reply is slow:
		// refuse it, which tells that source we speak V2/V3.
		l.log.Debug("refused a V1-framed stream while a V2/V3 stream is open (a source's V1 retry)", "stream_id", m.StreamID)
		l.pushCtrl(wire.Message{Type: wire.TypeStreamReset, StreamID: m.StreamID})
		return
	}
	if old := s.streams[svc]; old != nil {
		s.endStreamLocked(old, io.EOF, fmt.Errorf("%w: stream %d replaced by stream %d", ErrStreamReset, old.id, m.StreamID))
	}
	st := &stream{id: m.StreamID, service: svc, wireSvc: svc, connIDs: m.ConnectionID != 0, conns: map[uint32]*Conn{}}
	s.streams[svc] = st
	s.incomingLocked(l, st, max(m.ConnectionID, 1), true)
}

// incomingLocked registers a connection started by the source and hands it
// to its listener or Accept, or rejects it.
func (s *Session) incomingLocked(l *link, st *stream, id uint32, streamStart bool) {
	q := s.acceptQ
	if ln := s.listeners[st.service]; ln != nil {
		q = ln.q
	}
	if s.nconns < s.cfg.MaxConns {
		c := s.addConnLocked(l, st, id)
		select {
		case q <- c:
			if streamStart {
				s.ev.emit(StreamStarted{ServiceID: st.service, StreamID: st.id, ConnectionID: id, Remote: true})
			} else {
				s.ev.emit(ConnectionStarted{ServiceID: st.service, StreamID: st.id, ConnectionID: id, Remote: true})
			}
			l.log.Debug("incoming connection", "service_id", st.service, "stream_id", st.id, "conn_id", id)
			return
		default:
			s.removeConnLocked(st, c)
		}
	}
	l.log.Warn("rejected incoming connection: too many connections or none accepted", "service_id", st.service, "stream_id", st.id, "conn_id", id, "max_conns", s.cfg.MaxConns)
	if streamStart || !st.connIDs {
		s.endStreamLocked(st, io.EOF, ErrTooManyConns)
		l.pushCtrl(wire.Message{Type: wire.TypeStreamReset, StreamID: st.id, ServiceID: st.wireSvc})
		return
	}
	l.pushCtrl(wire.Message{Type: wire.TypeConnectionReset, StreamID: st.id, ServiceID: st.wireSvc, ConnectionID: id})
}

// resetLocked unregisters c and queues the reset that tells the peer:
// STREAM_RESET when the stream has no connection IDs or alone is set,
// else CONNECTION_RESET. It reports whether c was still registered.
func (s *Session) resetLocked(c *Conn, alone bool, err error) bool {
	st := c.st
	if st.conns[c.id] != c {
		return false
	}
	streamReset := !st.connIDs || (alone && len(st.conns) == 1)
	m := wire.Message{Type: wire.TypeConnectionReset, StreamID: st.id, ServiceID: st.wireSvc, ConnectionID: c.id}
	if streamReset {
		m.Type, m.ConnectionID = wire.TypeStreamReset, 0
		s.endStreamLocked(st, err, err)
		s.ev.emit(StreamReset{ServiceID: st.service, StreamID: st.id})
	} else {
		c.terminate(err, err)
		s.removeConnLocked(st, c) // the stream stays: see finishLocalClose
		s.ev.emit(ConnectionReset{ServiceID: st.service, StreamID: st.id, ConnectionID: c.id})
	}
	c.l.pushCtrl(m)
	return true
}

// reject is Conn.Reject's work: the local service could not be reached.
func (s *Session) reject(c *Conn) {
	if s.cfg.Mode != ModeDestination {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// On a V3 stream CONNECTION_RESET, even for its only connection: a
	// source tells it from the STREAM_RESET the service sends for a
	// missing destination (ErrServiceRefused), and the stream stays, as
	// after a local close. V1/V2 streams get STREAM_RESET.
	if s.resetLocked(c, false, fmt.Errorf("%w: rejected", ErrStreamReset)) {
		c.l.log.Info("rejected incoming connection", "service_id", c.service, "stream_id", c.streamID, "conn_id", c.id)
	}
}

// stalled resets a connection whose reader has left its receive buffer
// full for StallTimeout, so that the rest of the tunnel can move again.
func (s *Session) stalled(c *Conn) {
	err := fmt.Errorf("%w: receive buffer full and unread for %v", ErrStreamReset, s.cfg.StallTimeout)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.resetLocked(c, false, err) {
		c.l.log.Warn("reset a connection whose reader stalled the tunnel", "service_id", c.service, "stream_id", c.streamID, "conn_id", c.id, "stall", s.cfg.StallTimeout)
	}
}

// finishLocalClose unregisters a closed connection whose buffered data has
// been sent, and tells the writer which reset to send.
func (s *Session) finishLocalClose(c *Conn) (streamReset bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := c.st
	streamReset = !st.connIDs
	if st.probeConn == c {
		s.dropProbeLocked(st)
	}
	s.removeConnLocked(st, c)
	// A V3 stream outlives its connections: the next connection of the
	// service is a CONNECTION_START on it, as the reference source does. The
	// reference destination drops a second STREAM_START for a service whose
	// stream it still holds, which left new connections hanging.
	if streamReset {
		for _, o := range st.conns { // none on V1/V2, where each stream has one
			o.terminate(io.EOF, ErrStreamReset)
			s.removeConnLocked(st, o)
		}
		if s.streams[st.service] == st {
			delete(s.streams, st.service)
		}
	}
	if streamReset {
		s.ev.emit(StreamReset{ServiceID: st.service, StreamID: st.id})
	} else {
		s.ev.emit(ConnectionReset{ServiceID: st.service, StreamID: st.id, ConnectionID: c.id})
	}
	return streamReset
}

// watchSilence reports whether a new connection should warn when the
// destination stays silent.
func (s *Session) watchSilence() bool {
	return s.cfg.Mode == ModeSource && s.cfg.PeerVersion == 0 && s.cfg.NoReplyWarning > 0 && !s.warnedSilent.Load()
}

// silent runs when a new connection got no reply for NoReplyWarning.
func (s *Session) silent(c *Conn) {
	c.mu.Lock()
	quiet := !c.gotData && !c.gone && !c.closed
	c.mu.Unlock()
	if !quiet {
		return
	}
	s.mu.Lock()
	detected := s.detected
	refused := c.st.probeRefused || s.peer == peerAbsent
	s.mu.Unlock()
	if detected != 0 || refused || !s.warnedSilent.CompareAndSwap(false, true) {
		return
	}
	s.log.Warn("no reply from the destination on a new connection: it may not be connected, its service may be slow, or it may run an older local proxy (set PeerVersion 2 or 1)",
		"service_id", c.service, "stream_id", c.streamID, "conn_id", c.id, "after", s.cfg.NoReplyWarning)
	s.ev.emit(PeerSilent{ServiceID: c.service, StreamID: c.streamID, After: s.cfg.NoReplyWarning})
}

// setPeerLocked records what a source learned of the destination's
// presence and logs changes. left says the destination went away.
func (s *Session) setPeerLocked(l *link, p peerState, how string) {
	if s.cfg.Mode != ModeSource || s.peer == p {
		return
	}
	prev := s.peer
	s.peer = p
	switch {
	case p == peerPresent && prev == peerAbsent:
		l.log.Info("the destination is connected again")
	case p == peerPresent:
		l.log.Info("the destination is connected")
	case how == "left":
		l.log.Warn("the destination left the tunnel: its connections were reset; new ones are reset until it connects again")
	default:
		l.log.Warn("the destination is not connected to the tunnel: connections are reset until it connects")
	}
	s.ev.emit(DestinationStatus{Connected: p == peerPresent})
}

// remoteResetLocked (source) classifies a reset from the destination's
// side before the connections are terminated: of the whole stream st
// (STREAM_RESET, one == nil) or of connection one (CONNECTION_RESET). It
// sets the connections' ResetReason and the destination's presence.
func (s *Session) remoteResetLocked(l *link, st *stream, one *Conn) {
	replied := func(c *Conn) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.gotData
	}
	any := false
	if one != nil {
		any = replied(one)
	} else {
		for _, c := range st.conns {
			any = any || replied(c)
		}
	}
	var reason error
	switch {
	case one != nil:
		// Only the destination sends CONNECTION_RESET for a connection the
		// service saw started: it is there.
		s.setPeerLocked(l, peerPresent, "")
		if !any {
			reason = ErrServiceRefused
		}
	case any && st.connIDs:
		// A V3 destination closes connections with CONNECTION_RESET; a
		// STREAM_RESET of a stream that carried data is the service's,
		// sent when the destination leaves.
		s.setPeerLocked(l, peerAbsent, "left")
	case any:
	case st.connIDs && s.peer != peerPresent:
		reason = ErrPeerNotConnected
		s.setPeerLocked(l, peerAbsent, "")
	default:
		reason = ErrResetBeforeReply
	}
	if reason == nil {
		return
	}
	set := func(c *Conn) {
		c.mu.Lock()
		if !c.gone && c.reason == nil {
			c.reason = reason
		}
		c.mu.Unlock()
	}
	if one != nil {
		set(one)
		return
	}
	for _, c := range st.conns {
		set(c)
	}
}

// namedStreamOpenLocked (destination) reports whether a stream with a
// service ID has an open connection.
func (s *Session) namedStreamOpenLocked() bool {
	for _, st := range s.streams {
		if st.wireSvc != "" && len(st.conns) > 0 {
			return true
		}
	}
	return false
}

// v1RetryEligibleLocked reports whether the first connection of the new
// stream st gets a V1 retry when its destination stays silent.
func (s *Session) v1RetryEligibleLocked(st *stream) bool {
	return s.cfg.PeerVersion == 0 && s.cfg.V1Retry > 0 && st.wireSvc != "" && s.detected == 0 &&
		!s.answered[st.service] && !s.retried[st.service]
}

// retryV1 runs when the first connection of a service got nothing for
// V1Retry: it starts the V1 retry, which the writer sends (STREAM_START
// without service ID, then the replayed data; see writeConn).
func (s *Session) retryV1(c *Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := c.st
	if s.stopped || s.streams[st.service] != st || st.conns[c.id] != c || st.wireSvc == "" || s.detected != 0 ||
		s.answered[st.service] || s.retried[st.service] || st.probeID != 0 || isClosed(c.l.done) || s.link != c.l {
		return
	}
	c.mu.Lock()
	if c.gotData || c.gone || c.closed || !c.replayOn {
		c.mu.Unlock()
		return
	}
	s.nextStreamID++
	if s.nextStreamID <= 0 {
		s.nextStreamID = 1
	}
	pid := s.nextStreamID
	s.retried[st.service] = true
	st.probeID, st.probeConn = pid, c
	st.probeAt = time.Now()
	c.probeID, c.probePending = pid, true
	c.retryTimer = nil
	push := !c.queued
	c.queued = true
	sent := len(c.replay)
	c.mu.Unlock()
	c.l.log.Warn("no reply at all from the destination on the first connection of the service: retrying it in V1 framing beside the V3 stream (the AWS IoT Device Client answers only in V1 framing); the first to answer is kept; set PeerVersion to skip this",
		"service_id", st.service, "stream_id", st.id, "retry_stream_id", pid, "after", s.cfg.V1Retry, "replayed_bytes", sent)
	if push {
		c.l.pushReady(c)
	}
}

// probeOwnerLocked returns the stream whose V1 retry has stream ID id.
func (s *Session) probeOwnerLocked(id int32) *stream {
	for _, st := range s.streams {
		if st.probeID != 0 && st.probeID == id {
			return st
		}
	}
	return nil
}

// dropProbeLocked ends st's V1 retry, if any: it is reset on the wire
// unless the writer never started it.
func (s *Session) dropProbeLocked(st *stream) {
	if st.probeID == 0 {
		return
	}
	pid, c := st.probeID, st.probeConn
	st.probeID, st.probeConn = 0, nil
	if c == nil {
		return
	}
	c.mu.Lock()
	pending := c.probePending
	c.probeID, c.probePending = 0, false
	c.mu.Unlock()
	if !pending {
		c.l.pushCtrl(wire.Message{Type: wire.TypeStreamReset, StreamID: pid})
	}
}

// probeRefusedLocked: the destination reset st's V1 retry, so it speaks
// V2/V3 and the V3 stream goes on waiting for its reply.
func (s *Session) probeRefusedLocked(l *link, st *stream) {
	c := st.probeConn
	st.probeID, st.probeConn = 0, nil
	st.probeRefused = true
	if c != nil {
		c.mu.Lock()
		c.probeID, c.probePending = 0, false
		c.mu.Unlock()
	}
	s.setPeerLocked(l, peerPresent, "")
	l.log.Info("the destination refused the V1 retry, so it speaks V2/V3: the connection stays on its V3 stream", "service_id", st.service, "stream_id", st.id)
}

// probeAnsweredLocked: the destination answered st's V1 retry: the
// connection moves to the retry's stream and the session to V1.
func (s *Session) probeAnsweredLocked(l *link, st *stream) {
	c, pid := st.probeConn, st.probeID
	old := st.id
	st.probeID, st.probeConn = 0, nil
	if c == nil {
		return
	}
	c.mu.Lock()
	c.probeID, c.probePending = 0, false
	c.mu.Unlock()
	l.pushCtrl(wire.Message{Type: wire.TypeStreamReset, StreamID: old, ServiceID: st.wireSvc})
	st.id = pid
	s.detectedLocked(l, st, 1, "the destination answered the V1 retry and not the V3 stream: it answers only in V1 framing (as the AWS IoT Device Client does); switched to V1, one connection per tunnel; set PeerVersion 1 to skip this")
	s.answered[st.service] = true
	s.setPeerLocked(l, peerPresent, "")
}

// rehomeWindow bounds how soon after the V1 retry a reset of the whole
// stream counts as the destination dropping its connection over it, and
// how long the source keeps starting the connection again in V1 framing
// while the destination reconnects.
const (
	rehomeWindow = 2 * time.Second
	rehomeFor    = 15 * time.Second
	rehomeDelay  = 300 * time.Millisecond
)

// rehomeLocked (source) handles a STREAM_RESET of st that follows its V1
// retry before any reply. The AWS IoT Device Client does that: a V1-framed
// STREAM_START while it holds a V3 stream makes it drop its WebSocket and
// reconnect, ready for V1; the service resets both streams meanwhile. So
// the session switches to V1 and starts the connection again, in V1
// framing, replaying what was sent, until the destination takes it (the
// service resets a STREAM_START while no destination is connected) or
// rehomeFor passed. It reports whether it kept the connection.
func (s *Session) rehomeLocked(l *link, st *stream) bool {
	c := st.conns[1]
	if c == nil || len(st.conns) != 1 || s.cfg.PeerVersion != 0 {
		return false
	}
	now := time.Now()
	switch {
	case !st.rehomeAt.IsZero():
		if now.Sub(st.rehomeAt) > rehomeFor {
			return false
		}
	case st.probeAt.IsZero() || now.Sub(st.probeAt) > rehomeWindow:
		return false
	}
	c.mu.Lock()
	ok := !c.gotData && !c.gone && !c.closed && c.replayOn
	c.mu.Unlock()
	if !ok {
		return false
	}
	first := st.rehomeAt.IsZero()
	if first {
		st.rehomeAt = now
		s.dropProbeLocked(st)
		st.probeID, st.probeConn = 0, nil
		s.detectedLocked(l, st, 1, "the destination dropped its connection when it got the V1 retry, as the AWS IoT Device Client does to change protocol version: switched to V1 (one connection per tunnel); the connection starts again in V1 framing once it is back; set PeerVersion 1 to skip this")
	}
	st.wireSvc, st.connIDs = "", false
	time.AfterFunc(rehomeDelay, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.stopped || s.streams[st.service] != st || st.conns[1] != c {
			return
		}
		s.nextStreamID++
		if s.nextStreamID <= 0 {
			s.nextStreamID = 1
		}
		st.id = s.nextStreamID
		c.mu.Lock()
		if c.gone || c.closed {
			c.mu.Unlock()
			return
		}
		c.restart = true
		push := !c.queued
		c.queued = true
		c.mu.Unlock()
		if push {
			c.l.pushReady(c)
		}
	})
	return true
}
