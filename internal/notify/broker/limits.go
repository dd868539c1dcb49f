package broker

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/sectun/sectun/internal/ratelimit"
)

// Refusal reasons: the label values of Stats.Refused (and tunneld's
// tunneld_mqtt_refused_total).
const (
	// ReasonMaxConns: Config.MaxConns connections were open.
	ReasonMaxConns = "max_conns"
	// ReasonConnsPerAddr: the address held Config.MaxConnsPerAddr
	// connections without a certificate or password.
	ReasonConnsPerAddr = "conns_per_addr"
	// ReasonConnsPerIdentity: the identity held Config.MaxConnsPerIdentity
	// connections.
	ReasonConnsPerIdentity = "conns_per_identity"
	// ReasonMaxSessions: the broker held Config.MaxSessions sessions.
	ReasonMaxSessions = "max_sessions"
	// ReasonSessionsPerIdentity: the identity held
	// Config.MaxSessionsPerIdentity sessions.
	ReasonSessionsPerIdentity = "sessions_per_identity"
	// ReasonSessionOwner: the client ID's session belongs to another
	// identity (CONNACK "identifier rejected").
	ReasonSessionOwner = "session_owner"
	// ReasonThingAuthenticated: an anonymous client claimed a thing whose
	// device holds a session authenticated by certificate or password
	// (CONNACK "not authorized").
	ReasonThingAuthenticated = "thing_authenticated"
	// ReasonClientIDBusy: another CONNECT with the same client ID did not
	// finish within Config.ConnectTimeout.
	ReasonClientIDBusy = "client_id_busy"
)

// Drop reasons: the label values of Stats.Dropped.
const (
	// DropSessionQueue: a disconnected session already held
	// Config.MaxQueuedPerSession messages.
	DropSessionQueue = "session_queue_full"
	// DropQueue: the broker already held Config.MaxQueued messages.
	DropQueue = "queue_full"
)

var (
	refusalReasons = []string{ReasonMaxConns, ReasonConnsPerAddr, ReasonConnsPerIdentity, ReasonMaxSessions,
		ReasonSessionsPerIdentity, ReasonSessionOwner, ReasonThingAuthenticated, ReasonClientIDBusy}
	dropReasons = []string{DropSessionQueue, DropQueue}
)

// Stats are the broker's current counts, its limits, and what it refused.
// A limit of 0 means none.
type Stats struct {
	// Conns are the open MQTT connections, CONNECT sent or not.
	Conns, MaxConns int
	// Sessions are the sessions held: connected clients and the kept
	// sessions of disconnected persistent clients.
	Sessions, MaxSessions int
	// OfflineSessions are the kept sessions of disconnected clients.
	OfflineSessions int
	// Queued are the QoS 1 and 2 messages held for clients, until
	// acknowledged (connected) or for delivery (disconnected sessions).
	Queued, MaxQueued int64
	// MaxConnsPerAddr, MaxConnsPerIdentity, MaxSessionsPerIdentity and
	// MaxQueuedPerSession are the other limits.
	MaxConnsPerAddr, MaxConnsPerIdentity, MaxSessionsPerIdentity, MaxQueuedPerSession int
	// Refused counts refused connections by reason (Reason*).
	Refused map[string]int64
	// Dropped counts messages not queued, by reason (Drop*).
	Dropped map[string]int64
}

// limiter enforces the connection, session and queue limits of Config.
// Connections are counted from accept (admit) to the end of their
// goroutine (done); their address count is replaced by an identity count
// when CONNECT authenticates them with a certificate or a password
// (connect). Sessions are counted per client ID with the identity that
// holds them.
type limiter struct {
	b *Broker
	// the limits; 0 = none
	maxConns, perAddr, perIdentity, maxSessions, sessionsPerIdentity, queuedPerSession int
	maxQueued                                                                          int64

	mu         sync.Mutex
	conns      map[net.Conn]*connEntry
	byAddr     map[string]int           // address key -> connections counted for it
	byIdentity map[string]int           // limit key -> connections
	sessions   map[string]sessionEntry  // client ID -> who holds its session
	sessionsBy map[string]int           // limit key -> sessions
	connecting map[string]chan struct{} // client IDs with a CONNECT between check and registration

	// queued messages, summed over the sessions at most every
	// queuedEvery and counted up in between (mochi's Info.Inflight drifts:
	// v2.7.9 subtracts a resumed session's messages though the new
	// connection keeps them).
	qmu     sync.Mutex
	qN      int64
	qAt     time.Time
	refused map[string]*atomic.Int64 // fixed keys: refusalReasons
	dropped map[string]*atomic.Int64 // fixed keys: dropReasons
	logged  atomic.Int64             // refusals and drops logged at Warn, for rate-limiting
}

type connEntry struct {
	addr     string // ratelimit.Key of the remote address
	inAddr   bool   // counted in byAddr
	key      string // counted in byIdentity under this key, once CONNECT is accepted
	lockedID string // client ID whose connecting lock this connection holds
}

type sessionEntry struct {
	key string
	cl  *mqtt.Client
}

func limitOf(n int) int { return max(n, 0) }

func newLimiter(b *Broker) *limiter {
	c := &b.cfg
	l := &limiter{
		b:                   b,
		maxConns:            limitOf(c.MaxConns),
		perAddr:             limitOf(c.MaxConnsPerAddr),
		perIdentity:         limitOf(c.MaxConnsPerIdentity),
		maxSessions:         limitOf(c.MaxSessions),
		sessionsPerIdentity: limitOf(c.MaxSessionsPerIdentity),
		queuedPerSession:    limitOf(c.MaxQueuedPerSession),
		maxQueued:           int64(limitOf(c.MaxQueued)),
		conns:               map[net.Conn]*connEntry{},
		byAddr:              map[string]int{},
		byIdentity:          map[string]int{},
		sessions:            map[string]sessionEntry{},
		sessionsBy:          map[string]int{},
		connecting:          map[string]chan struct{}{},
		refused:             map[string]*atomic.Int64{},
		dropped:             map[string]*atomic.Int64{},
	}
	for _, r := range refusalReasons {
		l.refused[r] = new(atomic.Int64)
	}
	for _, r := range dropReasons {
		l.dropped[r] = new(atomic.Int64)
	}
	return l
}

// limitKey is the identity the per-identity limits count: the
// certificate, user or admin name, or for an anonymous client (who proved
// nothing) its address: all anonymous clients of one address are one
// identity.
func limitKey(id identity, addr string) string {
	switch {
	case id.via == "anonymous":
		return "anonymous@" + addr
	case id.admin:
		return "admin:" + id.name
	}
	return "thing:" + id.name
}

// refuse counts a refusal and logs it (Warn for the first and every
// 100th, so that a flood does not flood the log; Info otherwise).
func (l *limiter) refuse(reason string, attrs ...any) {
	n := l.refused[reason].Add(1)
	attrs = append(attrs, "reason", reason, "refused_total", n)
	if l.logged.Add(1)%100 == 1 {
		l.b.log.Warn("broker: MQTT connection refused: limit reached", attrs...)
	} else {
		l.b.log.Debug("broker: MQTT connection refused: limit reached", attrs...)
	}
}

// admit counts a newly accepted connection, or refuses it ("" = admitted).
func (l *limiter) admit(c net.Conn) string {
	addr, loopback := ratelimit.Key(c.RemoteAddr().String())
	if loopback {
		addr = "loopback" // 127.0.0.0/8 and ::1 are all this host
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.maxConns > 0 && len(l.conns) >= l.maxConns:
		return ReasonMaxConns
	case l.perAddr > 0 && l.byAddr[addr] >= l.perAddr:
		return ReasonConnsPerAddr
	}
	l.conns[c] = &connEntry{addr: addr, inAddr: true}
	l.byAddr[addr]++
	return ""
}

// done forgets a connection whose goroutine ended.
func (l *limiter) done(c net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.conns[c]
	if e == nil {
		return
	}
	delete(l.conns, c)
	if e.inAddr {
		decr(l.byAddr, e.addr)
	}
	if e.key != "" {
		decr(l.byIdentity, e.key)
	}
	l.unlockID(e)
}

func decr(m map[string]int, k string) {
	if n := m[k] - 1; n > 0 {
		m[k] = n
	} else {
		delete(m, k)
	}
}

// unlockID releases e's connecting lock. l.mu is held.
func (l *limiter) unlockID(e *connEntry) {
	if e.lockedID == "" {
		return
	}
	if ch, ok := l.connecting[e.lockedID]; ok {
		close(ch)
		delete(l.connecting, e.lockedID)
	}
	e.lockedID = ""
}

// lockID makes cl the only CONNECT of its client ID between the session
// checks and its registration with mochi (released by established or
// done), so that two clients racing for one ID are checked one after the
// other. It waits at most Config.ConnectTimeout.
func (l *limiter) lockID(cl *mqtt.Client) bool {
	deadline := time.NewTimer(l.b.cfg.ConnectTimeout)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		e := l.conns[cl.Net.Conn]
		if e == nil { // not a counted connection (cannot happen: every listener admits)
			l.mu.Unlock()
			return true
		}
		ch, busy := l.connecting[cl.ID]
		if !busy {
			l.connecting[cl.ID] = make(chan struct{})
			e.lockedID = cl.ID
			l.mu.Unlock()
			return true
		}
		l.mu.Unlock()
		select {
		case <-ch:
		case <-deadline.C:
			return false
		}
	}
}

// established releases cl's connecting lock: mochi has registered it.
func (l *limiter) established(cl *mqtt.Client) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.conns[cl.Net.Conn]; e != nil {
		l.unlockID(e)
	}
}

// refusal is a CONNECT refused by connect: the CONNACK code and why.
type refusal struct {
	code   packets.Code
	reason string // a Reason* constant
	err    error
}

// connect applies the session ownership rule and the per-identity and
// session limits to an authenticated CONNECT, and counts it. On refusal
// the connecting lock is released.
func (l *limiter) connect(cl *mqtt.Client, id identity) *refusal {
	if !l.lockID(cl) {
		return &refusal{packets.ErrServerUnavailable, ReasonClientIDBusy,
			fmt.Errorf("another connection with client ID %q is still connecting", cl.ID)}
	}
	existing, resumed := l.b.srv.Clients.Get(cl.ID)
	if resumed {
		if owner, err := l.b.identify(existing); err != nil || !mayTakeOver(owner, id) {
			l.release(cl)
			holder := "an identity that no longer authenticates"
			if err == nil {
				holder = describe(owner)
			}
			return &refusal{packets.ErrClientIdentifierNotValid, ReasonSessionOwner,
				fmt.Errorf("the session of client ID %q belongs to %s, not to %s: only its owner may resume it or take it over", cl.ID, holder, describe(id))}
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.conns[cl.Net.Conn]
	if e == nil {
		return nil
	}
	key := limitKey(id, e.addr)
	if id.via == "anonymous" && l.sessionsBy[limitKey(identity{name: id.name, via: "certificate"}, "")] > 0 {
		l.unlockID(e)
		return &refusal{packets.ErrNotAuthorized, ReasonThingAuthenticated,
			fmt.Errorf("thing %q has a session authenticated by certificate or password: anonymous clients may not claim it", id.name)}
	}
	prev, hadSession := l.sessions[cl.ID]
	// Taking over one's own live connection (a device reconnecting before
	// the broker noticed the old one is gone) replaces it: not one more.
	replaces := resumed && !existing.Closed() && hadSession && prev.key == key
	if l.perIdentity > 0 && l.byIdentity[key] >= l.perIdentity && !replaces {
		l.unlockID(e)
		return &refusal{packets.ErrServerUnavailable, ReasonConnsPerIdentity,
			fmt.Errorf("%s already has %d connections (the limit)", describe(id), l.byIdentity[key])}
	}
	// A clean session ends with its connection: the connection limits
	// bound those. The session limits bound the sessions that outlive one.
	if !resumed && persistent(cl) {
		if l.maxSessions > 0 && l.b.srv.Clients.Len()-1 >= l.maxSessions { // -1: mochi's inline client
			l.unlockID(e)
			return &refusal{packets.ErrServerUnavailable, ReasonMaxSessions,
				fmt.Errorf("the broker holds %d sessions (the limit)", l.maxSessions)}
		}
		if l.sessionsPerIdentity > 0 && l.sessionsBy[key] >= l.sessionsPerIdentity {
			l.unlockID(e)
			return &refusal{packets.ErrServerUnavailable, ReasonSessionsPerIdentity,
				fmt.Errorf("%s already holds %d sessions (the limit): reuse a client ID, or connect with a clean session, whose session ends with the connection", describe(id), l.sessionsBy[key])}
		}
	}
	e.key = key
	l.byIdentity[key]++
	if id.via != "anonymous" && e.inAddr {
		e.inAddr = false
		decr(l.byAddr, e.addr)
	}
	if hadSession {
		decr(l.sessionsBy, prev.key)
	}
	l.sessions[cl.ID] = sessionEntry{key: key, cl: cl}
	l.sessionsBy[key]++
	return nil
}

// persistent reports whether cl's session outlives its connection (as
// mochi decides when it disconnects).
func persistent(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

func (l *limiter) release(cl *mqtt.Client) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.conns[cl.Net.Conn]; e != nil {
		l.unlockID(e)
	}
}

// sessionGone forgets the session of cl, if cl still holds it.
func (l *limiter) sessionGone(cl *mqtt.Client) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s, ok := l.sessions[cl.ID]; ok && s.cl == cl {
		delete(l.sessions, cl.ID)
		decr(l.sessionsBy, s.key)
	}
}

// mayTakeOver is the session ownership rule: a session held by an
// authenticated identity (certificate or password) may be resumed or
// taken over only by the same thing (or admin) authenticated again; an
// anonymous one by the same anonymous thing or by that thing
// authenticated.
func mayTakeOver(owner, next identity) bool {
	if owner.name != next.name || owner.admin != next.admin {
		return false
	}
	return owner.via == "anonymous" || next.via != "anonymous"
}

func describe(id identity) string {
	kind := "thing"
	if id.admin {
		kind = "admin"
	}
	switch id.via {
	case "certificate":
		return fmt.Sprintf("%s %q (client certificate)", kind, id.name)
	case "password":
		return fmt.Sprintf("%s %q (password)", kind, id.name)
	}
	return fmt.Sprintf("anonymous thing %q", id.name)
}

// mayQueue decides whether a message may be queued for cl, a subscriber:
// a disconnected session gets at most MaxQueuedPerSession, and none once
// the broker holds MaxQueued. Connected clients are bounded by mochi's
// inflight quota (MaxQueuedPerSession too).
func (l *limiter) mayQueue(cl *mqtt.Client, topic string) bool {
	if !cl.Closed() {
		return true
	}
	reason := ""
	switch {
	case l.queuedPerSession > 0 && cl.State.Inflight.Len() >= l.queuedPerSession:
		reason = DropSessionQueue
	case l.maxQueued > 0 && !l.queueOne():
		reason = DropQueue
	default:
		return true
	}
	n := l.dropped[reason].Add(1)
	attrs := []any{"client_id", cl.ID, "topic", topic, "reason", reason, "dropped_total", n}
	if l.logged.Add(1)%100 == 1 {
		l.b.log.Warn("broker: message for a disconnected session dropped: queue limit reached", attrs...)
	} else {
		l.b.log.Debug("broker: message for a disconnected session dropped: queue limit reached", attrs...)
	}
	return false
}

const queuedEvery = 100 * time.Millisecond

// queued returns the QoS 1 and 2 messages held for all sessions.
func (l *limiter) queued() int64 {
	l.qmu.Lock()
	defer l.qmu.Unlock()
	return l.queuedLocked(true)
}

// queuedLocked is queued with l.qmu held; fresh forces a new sum.
func (l *limiter) queuedLocked(fresh bool) int64 {
	if fresh || time.Since(l.qAt) >= queuedEvery {
		var n int64
		for _, cl := range l.b.srv.Clients.GetAll() {
			n += int64(cl.State.Inflight.Len())
		}
		l.qN, l.qAt = n, time.Now()
	}
	return l.qN
}

// queueOne reports whether one more message fits under MaxQueued, and
// counts it if so.
func (l *limiter) queueOne() bool {
	l.qmu.Lock()
	defer l.qmu.Unlock()
	if l.queuedLocked(false) >= l.maxQueued {
		return false
	}
	l.qN++
	return true
}

// stats returns the counts and limits.
func (l *limiter) stats() Stats {
	s := Stats{
		MaxConns: l.maxConns, MaxSessions: l.maxSessions, MaxQueued: l.maxQueued,
		MaxConnsPerAddr: l.perAddr, MaxConnsPerIdentity: l.perIdentity,
		MaxSessionsPerIdentity: l.sessionsPerIdentity, MaxQueuedPerSession: l.queuedPerSession,
		Queued:  l.queued(),
		Refused: make(map[string]int64, len(l.refused)),
		Dropped: make(map[string]int64, len(l.dropped)),
	}
	for r, n := range l.refused {
		s.Refused[r] = n.Load()
	}
	for r, n := range l.dropped {
		s.Dropped[r] = n.Load()
	}
	l.mu.Lock()
	s.Conns = len(l.conns)
	l.mu.Unlock()
	for _, cl := range l.b.srv.Clients.GetAll() {
		if cl.Net.Inline {
			continue
		}
		s.Sessions++
		if cl.Closed() {
			s.OfflineSessions++
		}
	}
	return s
}

// limitHook keeps the session counts in step with mochi: a session ends
// when a clean client disconnects or a kept one expires. It also finishes
// mochi v2.7.9's expiry, which drops an expired session from its clients
// but leaves its subscriptions in the topic tree and its queued messages
// counted in Info.Inflight: both would grow without bound.
type limitHook struct {
	mqtt.HookBase
	l *limiter
}

func (h *limitHook) ID() string { return "sectun-limits" }

func (h *limitHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnClientExpired:
		return true
	}
	return false
}

func (h *limitHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	h.l.established(cl)
}

func (h *limitHook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if expire && !cl.IsTakenOver() {
		h.l.sessionGone(cl)
	}
}

func (h *limitHook) OnClientExpired(cl *mqtt.Client) {
	h.l.sessionGone(cl)
	h.l.b.srv.UnsubscribeClient(cl)
	cl.ClearInflights()
}
