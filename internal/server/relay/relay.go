package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/sectun/sectun/internal/ratelimit"
	"github.com/sectun/sectun/internal/token"
	"github.com/sectun/sectun/internal/wsconn"
	"github.com/sectun/sectun/wire"
)

// Mode is one end of a tunnel: wire.Mode (store.Mode is the same type).
type Mode = wire.Mode

// The subprotocols of the three protocol versions.
const (
	SubprotocolV1 = "aws.iot.securetunneling-1.0"
	SubprotocolV2 = "aws.iot.securetunneling-2.0"
	SubprotocolV3 = "aws.iot.securetunneling-3.0"
	// SubprotocolV1Secured is another name of V1, offered by browser
	// clients such as the AWS web SSH sample
	// (aws-samples/aws-iot-securetunneling-web-ssh); it is accepted
	// wherever V1 is, and echoed as offered.
	SubprotocolV1Secured = "aws.iot.securedtunneling-1.0"
)

var (
	// ErrUnauthorized is wrapped by Authorizer errors that refuse a
	// handshake (bad, unknown, used or rotated token, wrong mode, closed or
	// expired tunnel). The handshake is answered 401.
	ErrUnauthorized = errors.New("relay: unauthorized")
	// ErrUnavailable is wrapped by Authorizer errors that mean the
	// tunnel's state cannot be reached now (a cluster's database is
	// down). The handshake is answered 503, which clients retry.
	ErrUnavailable = errors.New("relay: service unavailable")
	// ErrConfig reports an invalid Config.
	ErrConfig = errors.New("relay: invalid config")
)

// HandshakeRequest is what a client presented, after the HTTP-level checks.
type HandshakeRequest struct {
	// AccessToken is the client access token (never log it: token.Short).
	AccessToken string
	// ClientToken is the client-token header, "" when absent; when present
	// it matched ^[a-zA-Z0-9-]{32,128}$.
	ClientToken string
	// Mode is the local-proxy-mode query parameter.
	Mode Mode
	// RemoteAddr is the client's address, as http.Request.RemoteAddr.
	RemoteAddr string
	// ChannelID is the channel-id of this WebSocket session, for logs.
	ChannelID string
	// Subprotocol is the subprotocol that will be echoed.
	Subprotocol string
}

// Grant is what an accepted handshake connects to.
type Grant struct {
	// TunnelID identifies the tunnel; both ends' grants must carry the same.
	TunnelID string
	// Services are the tunnel's service IDs (destinationConfig.services),
	// sent in SERVICE_IDS and enforced on every frame; empty means one
	// anonymous service (frames must not carry a service ID).
	Services []string
	// Epoch is the end's fencing token in a cluster (SCALEOUT.md: +1 per
	// accepted handshake of the end); 0 without one. A handshake whose
	// epoch is lower than that of the end it would replace (a remote end
	// attached meanwhile) is refused with 1008, and AttachRemote checks
	// the local end's epoch against Remote.LocalEpoch.
	Epoch uint64
}

// Authorizer decides who may connect. See the package documentation for
// the semantics the relay expects.
type Authorizer interface {
	// Authorize checks the token for this mode and binds or consumes it.
	// Refusals wrap ErrUnauthorized (HTTP 401, the text is shown to the
	// client); other errors give HTTP 500.
	Authorize(ctx context.Context, req HandshakeRequest) (Grant, error)
	// PeerChanged records that an end of a tunnel got (connected) or lost
	// its peer. Calls for a tunnel are serialized.
	PeerChanged(ctx context.Context, tunnelID string, mode Mode, connected bool)
}

// Config configures a Relay. The zero value of every field but Authorizer
// means its default.
type Config struct {
	// Authorizer checks handshakes. Required.
	Authorizer Authorizer
	// Logger receives connection events with keys tunnel_id, channel_id
	// and mode; nil discards.
	Logger *slog.Logger
	// BandwidthLimit caps each tunnel, in each direction, to this many
	// bytes per second of tunnel frames (bursts up to 131076 bytes); 0
	// means no limit.
	BandwidthLimit int64
	// Registerer, when set, receives the relay's Prometheus metrics
	// (tunneld_relay_*). nil registers none.
	Registerer prometheus.Registerer
	// Subprotocols are the accepted protocol versions (SubprotocolV1..V3);
	// default all three. The highest one a client offers is chosen.
	Subprotocols []string
	// Path is the only path served; default "/tunnel".
	Path string
	// MaxRequestSize caps the handshake's request line and headers, in
	// bytes; default 4096, as AWS.
	MaxRequestSize int
	// IdleTimeout drops a peer from which nothing (message, ping or pong)
	// arrived for this long, closing its connection without a close
	// frame; default 60 s (three of the reference proxy's 20 s ping
	// periods); negative disables.
	IdleTimeout time.Duration
	// PingInterval is how often the relay pings each peer, so peers that
	// do not ping themselves still answer within IdleTimeout; default 20 s;
	// negative disables these and the pings every second to a peer whose
	// frames are held up (see the package documentation).
	PingInterval time.Duration
	// WriteTimeout closes a peer that accepts no data for this long while
	// the relay has some for it; default 30 s.
	WriteTimeout time.Duration
	// AuthorizeTimeout bounds one Authorize call; default 10 s.
	AuthorizeTimeout time.Duration
	// HandshakeFailureLimit limits failed handshakes (HTTP 400, 401 and
	// 431) per client address (http.Request.RemoteAddr: put no proxy in
	// front that hides it): once an address used up its burst, its
	// handshakes are answered 429 with Retry-After, before Authorize,
	// until the cool-down ends. Successful handshakes cost nothing. The
	// zero value means 10 failures a minute, bursts of 20, a one-minute
	// cool-down, 10000 addresses remembered, loopback limited too;
	// PerMinute < 0 turns the limit off.
	HandshakeFailureLimit ratelimit.Config
}

// Relay is the /tunnel endpoint and the set of connected peers.
type Relay struct {
	cfg     Config
	log     *slog.Logger
	authz   Authorizer
	subprot []string // accepted, highest version first

	mu      sync.Mutex
	tunnels map[string]*tunnel
	peers   map[*peer]struct{} // every peer whose goroutine runs after install
	remotes map[*Attachment]struct{}
	fences  map[fenceKey]fence
	closing bool
	wg      sync.WaitGroup // ServeHTTP calls past the shutdown check

	// Shutdown: stopping makes readers stop at their next network read;
	// reading counts installed peers whose reader has not yet stopped
	// (flushed what it relayed); drained is closed once every peer has
	// been dropped, which the stopped readers wait for before detaching.
	stopping     atomic.Bool
	reading      sync.WaitGroup
	drained      chan struct{}
	shutdownOnce sync.Once

	totals    counters // folded counters of departed peers
	handshake struct {
		ok       atomic.Int64
		failures [numFailures]atomic.Int64
	}
	violations atomic.Int64
	replaced   atomic.Int64
	failLimit  *ratelimit.Limiter // nil: no limit
}

// fenceKey names a tunnel (mode "") or one end of it.
type fenceKey struct {
	tunnelID string
	mode     Mode
}

// fence refuses handshakes that started before CloseTunnel or
// DisconnectPeer and were authorized before the store changed.
type fence struct {
	at     time.Time
	code   int
	reason string
}

// fenceTTL outlives any handshake: Authorize and the first write are
// bounded by AuthorizeTimeout and WriteTimeout.
func (r *Relay) fenceTTL() time.Duration {
	return r.cfg.AuthorizeTimeout + r.cfg.WriteTimeout + 10*time.Second
}

// New returns a Relay. It fails with ErrConfig if Authorizer is nil or a
// subprotocol is unknown, and with the registerer's error if the metrics
// cannot be registered.
func New(cfg Config) (*Relay, error) {
	if cfg.Authorizer == nil {
		return nil, fmt.Errorf("%w: Authorizer is required", ErrConfig)
	}
	if cfg.BandwidthLimit < 0 {
		return nil, fmt.Errorf("%w: negative BandwidthLimit", ErrConfig)
	}
	if cfg.Path == "" {
		cfg.Path = "/tunnel"
	}
	if cfg.MaxRequestSize <= 0 {
		cfg.MaxRequestSize = 4096
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	if cfg.PingInterval == 0 {
		cfg.PingInterval = 20 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 30 * time.Second
	}
	if cfg.AuthorizeTimeout <= 0 {
		cfg.AuthorizeTimeout = 10 * time.Second
	}
	failLimit, err := ratelimit.New(cfg.HandshakeFailureLimit)
	if err != nil {
		return nil, fmt.Errorf("%w: HandshakeFailureLimit: %w", ErrConfig, err)
	}
	r := &Relay{
		failLimit: failLimit,
		cfg:       cfg,
		log:       cfg.Logger,
		authz:     cfg.Authorizer,
		tunnels:   make(map[string]*tunnel),
		peers:     make(map[*peer]struct{}),
		remotes:   make(map[*Attachment]struct{}),
		fences:    make(map[fenceKey]fence),
		drained:   make(chan struct{}),
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	offered := cfg.Subprotocols
	if len(offered) == 0 {
		offered = []string{SubprotocolV3, SubprotocolV2, SubprotocolV1}
	}
	for _, want := range []string{SubprotocolV3, SubprotocolV2, SubprotocolV1} {
		for _, s := range offered {
			if s == want {
				r.subprot = append(r.subprot, s)
				break
			}
		}
	}
	for _, s := range offered {
		if subprotocolVersion(s) == 0 {
			return nil, fmt.Errorf("%w: unknown subprotocol %q", ErrConfig, s)
		}
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(&collector{r: r}); err != nil {
			return nil, fmt.Errorf("relay: registering metrics: %w", err)
		}
	}
	return r, nil
}

func subprotocolVersion(s string) int {
	switch s {
	case SubprotocolV1, SubprotocolV1Secured:
		return 1
	case SubprotocolV2:
		return 2
	case SubprotocolV3:
		return 3
	}
	return 0
}

func newChannelID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ServeHTTP performs the handshake and, on success, starts the goroutine
// that relays the peer's frames until its WebSocket closes (Shutdown waits
// for it). Mount it at Config.Path.
func (r *Relay) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	start := time.Now()
	channelID := newChannelID()
	// Lower case as AWS sends it; net/http writes the key as given.
	w.Header()["channel-id"] = []string{channelID}

	// First, so a blocked address costs no parsing and no store lookup.
	if ok, wait := r.failLimit.Allow(req.RemoteAddr); !ok {
		w.Header().Set("Retry-After", ratelimit.RetryAfter(wait))
		r.reject(w, req, channelID, HandshakeRequest{}, &handshakeError{http.StatusTooManyRequests, failRateLimited,
			fmt.Sprintf("too many failed handshakes from your address: retry in %s s", ratelimit.RetryAfter(wait))})
		return
	}
	hs, herr := r.checkRequest(req)
	if herr != nil {
		r.reject(w, req, channelID, hs, herr)
		return
	}
	hs.ChannelID = channelID
	hs.RemoteAddr = req.RemoteAddr

	r.mu.Lock()
	if r.closing {
		r.mu.Unlock()
		r.reject(w, req, channelID, hs, &handshakeError{http.StatusServiceUnavailable, failShutdown, "the tunneling service is shutting down: retry later"})
		return
	}
	r.wg.Add(1)
	r.mu.Unlock()
	defer r.wg.Done()

	// Take the connection now, so that what can refuse the request on it
	// is known before Authorize uses the token: bytes sent after the
	// request (the upgrade would close the connection for them, without
	// an answer), or a connection that cannot be taken over.
	hw, err := hijackHandshake(w, r.cfg.WriteTimeout)
	if err != nil {
		r.reject(w, req, channelID, hs, &handshakeError{http.StatusInternalServerError, failUpgrade, "cannot take over the connection for the WebSocket: " + err.Error()})
		return
	}
	defer hw.finish()
	w = hw
	if hw.earlyData() {
		r.reject(w, req, channelID, hs, &handshakeError{http.StatusBadRequest, failEarlyData,
			"data sent after the upgrade request, before the 101 Switching Protocols answer: send WebSocket frames only once the handshake is complete (the access token was not used)"})
		return
	}

	ctx, cancel := context.WithTimeout(req.Context(), r.cfg.AuthorizeTimeout)
	grant, err := r.authz.Authorize(ctx, hs)
	cancel()
	if err == nil && grant.TunnelID == "" {
		err = errors.New("authorizer granted no tunnel ID")
	}
	if err != nil {
		if errors.Is(err, ErrUnauthorized) {
			r.reject(w, req, channelID, hs, &handshakeError{http.StatusUnauthorized, failUnauthorized, unauthorizedText(err)})
		} else if errors.Is(err, ErrUnavailable) {
			r.log.Warn("handshake refused: storage unavailable", "channel_id", channelID, "mode", hs.Mode, "err", err)
			r.reject(w, req, channelID, hs, &handshakeError{http.StatusServiceUnavailable, failInternal, "the tunneling service is temporarily unavailable: retry later"})
		} else {
			level := slog.LevelError
			if req.Context().Err() != nil {
				level = slog.LevelInfo // the client went away
			}
			r.log.Log(req.Context(), level, "authorizing handshake", "channel_id", channelID, "mode", hs.Mode, "token_id", token.Short(hs.AccessToken), "err", err)
			r.reject(w, req, channelID, hs, &handshakeError{http.StatusInternalServerError, failInternal, "internal error: retry later"})
		}
		return
	}

	conn, err := wsconn.Accept(w, req, wsconn.AcceptOptions{
		Subprotocol:  hs.Subprotocol,
		Header:       http.Header{"channel-id": {channelID}},
		WriteTimeout: r.cfg.WriteTimeout,
	})
	if err != nil {
		r.handshake.failures[failUpgrade].Add(1)
		r.log.Info("websocket upgrade failed after authorization", "tunnel_id", grant.TunnelID, "channel_id", channelID, "mode", hs.Mode, "token_id", token.Short(hs.AccessToken), "err", err)
		return
	}
	p := r.newPeer(conn, grant, hs)
	// The peer is installed before SERVICE_IDS goes out, so a client that
	// has read SERVICE_IDS can count on being reachable; holding its
	// output lock keeps the other peer's frames behind SERVICE_IDS.
	p.wmu.Lock()
	if code, reason, ok := r.install(p, start); !ok {
		p.wmu.Unlock()
		p.log.Info("peer refused after handshake", "reason", reason)
		p.abort(code, reason)
		return
	}
	if p.version >= 2 {
		// Alone in its message: the reference proxy discards what follows
		// SERVICE_IDS in the same message.
		b, err := wire.AppendFrame(nil, &wire.Message{Type: wire.TypeServiceIDs, AvailableServiceIDs: grant.Services})
		if err == nil {
			err = conn.WriteMessage(p.wctx, b)
		}
		if err != nil {
			p.log.Info("sending SERVICE_IDS failed", "err", err)
			p.wmu.Unlock()
			p.close(wsconn.CloseInternalError, "internal error")
			p.run() // finds the peer closed and detaches it
			return
		}
	}
	p.wmu.Unlock()
	r.handshake.ok.Add(1)
	p.log.Info("peer connected", "subprotocol", hs.Subprotocol, "remote_addr", hs.RemoteAddr, "token_id", token.Short(hs.AccessToken))
	r.notify(p.t, p.mode)
	// A fresh goroutine rather than this one: returning lets net/http free
	// the connection's state (its 4 KiB read buffer among it) and the new
	// stack starts small. That is about 8 KiB less per idle peer.
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		p.run()
	}()
}

// unauthorizedText is the refusal's text without the sentinel's prefix.
func unauthorizedText(err error) string {
	s := err.Error()
	if rest, ok := strings.CutPrefix(s, ErrUnauthorized.Error()+": "); ok {
		s = rest
	}
	return "access denied: " + s
}

func (r *Relay) reject(w http.ResponseWriter, req *http.Request, channelID string, hs HandshakeRequest, e *handshakeError) {
	r.handshake.failures[e.reason].Add(1)
	args := []any{"channel_id", channelID, "status", e.status, "reason", e.reason.String(), "remote_addr", req.RemoteAddr, "detail", e.text}
	if hs.Mode != "" {
		args = append(args, "mode", hs.Mode)
	}
	if hs.AccessToken != "" {
		args = append(args, "token_id", token.Short(hs.AccessToken))
	}
	level := slog.LevelInfo
	switch e.status {
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusRequestHeaderFieldsTooLarge:
		// The client's fault: it counts towards its address's limit.
		if r.failLimit.Fail(req.RemoteAddr) {
			key, _ := ratelimit.Key(req.RemoteAddr)
			r.log.Warn("too many failed handshakes: refusing the address for a while", "remote_addr", req.RemoteAddr, "key", key, "cooldown", r.failLimit.Cooldown())
		}
	case http.StatusTooManyRequests:
		level = slog.LevelDebug // an attacker must not flood the log
	}
	r.log.Log(req.Context(), level, "handshake refused", args...)
	if e.status == http.StatusBadRequest && e.reason == failUpgradeForm {
		w.Header().Set("Sec-WebSocket-Version", "13")
	}
	http.Error(w, e.text, e.status)
}

// install makes p its tunnel end's peer, replacing any previous one. It
// fails, with the close code and reason to give p, if the tunnel or end
// was fenced after the handshake started, or the relay is shutting down.
func (r *Relay) install(p *peer, started time.Time) (code int, reason string, ok bool) {
	r.mu.Lock()
	if r.closing {
		r.mu.Unlock()
		r.handshake.failures[failShutdown].Add(1)
		return wsconn.CloseGoingAway, "the tunneling service is shutting down", false
	}
	for _, k := range [...]fenceKey{{p.tunnelID, ""}, {p.tunnelID, p.mode}} {
		if f, ok := r.fences[k]; ok && !started.After(f.at) {
			r.mu.Unlock()
			r.handshake.failures[failFenced].Add(1)
			return f.code, f.reason, false
		}
	}
	t := r.tunnels[p.tunnelID]
	if t == nil {
		t = r.newTunnel(p.tunnelID)
		r.tunnels[t.id] = t
	}
	t.mu.Lock()
	old := t.ends[p.idx].Load()
	if old != nil && p.epoch != 0 && old.epoch > p.epoch {
		// A newer connection of this end (attached from another node)
		// won the race.
		t.mu.Unlock()
		r.mu.Unlock()
		r.handshake.failures[failFenced].Add(1)
		return wsconn.ClosePolicyViolation, "replaced by a new connection", false
	}
	p.t = t
	t.setServices(p.services)
	r.peers[p] = struct{}{}
	r.reading.Add(1) // done when p's reader stops: finish
	t.ends[p.idx].Store(&p.end)
	resets, other := t.replaced(old, p.idx)
	t.mu.Unlock()
	r.mu.Unlock()
	if old != nil {
		r.replace(old, other, resets, "new_channel_id", p.channelID)
	}
	return 0, "", true
}

// replaced marks old, the end just replaced in t (if any), closed and
// takes the streams to reset, and returns the other end. t.mu is held.
func (t *tunnel) replaced(old *end, idx int) ([]streamRef, *end) {
	var resets []streamRef
	if old != nil {
		old.closed.Store(true)
		resets = t.takeStreams()
	}
	return resets, t.ends[1-idx].Load()
}

// replace closes the replaced end old and tells the other end its streams
// are gone.
func (r *Relay) replace(old, other *end, resets []streamRef, logArgs ...any) {
	r.replaced.Add(1)
	old.log.Info("peer replaced by a new connection", logArgs...)
	// Not on this goroutine: the close frame can wait (up to 1 s)
	// behind a write stuck on the old connection, which a client
	// that reconnected has most likely abandoned (blackholed), and
	// the new peer's SERVICE_IDS must not wait for it. ServeHTTP's
	// r.wg count is held, so Add is allowed during Shutdown's Wait.
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		old.peer.Close(wsconn.ClosePolicyViolation, "replaced by a new connection")
	}()
	if other != nil {
		other.sendResets(resets)
	}
}

// notify reports the current state of one end to the Authorizer, and
// forgets the tunnel when it has no peer left and both ends were reported
// disconnected.
func (r *Relay) notify(t *tunnel, mode Mode) {
	idx := modeIndex(mode)
	t.notifyMu.Lock()
	defer t.notifyMu.Unlock()
	e := t.ends[idx].Load()
	if e != nil && e.local == nil {
		// A remote end: its own node reports it (and has done so before
		// attaching it). This node's last report is void.
		t.reported[idx] = false
	} else if connected := e != nil; t.reported[idx] != connected {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r.authz.PeerChanged(ctx, t.id, mode, connected)
		cancel()
		t.reported[idx] = connected
	}
	if t.reported[0] || t.reported[1] {
		return
	}
	r.forget(t)
}

// forget drops t from the tunnel table if it has no end left.
func (r *Relay) forget(t *tunnel) {
	r.mu.Lock()
	if r.tunnels[t.id] == t && t.ends[0].Load() == nil && t.ends[1].Load() == nil {
		delete(r.tunnels, t.id)
	}
	r.mu.Unlock()
}

// CloseTunnel closes both peers of a tunnel with 1000 and reason (default
// "tunnel closed"), and refuses handshakes for it that are already past
// Authorize. It does not wait for the peers' goroutines.
func (r *Relay) CloseTunnel(tunnelID, reason string) {
	if reason == "" {
		reason = "tunnel closed"
	}
	r.fenceAndClose(fenceKey{tunnelID, ""}, wsconn.CloseNormal, reason)
}

// DisconnectPeer closes one end's peer with 1008 and reason (default
// "access token rotated"), e.g. after its token was rotated, and refuses
// handshakes for that end already past Authorize. It does not wait.
func (r *Relay) DisconnectPeer(tunnelID string, mode Mode, reason string) {
	if reason == "" {
		reason = "access token rotated"
	}
	if modeIndex(mode) < 0 {
		return
	}
	r.fenceAndClose(fenceKey{tunnelID, mode}, wsconn.ClosePolicyViolation, reason)
}

func (r *Relay) fenceAndClose(k fenceKey, code int, reason string) {
	now := time.Now()
	var victims []*end
	r.mu.Lock()
	for fk, f := range r.fences {
		if now.Sub(f.at) > r.fenceTTL() {
			delete(r.fences, fk)
		}
	}
	r.fences[k] = fence{at: now, code: code, reason: reason}
	if t := r.tunnels[k.tunnelID]; t != nil {
		for i := range t.ends {
			if e := t.ends[i].Load(); e != nil && (k.mode == "" || e.mode == k.mode) {
				victims = append(victims, e)
			}
		}
	}
	r.mu.Unlock()
	for _, e := range victims {
		e.log.Info("closing peer", "reason", reason)
		e.closeWith(code, reason)
	}
}

// shutdownDrain bounds how long Shutdown lets queued frames go out before
// it cuts the connections.
const shutdownDrain = time.Second

// Shutdown refuses new handshakes, stops reading from the peers, lets the
// frames already relayed go out (for at most a second, or until ctx ends)
// and then drops every WebSocket without a close frame, as a crash would:
// tunnels outlive a restart, and clients reconnect after a dropped
// connection where the reference local proxy takes any close frame for
// the end of the tunnel and exits. It waits until every ServeHTTP call
// and reader has returned, or ctx ends (then it returns ctx's error). It
// may be called more than once.
func (r *Relay) Shutdown(ctx context.Context) error {
	r.shutdownOnce.Do(func() { r.stop(ctx) })
	waited := make(chan struct{})
	go func() { r.wg.Wait(); close(waited) }()
	select {
	case <-waited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("relay: shutdown: %w", ctx.Err())
	}
}

// stop is Shutdown's first call: stop the readers, wait for them to flush
// what they relayed (bounded), drop every connection.
func (r *Relay) stop(ctx context.Context) {
	r.mu.Lock()
	r.closing = true
	r.stopping.Store(true)
	victims := make([]*peer, 0, len(r.peers))
	for p := range r.peers {
		victims = append(victims, p)
	}
	remotes := make([]*Attachment, 0, len(r.remotes))
	for a := range r.remotes {
		remotes = append(remotes, a)
	}
	r.mu.Unlock()
	for _, a := range remotes {
		a.abort() // no more frames from or to other nodes
	}

	for _, p := range victims {
		p.stopReading()
	}
	stopped := make(chan struct{})
	go func() { r.reading.Wait(); close(stopped) }()
	deadline := time.NewTimer(shutdownDrain)
	select {
	case <-stopped:
	case <-deadline.C:
	case <-ctx.Done():
	}
	deadline.Stop()
	// Cutting the connections also ends writes stuck on a peer that does
	// not read, and with them the readers still waiting (stopped closes).
	for _, p := range victims {
		p.drop("the tunneling service is shutting down")
	}
	close(r.drained)
}

// newTunnel returns the state of a tunnel that has no peer yet.
func (r *Relay) newTunnel(id string) *tunnel {
	t := &tunnel{id: id, streams: make(map[string]int32)}
	if r.cfg.BandwidthLimit > 0 {
		for i := range t.limiters {
			t.limiters[i] = rate.NewLimiter(rate.Limit(r.cfg.BandwidthLimit), limiterBurst)
		}
	}
	return t
}
