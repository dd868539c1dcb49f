package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"slices"
	"sync"

	"github.com/sectun/sectun/internal/notify"
	"github.com/sectun/sectun/internal/token"
)

// seenCapacity bounds the set of recently seen tokens used to drop
// duplicate deliveries of notifications whose session has already ended.
const seenCapacity = 1024

// Agent subscribes to a thing's notify topic and runs a destination
// session for every tunnel notification, until Run's context ends.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	topic  string
	broker *url.URL
	tls    *tls.Config // nil for plain brokers

	mu       sync.Mutex
	ran      bool
	stopping bool
	sessions map[string]*entry // key: token hash; running sessions
	seen     seenSet
	wg       sync.WaitGroup // session goroutines
	sessCtx  context.Context
	stopSess context.CancelFunc
}

// entry is a running session in the agent's table.
type entry struct {
	id       string // token.Short
	token    string
	region   string
	services map[string]string
}

// SessionInfo describes a running session (see Agent.Sessions).
type SessionInfo struct {
	// ID is token.Short of the session's access token.
	ID string
	// Services maps the tunnel's service IDs to local addresses.
	Services map[string]string
}

// New checks cfg, loads its TLS material and returns an Agent; Run starts
// it. Configuration errors wrap ErrInvalidConfig.
func New(cfg Config) (*Agent, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	if !notify.ValidThingName(cfg.ThingName) {
		return nil, fmt.Errorf("%w: thing name %q is not 1-128 letters, digits, ':', '_' or '-'", ErrInvalidConfig, cfg.ThingName)
	}
	if cfg.ClientID == "" {
		cfg.ClientID = cfg.ThingName
	}
	u, err := brokerURL(cfg.BrokerURL)
	if err != nil {
		return nil, err
	}
	t, err := cfg.brokerTLS(u)
	if err != nil {
		return nil, err
	}
	topic := notify.NotifyTopic(cfg.TopicPrefix, cfg.ThingName)
	return &Agent{
		cfg:      cfg,
		log:      cfg.Logger,
		topic:    topic,
		broker:   u,
		tls:      t,
		sessions: map[string]*entry{},
		seen:     newSeenSet(seenCapacity),
	}, nil
}

// Topic returns the notify topic the agent subscribes to.
func (a *Agent) Topic() string { return a.topic }

// Sessions returns the running sessions, in no particular order.
func (a *Agent) Sessions() []SessionInfo {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]SessionInfo, 0, len(a.sessions))
	for _, e := range a.sessions {
		out = append(out, SessionInfo{ID: e.id, Services: maps.Clone(e.services)})
	}
	return out
}

// Run connects to the broker, subscribes, and serves notifications until
// ctx ends; it keeps reconnecting (and resubscribing) after broker losses.
// When ctx ends it disconnects from the broker, closes every session and
// waits for them, and returns nil. It may be called once.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	if a.ran {
		a.mu.Unlock()
		return ErrAlreadyRun
	}
	a.ran = true
	a.sessCtx, a.stopSess = context.WithCancel(context.Background())
	a.mu.Unlock()

	a.log.Info("agent starting", "thing", a.cfg.ThingName, "client_id", a.cfg.ClientID,
		"broker", a.broker.Redacted(), "topic", a.topic, "max_tunnels", a.cfg.MaxTunnels)
	a.mqttLoop(ctx)

	a.mu.Lock()
	a.stopping = true
	n := len(a.sessions)
	a.mu.Unlock()
	if n > 0 {
		a.log.Info("closing sessions", "sessions", n)
	}
	a.stopSess()
	a.wg.Wait()
	a.log.Info("agent stopped")
	return nil
}

// handleMessage acts on one message from the broker. It never blocks for
// long: sessions run in their own goroutines.
func (a *Agent) handleMessage(topic string, payload []byte) {
	if topic != a.topic {
		a.ignore("", fmt.Errorf("%w %q (want %q)", ErrWrongTopic, topic, a.topic))
		return
	}
	doc, err := notify.ParseDocument(payload)
	if err != nil {
		a.ignore("", err)
		return
	}
	id := token.Short(doc.ClientAccessToken)
	mapping, err := a.cfg.mapping(doc.Services)
	if err != nil {
		a.ignore(id, err)
		return
	}
	key := string(token.Hash(doc.ClientAccessToken))
	e := &entry{id: id, token: doc.ClientAccessToken, region: doc.Region, services: mapping}
	a.mu.Lock()
	switch {
	case a.stopping:
		err = ErrStopping
	case a.sessions[key] != nil || a.seen.has(key):
		err = ErrDuplicate
	case len(a.sessions) >= a.cfg.MaxTunnels:
		err = fmt.Errorf("%w: %d sessions running, the maximum (raise --max-tunnels, or close tunnels)", ErrTooManyTunnels, len(a.sessions))
	default:
		a.sessions[key] = e
		a.seen.add(key)
		a.wg.Add(1)
	}
	ctx := a.sessCtx
	a.mu.Unlock()
	if err != nil {
		a.ignore(id, err)
		return
	}
	a.log.Info("tunnel notification", "session", id, "region", doc.Region, "services", doc.Services)
	go func() {
		defer a.wg.Done()
		started, err := runSession(ctx, &a.cfg, sessionParams{
			id: id, token: e.token, region: e.region, services: e.services,
			onStart: func(m map[string]string) { a.emit(SessionStarted{Session: id, Services: m}) },
		})
		a.mu.Lock()
		delete(a.sessions, key)
		a.mu.Unlock()
		a.emit(SessionEnded{Session: id, Started: started, Err: err})
	}()
}

// ignore logs and reports a notification that is not acted on.
func (a *Agent) ignore(id string, err error) {
	switch {
	case errors.Is(err, ErrDuplicate):
		a.log.Info("duplicate notification ignored", "session", id)
	case errors.Is(err, ErrTooManyTunnels):
		a.log.Error("notification refused", "session", id, "err", err)
	default:
		a.log.Warn("notification ignored", "session", id, "err", err)
	}
	a.emit(Ignored{Session: id, Err: err})
}

func (a *Agent) emit(ev Event) {
	if a.cfg.OnEvent != nil {
		a.cfg.OnEvent(ev)
	}
}

// seenSet remembers the last n keys added (FIFO eviction).
type seenSet struct {
	keys map[string]struct{}
	ring []string
	next int
}

func newSeenSet(n int) seenSet {
	return seenSet{keys: make(map[string]struct{}, n), ring: make([]string, n)}
}

func (s *seenSet) has(k string) bool {
	_, ok := s.keys[k]
	return ok
}

func (s *seenSet) add(k string) {
	if s.has(k) {
		return
	}
	if old := s.ring[s.next]; old != "" {
		delete(s.keys, old)
	}
	s.ring[s.next] = k
	s.keys[k] = struct{}{}
	s.next = (s.next + 1) % len(s.ring)
}

// sortedKeys is for logs.
func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }
