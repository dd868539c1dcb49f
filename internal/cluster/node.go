package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sectun/sectun/internal/server/relay"
	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/token"
)

var (
	// ErrConfig reports an invalid Config.
	ErrConfig = errors.New("cluster: invalid config")
	errNoCert = errors.New("cluster: link peer sent no certificate")
	errPin    = errors.New("cluster: link certificate does not match the node's fingerprint in the database")
)

// channel is the LISTEN/NOTIFY channel of cluster wake-ups.
const channel = "sectun_cluster"

// Config configures a Node.
type Config struct {
	// Store is the shared database. Required.
	Store store.ClusterStore
	// NodeID names this node; stable across restarts. Required.
	NodeID string
	// Listen is the link listener's address. Required.
	Listen string
	// Advertise is the host:port other nodes dial; default Listen (whose
	// host must then not be unspecified).
	Advertise string
	// Plaintext turns TLS off on the link (private networks only).
	Plaintext bool
	// LeaseTTL is the node lease; default 10 s, renewed every third.
	LeaseTTL time.Duration
	// PingInterval is the link ping; a link silent for three is ended.
	// Default 1 s.
	PingInterval time.Duration
	// Publish delivers an outbox message (nil: the outbox is not drained
	// by this node).
	Publish func(ctx context.Context, payload []byte) error
	// OutboxAge is how old an outbox message must be before any node's
	// drainer takes it (its writer publishes it first); default 3 s.
	OutboxAge time.Duration
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
}

type key struct {
	tunnel string
	mode   store.Mode
}

// held is a local end's claim.
type held struct {
	epoch     int64
	tokenHash []byte
	other     store.PeerRoute
}

// Node is this process's membership in a cluster: its lease, the link
// listener and dialer, the handshake Authorizer for the relay, and the
// Peers the API uses to end peers on every node.
type Node struct {
	cfg   Config
	st    store.ClusterStore
	log   *slog.Logger
	id    *identity
	ln    net.Listener
	inc   int64
	relay *relay.Relay

	mu    sync.Mutex
	ends  map[key]held
	links map[string]map[*link]store.Mode // tunnel -> link -> local mode

	draining atomic.Bool
	wg       sync.WaitGroup
	runCtx   context.Context
	stop     context.CancelFunc
	lastOK   atomic.Int64 // unix nanos of the last lease renewal
	resyncs  atomic.Int64
}

// New binds the link listener, makes the link identity and registers the
// node (a restarted node's rows are corrected then). Call SetRelay, then
// Run.
func New(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.Store == nil || cfg.NodeID == "" || cfg.Listen == "" {
		return nil, fmt.Errorf("%w: Store, NodeID and Listen are required", ErrConfig)
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 10 * time.Second
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = time.Second
	}
	if cfg.OutboxAge <= 0 {
		cfg.OutboxAge = 3 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("node_id", cfg.NodeID)
	n := &Node{cfg: cfg, st: cfg.Store, log: log, ends: map[key]held{}, links: map[string]map[*link]store.Mode{}}
	n.runCtx, n.stop = context.WithCancel(context.Background())
	var err error
	if n.id, err = newIdentity(cfg.NodeID); err != nil {
		return nil, fmt.Errorf("cluster: link identity: %w", err)
	}
	n.ln, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("cluster: --cluster-listen: %w", err)
	}
	adv := cfg.Advertise
	if adv == "" {
		host, port, _ := net.SplitHostPort(n.ln.Addr().String())
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			n.ln.Close()
			return nil, fmt.Errorf("%w: --cluster-listen %s is on all addresses: add --cluster-advertise HOST:PORT (the address other nodes dial)", ErrConfig, cfg.Listen)
		}
		adv = net.JoinHostPort(host, port)
	} else if _, _, err := net.SplitHostPort(adv); err != nil {
		n.ln.Close()
		return nil, fmt.Errorf("%w: --cluster-advertise %q: %v", ErrConfig, adv, err)
	}
	n.cfg.Advertise = adv
	var sha []byte
	if !cfg.Plaintext {
		sha = n.id.sha256
	} else {
		log.Warn("cluster link is plaintext: tunnel data between nodes is neither encrypted nor authenticated; use it only on a private network")
	}
	n.inc, err = n.st.RegisterNode(ctx, store.Node{ID: cfg.NodeID, LinkAddr: adv, LinkCertSHA256: sha}, cfg.LeaseTTL)
	if err != nil {
		n.ln.Close()
		return nil, fmt.Errorf("cluster: registering node %s: %w", cfg.NodeID, err)
	}
	n.lastOK.Store(time.Now().UnixNano())
	log.Info("cluster node registered", "incarnation", n.inc, "link", adv, "tls", !cfg.Plaintext)
	return n, nil
}

// SetRelay gives the node the relay it attaches link ends to (the relay
// is made with the node as its Authorizer, hence the second step).
func (n *Node) SetRelay(r *relay.Relay) { n.relay = r }

// LinkAddr is the link listener's bound address.
func (n *Node) LinkAddr() net.Addr { return n.ln.Addr() }

// Incarnation is this process's incarnation of the node.
func (n *Node) Incarnation() int64 { return n.inc }

// Draining reports whether Drain was called.
func (n *Node) Draining() bool { return n.draining.Load() }

// Run serves the link listener and runs the lease, the wake-up listener
// and the periodic jobs until ctx ends or Close is called.
func (n *Node) Run(ctx context.Context) {
	stop := context.AfterFunc(ctx, n.stop)
	defer stop()
	ctx = n.runCtx
	n.wg.Add(4)
	go func() { defer n.wg.Done(); n.acceptLoop() }()
	go func() { defer n.wg.Done(); n.leaseLoop(ctx) }()
	go func() {
		defer n.wg.Done()
		n.st.Listen(ctx, channel, func() { go n.resync(ctx) }, n.wake)
	}()
	go func() { defer n.wg.Done(); n.jobs(ctx) }()
	<-ctx.Done()
}

// Drain marks the node draining in the database (its /healthz then
// answers 503) and waits grace, or until ctx ends.
func (n *Node) Drain(ctx context.Context, grace time.Duration) {
	n.draining.Store(true)
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	if err := n.st.SetDraining(c, n.cfg.NodeID, true); err != nil {
		n.log.Warn("marking node draining", "err", err)
	}
	cancel()
	n.log.Info("draining", "grace", grace.String())
	select {
	case <-ctx.Done():
	case <-time.After(grace):
	}
}

// Close stops the node: the listener and links close, the lease ends and
// the node's rows are marked disconnected. Call it after the relay's
// Shutdown.
func (n *Node) Close() {
	n.stop()
	n.ln.Close()
	n.mu.Lock()
	var all []*link
	for _, ls := range n.links {
		for l := range ls {
			all = append(all, l)
		}
	}
	n.mu.Unlock()
	for _, l := range all {
		l.end()
	}
	n.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.st.LeaveNode(ctx, n.cfg.NodeID, n.inc); err != nil {
		n.log.Warn("leaving the cluster", "err", err)
	}
}

func (n *Node) leaseLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c, cancel := context.WithTimeout(ctx, n.cfg.LeaseTTL/3)
		err := n.st.RenewLease(c, n.cfg.NodeID, n.inc, n.cfg.LeaseTTL)
		cancel()
		if err != nil {
			if errors.Is(err, store.ErrLeaseLost) {
				n.log.Error("node lease lost: another process registered this node ID", "err", err)
			} else if ctx.Err() == nil {
				n.log.Warn("renewing node lease", "err", err)
			}
			continue
		}
		now := time.Now().UnixNano()
		if gap := time.Duration(now - n.lastOK.Swap(now)); gap > n.cfg.LeaseTTL {
			// Frozen or cut off for longer than the lease: other nodes may
			// have taken our peers over.
			n.log.Warn("lease renewed after a gap longer than its ttl: resyncing", "gap", gap.String())
			go n.resync(ctx)
		}
	}
}

func (n *Node) jobs(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n.cfg.Publish != nil {
			c, cancel := context.WithTimeout(ctx, 10*time.Second)
			k, err := n.st.DrainOutbox(c, n.cfg.OutboxAge, 100, func(m store.OutboxMessage) error {
				return n.cfg.Publish(c, m.Payload)
			})
			cancel()
			if err != nil && ctx.Err() == nil {
				n.log.Warn("draining the notification outbox", "err", err)
			} else if k > 0 {
				n.log.Info("published notifications left in the outbox", "count", k)
			}
		}
		if i%int(max(1, n.cfg.LeaseTTL/time.Second)) == 0 {
			c, cancel := context.WithTimeout(ctx, 10*time.Second)
			if k, err := n.st.ExpireDeadPeers(c); err == nil && k > 0 {
				n.log.Info("marked peers of dead nodes disconnected", "count", k)
			}
			cancel()
		}
		if i%30 == 29 {
			n.resync(ctx)
		}
	}
}

// Authorize implements relay.Authorizer: the handshake is one Claim.
func (n *Node) Authorize(ctx context.Context, req relay.HandshakeRequest) (relay.Grant, error) {
	c := store.Claim{TokenHash: token.Hash(req.AccessToken), Mode: req.Mode, NodeID: n.cfg.NodeID, Incarnation: n.inc, Now: time.Now()}
	if req.ClientToken != "" {
		c.ClientTokenHash = token.Hash(req.ClientToken)
	}
	cl, err := n.st.Claim(ctx, c)
	if errors.Is(err, store.ErrRefused) {
		msg := err.Error()
		if i := strings.Index(msg, store.ErrRefused.Error()+": "); i >= 0 {
			msg = msg[i+len(store.ErrRefused.Error())+2:]
		}
		return relay.Grant{}, fmt.Errorf("%w: %s", relay.ErrUnauthorized, msg)
	}
	if err != nil {
		return relay.Grant{}, fmt.Errorf("%w: %v", relay.ErrUnavailable, err)
	}
	k := key{cl.TunnelID, req.Mode}
	n.mu.Lock()
	n.ends[k] = held{epoch: cl.Epoch, tokenHash: c.TokenHash, other: cl.Other}
	n.mu.Unlock()
	if p := cl.Previous; p.Connected && p.Node.ID != n.cfg.NodeID {
		// The old connection of this end is on another node: wake it.
		if err := n.st.Notify(ctx, channel, fmt.Sprintf("replace|%s|%s|%d", cl.TunnelID, req.Mode, p.Epoch)); err != nil {
			n.log.Warn("notifying the replaced peer's node", "tunnel_id", cl.TunnelID, "err", err)
		}
	}
	return relay.Grant{TunnelID: cl.TunnelID, Services: cl.Services, Epoch: uint64(cl.Epoch)}, nil
}

// PeerChanged implements relay.Authorizer: a local end that connected
// dials the other end's node when it is elsewhere; one that left releases
// its row (if its epoch is still current) and ends its links.
func (n *Node) PeerChanged(ctx context.Context, tunnelID string, mode store.Mode, connected bool) {
	k := key{tunnelID, mode}
	n.mu.Lock()
	h, ok := n.ends[k]
	if !connected {
		delete(n.ends, k)
	}
	var ends []*link
	if !connected {
		for l, m := range n.links[tunnelID] {
			if m == mode {
				ends = append(ends, l)
			}
		}
	}
	n.mu.Unlock()
	if !ok {
		return
	}
	if connected {
		if h.other.Connected && h.other.Node.ID != n.cfg.NodeID {
			// The first attempt runs here: the relay starts reading the
			// new peer only after PeerChanged returns, so its first
			// frames find the link attached.
			if status, _ := n.dialOnce(k, h); status != "ok" {
				n.wg.Add(1)
				go func() { defer n.wg.Done(); n.dial(k, h) }()
			}
		}
		return
	}
	for _, l := range ends {
		l.end()
	}
	if _, err := n.st.ReleasePeer(ctx, tunnelID, mode, h.epoch); err != nil {
		n.log.Warn("recording a peer's disconnection", "tunnel_id", tunnelID, "mode", mode, "err", err)
	}
}

// CloseTunnel implements api.Peers: close here, and wake every node.
func (n *Node) CloseTunnel(tunnelID, reason string) {
	n.relay.CloseTunnel(tunnelID, reason)
	n.notifyAll("close|" + tunnelID + "|" + reason)
}

// DisconnectPeer implements api.Peers: disconnect here, and wake every
// node.
func (n *Node) DisconnectPeer(tunnelID string, mode store.Mode, reason string) {
	n.relay.DisconnectPeer(tunnelID, mode, reason)
	n.notifyAll("disconnect|" + tunnelID + "|" + string(mode) + "|" + reason)
}

func (n *Node) notifyAll(payload string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.st.Notify(ctx, channel, payload); err != nil {
		n.log.Warn("notifying the cluster", "err", err)
	}
}

// wake handles a notification.
func (n *Node) wake(payload string) {
	f := strings.SplitN(payload, "|", 4)
	switch {
	case f[0] == "close" && len(f) >= 2:
		reason := ""
		if len(f) > 2 {
			reason = strings.Join(f[2:], "|")
		}
		n.relay.CloseTunnel(f[1], reason)
	case f[0] == "disconnect" && len(f) == 4:
		n.relay.DisconnectPeer(f[1], store.Mode(f[2]), f[3])
	case f[0] == "replace" && len(f) == 4:
		epoch, _ := strconv.ParseInt(f[3], 10, 64)
		k := key{f[1], store.Mode(f[2])}
		n.mu.Lock()
		h, ok := n.ends[k]
		n.mu.Unlock()
		if ok && h.epoch <= epoch {
			n.relay.DisconnectPeer(k.tunnel, k.mode, "replaced by a new connection")
		}
	}
}

// resync re-reads the rows of the ends held here (after the wake-up
// listener reconnected, or the lease came back after a gap): an end whose
// row moved on, whose tunnel closed or whose token was rotated is closed.
func (n *Node) resync(ctx context.Context) {
	n.resyncs.Add(1)
	n.mu.Lock()
	ends := make(map[key]held, len(n.ends))
	for k, h := range n.ends {
		ends[k] = h
	}
	n.mu.Unlock()
	for k, h := range ends {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		r, err := n.st.Route(c, k.tunnel, k.mode)
		var t *store.Tunnel
		if err == nil {
			t, err = n.st.Get(c, k.tunnel)
		}
		cancel()
		switch {
		case errors.Is(err, store.ErrNotFound):
			n.relay.CloseTunnel(k.tunnel, "tunnel deleted")
		case err != nil:
			return // the database is away: try again later
		case r.Epoch != h.epoch || r.Node.ID != n.cfg.NodeID:
			n.relay.DisconnectPeer(k.tunnel, k.mode, "replaced by a new connection")
		case t.Status != store.StatusOpen:
			n.relay.CloseTunnel(k.tunnel, "tunnel closed")
		case !equal(t.Peer(k.mode).TokenHash, h.tokenHash):
			n.relay.DisconnectPeer(k.tunnel, k.mode, "access token rotated")
		}
	}
}

// dial links local end k to the other end's node. It retries while the
// other node has not registered its peer yet ("not-here"), for a few
// seconds, as long as k's claim is current.
func (n *Node) dial(k key, h held) {
	deadline := time.Now().Add(5 * time.Second)
	backoff := 20 * time.Millisecond
	for attempt := 0; ; attempt++ {
		n.mu.Lock()
		cur, ok := n.ends[k]
		n.mu.Unlock()
		if !ok || cur.epoch != h.epoch {
			return
		}
		status, err := n.dialOnce(k, h)
		if status == "ok" {
			return
		}
		if errors.Is(err, errPin) {
			// Retrying cannot help: the certificate is not the one the
			// node's row publishes (a stale or tampered row, or another
			// process at that address).
			n.log.Warn("link refused: the other node's certificate does not match the fingerprint in its row",
				"tunnel_id", k.tunnel, "mode", k.mode, "node", h.other.Node.ID, "link_addr", h.other.Node.LinkAddr)
			return
		}
		if time.Now().After(deadline) {
			n.log.Warn("could not link to the other end's node", "tunnel_id", k.tunnel, "mode", k.mode,
				"node", h.other.Node.ID, "status", status, "err", err)
			return
		}
		if status == "stale" {
			// The other end moved on (reconnected elsewhere, or is newer):
			// its node will dial us if it is connected, or read again.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			r, rerr := n.st.Route(ctx, k.tunnel, otherMode(k.mode))
			cancel()
			if rerr != nil || !r.Connected || r.Node.ID == n.cfg.NodeID || r.Epoch == h.other.Epoch {
				return
			}
			h.other = r
		}
		time.Sleep(backoff)
		backoff = min(backoff*2, 500*time.Millisecond)
	}
}

func otherMode(m store.Mode) store.Mode {
	if m == store.ModeSource {
		return store.ModeDestination
	}
	return store.ModeSource
}

// dialOnce makes one link attempt; it returns the acceptor's status ("ok",
// "stale", "not-here", "refused") or "" with the dial error.
func (n *Node) dialOnce(k key, h held) (string, error) {
	d := net.Dialer{Timeout: 3 * time.Second, Control: linkSockopts}
	raw, err := d.Dial("tcp", h.other.Node.LinkAddr)
	if err != nil {
		return "", err
	}
	var conn net.Conn = raw
	if len(h.other.Node.LinkCertSHA256) > 0 {
		tc := tls.Client(raw, n.id.clientConfig(h.other.Node.LinkCertSHA256))
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			raw.Close()
			return "refused", err
		}
		conn = tc
	} else if !n.cfg.Plaintext {
		raw.Close()
		return "refused", fmt.Errorf("cluster: node %s publishes no link certificate (plaintext link) and this node requires TLS", h.other.Node.ID)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte(linkMagic)); err != nil {
		conn.Close()
		return "", err
	}
	if err := writeJSON(conn, hello{Tunnel: k.tunnel, Mode: k.mode, Epoch: uint64(h.epoch), PeerEpoch: uint64(h.other.Epoch),
		Node: n.cfg.NodeID, Incarnation: n.inc}); err != nil {
		conn.Close()
		return "", err
	}
	l := newLink(conn, n.cfg.PingInterval, n.log.With("tunnel_id", k.tunnel, "mode", k.mode, "link_to", h.other.Node.ID))
	var rep reply
	if err := readJSON(l.br, &rep); err != nil {
		conn.Close()
		return "", err
	}
	if rep.Status != "ok" {
		conn.Close()
		return rep.Status, errors.New(rep.Reason)
	}
	conn.SetDeadline(time.Time{})
	close(l.ready)
	a, err := n.relay.AttachRemote(relay.Remote{TunnelID: k.tunnel, Mode: otherMode(k.mode), Epoch: uint64(h.other.Epoch),
		LocalEpoch: uint64(h.epoch), Peer: l})
	if err != nil {
		// Our local end went or was replaced meanwhile.
		conn.Close()
		return "ok", err
	}
	l.att.Store(a)
	n.addLink(k.tunnel, l, k.mode)
	l.log.Info("link up (dialed)")
	n.wg.Add(1)
	go func() { defer n.wg.Done(); l.run() }()
	return "ok", nil
}

func (n *Node) addLink(tunnel string, l *link, mode store.Mode) {
	n.mu.Lock()
	if n.links[tunnel] == nil {
		n.links[tunnel] = map[*link]store.Mode{}
	}
	n.links[tunnel][l] = mode
	n.mu.Unlock()
	l.onEnd = func() {
		n.mu.Lock()
		delete(n.links[tunnel], l)
		if len(n.links[tunnel]) == 0 {
			delete(n.links, tunnel)
		}
		n.mu.Unlock()
	}
}

func (n *Node) acceptLoop() {
	for {
		c, err := n.ln.Accept()
		if err != nil {
			return
		}
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.accept(c) }()
	}
}

// accept serves one incoming link.
func (n *Node) accept(raw net.Conn) {
	if tc, ok := raw.(*net.TCPConn); ok {
		if sc, err := tc.SyscallConn(); err == nil {
			sc.Control(func(fd uintptr) { setLowat(fd) })
		}
	}
	var conn net.Conn = raw
	if !n.cfg.Plaintext {
		conn = tls.Server(raw, n.id.serverConfig())
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	magic := make([]byte, len(linkMagic))
	l := newLink(conn, n.cfg.PingInterval, n.log)
	if _, err := readFull(l, magic); err != nil || string(magic) != linkMagic {
		conn.Close()
		return
	}
	var hl hello
	if err := readJSON(l.br, &hl); err != nil {
		conn.Close()
		return
	}
	refuse := func(status, reason string) {
		writeJSON(conn, reply{Status: status, Reason: reason})
		conn.Close()
	}
	if hl.Mode != store.ModeSource && hl.Mode != store.ModeDestination || hl.Tunnel == "" || hl.Epoch == 0 {
		refuse("refused", "bad hello")
		return
	}
	if !n.cfg.Plaintext {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		node, err := n.st.GetNode(ctx, hl.Node)
		cancel()
		if err != nil || node.Incarnation != hl.Incarnation || !equal(node.LinkCertSHA256, certSHA256(conn)) {
			n.log.Warn("link refused: the dialer's certificate is not the one its node row publishes", "node", hl.Node, "err", err)
			refuse("refused", "certificate does not match the node's row")
			return
		}
	}
	l.log = n.log.With("tunnel_id", hl.Tunnel, "mode", otherMode(hl.Mode), "link_from", hl.Node)
	a, err := n.relay.AttachRemote(relay.Remote{TunnelID: hl.Tunnel, Mode: hl.Mode, Epoch: hl.Epoch, LocalEpoch: hl.PeerEpoch, Peer: l})
	switch {
	case errors.Is(err, relay.ErrNotHere):
		refuse("not-here", err.Error())
		return
	case err != nil:
		refuse("stale", err.Error())
		return
	}
	l.att.Store(a)
	if err := writeJSON(conn, reply{Status: "ok"}); err != nil {
		l.end()
		a.Detach()
		return
	}
	conn.SetDeadline(time.Time{})
	close(l.ready)
	n.addLink(hl.Tunnel, l, otherMode(hl.Mode))
	l.log.Info("link up (accepted)")
	l.run()
}

func readFull(l *link, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := l.br.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// linkSockopts sets TCP_NOTSENT_LOWAT on a dialed link socket.
func linkSockopts(_, _ string, c syscall.RawConn) error {
	return c.Control(func(fd uintptr) { setLowat(fd) })
}
