package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/sectun/sectun/internal/chanlisten"
	"github.com/sectun/sectun/internal/notify"
	"github.com/sectun/sectun/internal/token"
)

var (
	// ErrNotStarted reports a call that needs Start first.
	ErrNotStarted = errors.New("broker: not started")
	// ErrStarted reports a second Start.
	ErrStarted = errors.New("broker: already started")
)

// Listener IDs, as mochi and the logs know them.
const (
	listenerTCP  = "tcp"
	listenerTLS  = "tls"
	listenerConn = "conn"
)

// Broker is the embedded MQTT broker. It is a notify.Publisher: NotifyTunnel
// publishes straight into the broker, without a network round trip.
type Broker struct {
	cfg        Config
	log        *slog.Logger
	srv        *mqtt.Server
	pids       *packetIDHook // see packetid.go
	lim        *limiter      // see limits.go
	takeovers  *takeoverHook // see takeover.go
	tlsCfg     *tls.Config   // nil without a TLS listener
	users      map[string]User
	adminCerts map[string]bool
	anonymous  map[string]bool // listener ID -> anonymous clients allowed; fixed by Start

	mu        sync.RWMutex // guards state; NotifyTunnel holds R while publishing
	state     int          // stateNew, stateStarted, stateClosed
	lns       []*netListener
	conns     *chanlisten.Listener
	stopAfter func() bool // unregisters Start's ctx callback

	closeOnce sync.Once
	done      chan struct{} // closed when Close has finished
}

const (
	stateNew = iota
	stateStarted
	stateClosed
)

var _ notify.Publisher = (*Broker)(nil)

// New checks cfg and loads its TLS material; Start opens the listeners.
func New(cfg Config) (*Broker, error) {
	cfg.setDefaults()
	if err := cfg.check(); err != nil {
		return nil, err
	}
	b := &Broker{
		cfg:        cfg,
		log:        cfg.Logger,
		users:      make(map[string]User, len(cfg.Users)),
		adminCerts: make(map[string]bool, len(cfg.AdminCertNames)),
		anonymous:  map[string]bool{},
		done:       make(chan struct{}),
	}
	for _, u := range cfg.Users {
		b.users[u.Name] = u
	}
	for _, n := range cfg.AdminCertNames {
		b.adminCerts[n] = true
	}
	if cfg.TLSAddr != "" {
		t, err := cfg.serverTLS()
		if err != nil {
			return nil, err
		}
		b.tlsCfg = t
	}

	caps := mqtt.NewDefaultServerCapabilities()
	// Our limiter bounds connections; mochi's bound (on clients past
	// CONNECT) stays out of its way.
	caps.MaximumClients = math.MaxInt64
	caps.MaximumSessionExpiryInterval = uint32(min(cfg.SessionExpiry/time.Second, 1<<32-1))
	// Notifications are rare and small: small per-client queues bound memory
	// (mochi allocates the outbound queue up front for every client).
	caps.MaximumClientWritesPending = 64
	caps.MaximumInflight = 64
	if cfg.MaxQueuedPerSession > 0 {
		caps.MaximumInflight = uint16(min(cfg.MaxQueuedPerSession, math.MaxUint16))
	}
	caps.ReceiveMaximum = 16
	caps.MaximumPacketSize = 64 << 10
	caps.TopicAliasMaximum = 16
	// A retained notification would hand a used token to every new
	// subscriber; nothing else here needs retained messages.
	caps.RetainAvailable = 0

	b.srv = mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		InlineClient:           true,
		Logger:                 slog.New(quieter{b.log.Handler()}).With("component", "mqtt"),
		SysTopicResendInterval: 60,
	})
	b.lim = newLimiter(b)
	for _, h := range []mqtt.Hook{&authHook{b: b}, &limitHook{l: b.lim}} {
		if err := b.srv.AddHook(h, nil); err != nil {
			return nil, fmt.Errorf("broker: %w", err)
		}
	}
	b.pids = newPacketIDHook(b)
	b.takeovers = newTakeoverHook(b, int(caps.MaximumInflight))
	for _, h := range []mqtt.Hook{b.pids, b.takeovers} {
		if err := b.srv.AddHook(h, nil); err != nil {
			return nil, fmt.Errorf("broker: %w", err)
		}
	}
	return b, nil
}

// Start opens the listeners and starts serving. The broker runs until
// Close, or until ctx is done (which closes it). Errors (an address in
// use, ...) leave the broker unstarted and closed.
func (b *Broker) Start(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case stateStarted:
		return ErrStarted
	case stateClosed:
		return notify.ErrClosed
	}
	var lns []*netListener
	fail := func(err error) error {
		for _, l := range lns {
			l.ln.Close()
		}
		b.state = stateClosed
		return err
	}
	if !b.cfg.DisableTCP {
		ln, err := net.Listen("tcp", b.cfg.Addr)
		if err != nil {
			return fail(fmt.Errorf("broker: MQTT listener: %w", err))
		}
		anon := anonymousAllowed(ln.Addr().String(), b.cfg.NoAnonymous)
		lns = append(lns, newNetListener(listenerTCP, ln, anon, b.cfg.ConnectTimeout, b.lim, b.log))
		if ip := ln.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
			b.log.Warn("broker: plain MQTT listener is not on loopback: passwords and tokens cross the network in clear; prefer the TLS listener", "addr", ln.Addr().String())
		}
	}
	if b.cfg.TLSAddr != "" {
		ln, err := net.Listen("tcp", b.cfg.TLSAddr)
		if err != nil {
			return fail(fmt.Errorf("broker: MQTT TLS listener: %w", err))
		}
		anon := anonymousAllowed(ln.Addr().String(), b.cfg.NoAnonymous)
		lns = append(lns, newNetListener(listenerTLS, tls.NewListener(ln, b.tlsCfg), anon, b.cfg.ConnectTimeout, b.lim, b.log))
	}
	b.conns = chanlisten.New(nil, 64)
	// Connections handed over by ServeConn come from a public port: never
	// anonymous, whatever their remote address.
	lns = append(lns, newNetListener(listenerConn, b.conns, false, b.cfg.ConnectTimeout, b.lim, b.log))
	for _, l := range lns {
		l.disconnect = b.disconnectClients
		b.anonymous[l.id] = l.anonymous
		if err := b.srv.AddListener(l); err != nil {
			b.conns.Close()
			return fail(fmt.Errorf("broker: %w", err))
		}
	}
	if err := b.srv.Serve(); err != nil {
		b.conns.Close()
		return fail(fmt.Errorf("broker: %w", err))
	}
	b.lns = lns
	b.state = stateStarted
	for _, l := range lns {
		if l.id != listenerConn {
			b.log.Info("broker: MQTT listening", "listener", l.id, "addr", l.Address(), "anonymous", l.anonymous)
		}
	}
	b.stopAfter = context.AfterFunc(ctx, func() { b.Close() })
	return nil
}

// Addr returns the plain listener's address, nil if it is off or the
// broker is not started.
func (b *Broker) Addr() net.Addr { return b.addr(listenerTCP) }

// AnonymousAddrs returns the addresses of the listeners that accept
// anonymous clients (loopback ones, unless Config.NoAnonymous), for
// banners and logs.
func (b *Broker) AnonymousAddrs() []net.Addr {
	b.mu.RLock()
	defer b.mu.RUnlock()
	var addrs []net.Addr
	for _, l := range b.lns {
		if l.anonymous && l.id != listenerConn {
			addrs = append(addrs, l.ln.Addr())
		}
	}
	return addrs
}

// TLSAddr returns the TLS listener's address, nil if there is none or the
// broker is not started.
func (b *Broker) TLSAddr() net.Addr { return b.addr(listenerTLS) }

func (b *Broker) addr(id string) net.Addr {
	b.mu.RLock()
	defer b.mu.RUnlock()
	for _, l := range b.lns {
		if l.id == id {
			return l.ln.Addr()
		}
	}
	return nil
}

// ServeConn hands an accepted connection to the broker, which then owns
// it: typically a *tls.Conn whose handshake the caller completed on a
// shared port after choosing MQTT by ALPN ("x-amzn-mqtt-ca"). Its client
// certificate, if verified, authenticates it (the net.Conn must expose
// ConnectionState, as *tls.Conn does); anonymous clients are refused.
// ServeConn waits for room in a 64-connection backlog until ctx is done;
// on error it closes c.
func (b *Broker) ServeConn(ctx context.Context, c net.Conn) error {
	b.mu.RLock()
	state, conns := b.state, b.conns
	b.mu.RUnlock()
	var err error
	switch {
	case c == nil:
		return errors.New("broker: ServeConn with a nil connection")
	case state == stateNew:
		err = ErrNotStarted
	case state == stateClosed:
		err = notify.ErrClosed
	default:
		if err = conns.Deliver(ctx, c); errors.Is(err, net.ErrClosed) {
			err = notify.ErrClosed
		}
	}
	if err != nil {
		c.Close()
	}
	return err
}

// NotifyTunnel publishes n on its thing's notify topic at QoS 1 to the
// current subscribers, and queues it for disconnected clients holding a
// persistent session subscribed to it. It does not wait for devices'
// acknowledgements (the broker retransmits). With no subscriber the
// notification is lost, as on AWS; that is logged, not an error.
func (b *Broker) NotifyTunnel(_ context.Context, n notify.Notification) error {
	payload, err := n.Marshal()
	if err != nil {
		return err
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	switch b.state {
	case stateNew:
		return ErrNotStarted
	case stateClosed:
		return notify.ErrClosed
	}
	topic := notify.NotifyTopic(b.cfg.TopicPrefix, n.ThingName)
	subs := b.srv.Topics.Subscribers(topic)
	if len(subs.Subscriptions)+len(subs.Shared)+len(subs.InlineSubscriptions) == 0 {
		attrs := []any{"thing", n.ThingName, "token", token.Short(n.Token), "topic", topic}
		if n.TunnelID != "" {
			attrs = append(attrs, "tunnel_id", n.TunnelID)
		}
		b.log.Info("broker: no device subscribed to the notify topic, notification not delivered", attrs...)
	}
	if err := b.srv.Publish(topic, payload, false, 1); err != nil {
		return fmt.Errorf("broker: publish to %s: %w", topic, err)
	}
	return nil
}

// Stats returns the connection, session and queue counts, the limits,
// and the refusals and drops by reason.
func (b *Broker) Stats() Stats { return b.lim.stats() }

// Done is closed once the broker has closed (by Close, or by the end of
// Start's context) and all its goroutines are gone.
func (b *Broker) Done() <-chan struct{} { return b.done }

// Close disconnects every client, stops the listeners and waits for all
// goroutines. It is idempotent and safe to call before Start.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		defer close(b.done)
		b.mu.Lock()
		started := b.state == stateStarted
		b.state = stateClosed
		lns, stop := b.lns, b.stopAfter
		b.mu.Unlock()
		if stop != nil {
			stop()
		}
		if !started {
			return
		}
		b.srv.Close() // closes the listeners (and so b.conns) and waits for mochi's clients
		for _, l := range lns {
			l.wait()
		}
	})
	return nil
}

// disconnectClients disconnects the clients of listener id, as mochi's
// closeListenerClients does, without its Clients.GetByListener: that
// takes the clients' read lock twice (Len inside RLock), which deadlocks
// when a disconnecting client waits to delete itself in between (seen as
// a hang of Close).
func (b *Broker) disconnectClients(id string) {
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Net.Listener == id && !cl.Closed() {
			b.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}

// quieter logs mochi's Info records (start-up chatter) at Debug.
type quieter struct{ h slog.Handler }

func (q quieter) Enabled(ctx context.Context, l slog.Level) bool {
	if l == slog.LevelInfo {
		l = slog.LevelDebug
	}
	return q.h.Enabled(ctx, l)
}

func (q quieter) Handle(ctx context.Context, r slog.Record) error {
	if r.Level == slog.LevelInfo {
		r.Level = slog.LevelDebug
	}
	return q.h.Handle(ctx, r)
}

func (q quieter) WithAttrs(a []slog.Attr) slog.Handler { return quieter{q.h.WithAttrs(a)} }
func (q quieter) WithGroup(g string) slog.Handler      { return quieter{q.h.WithGroup(g)} }
