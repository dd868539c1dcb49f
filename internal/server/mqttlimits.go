package server

import (
	"context"
	"crypto/tls"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sectun/sectun/internal/notify/broker"
)

// File descriptors kept aside from the connection budget: the database,
// listeners, logs, PostgreSQL connections, DNS, ...
const fdOverhead = 128

// mqttBudget is how tunneld shares connections between the embedded
// broker and everything else (HTTPS, the API, /tunnel).
type mqttBudget struct {
	fileLimit int // RLIMIT_NOFILE at start; 0 if unknown
	// reserve connection slots (of MaxConns) and file descriptors that
	// MQTT can never take.
	reserve int
	// slots is the most main-listener slots MQTT connections (ALPN) may
	// hold: MaxConns - reserve; -1 = no bound (MaxConns unlimited).
	slots int64
	// mqttConns is the broker's bound on its connections (all listeners).
	mqttConns int

	held    atomic.Int64 // main-listener slots held by MQTT connections
	refused atomic.Int64 // MQTT connections refused to keep the reserve
}

// sizeMQTT derives the broker's connection bound and the reserve from
// nofile (RLIMIT_NOFILE; 0 = unknown) and the configuration, and logs what
// it chose. maxConns is Config.MaxConns after defaults (negative: no cap).
func sizeMQTT(cfg *MQTTConfig, maxConns, nofile int, log *slog.Logger) *mqttBudget {
	b := &mqttBudget{fileLimit: nofile, slots: -1}
	budget := 0 // file descriptors for connections; 0 = unknown
	if b.fileLimit > 0 {
		budget = max(b.fileLimit-fdOverhead, 32)
	}
	base := maxConns
	if base <= 0 || budget > 0 && budget < base {
		base = budget
	}
	switch {
	case cfg.ReserveConns > 0:
		b.reserve = cfg.ReserveConns
	case cfg.ReserveConns == 0 && base > 0:
		b.reserve = max(base/8, 16)
	}
	if maxConns > 0 {
		b.slots = int64(max(maxConns-b.reserve, 0))
	}
	switch {
	case cfg.MaxConns != 0:
		b.mqttConns = cfg.MaxConns // negative: no bound
	case budget > 0:
		b.mqttConns = max(min(budget-b.reserve, broker.DefaultMaxSessions), 1)
	default:
		b.mqttConns = broker.DefaultMaxConns
	}
	attrs := []any{"rlimit_nofile", b.fileLimit, "mqtt_max_conns", b.mqttConns, "reserve_conns", b.reserve, "max_conns", maxConns}
	if b.slots >= 0 {
		attrs = append(attrs, "mqtt_max_tls_port_conns", b.slots)
	}
	log.Info("connection limits sized from the file descriptor limit: MQTT never takes the reserve kept for HTTPS, the API and /tunnel", attrs...)
	if budget > 0 && maxConns > budget {
		log.Warn("--max-conns exceeds the file descriptor limit (RLIMIT_NOFILE) less what tunneld needs besides connections: raise the limit (systemd LimitNOFILE=) or lower --max-conns", "max_conns", maxConns, "rlimit_nofile", b.fileLimit)
	}
	return b
}

// take counts an MQTT connection on the main listener, unless MQTT holds
// all the slots it may (the rest is the reserve).
func (b *mqttBudget) take() bool {
	if b.slots < 0 {
		b.held.Add(1)
		return true
	}
	for {
		n := b.held.Load()
		if n >= b.slots {
			return false
		}
		if b.held.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// slotConn is an MQTT connection holding a main-listener slot until it
// closes. It embeds *tls.Conn, so the broker still sees its certificate
// (ConnectionState).
type slotConn struct {
	*tls.Conn
	b    *mqttBudget
	once sync.Once
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.b.held.Add(-1) })
	return err
}

// admitMQTT is the ALPN route's Admit: with MQTT at its slots, a device's
// handshake is refused before the key exchange (serveMQTT checks again).
func (s *Server) admitMQTT() bool {
	b := s.mqttBudget
	if b.slots < 0 || b.held.Load() < b.slots {
		return true
	}
	s.refuseMQTT("")
	return false
}

func (s *Server) refuseMQTT(remote string) {
	if s.mqttBudget.refused.Add(1)%100 == 1 {
		s.logger.Warn("MQTT connection refused: MQTT holds every connection slot outside the reserve kept for HTTPS, the API and /tunnel", "remote", remote, "mqtt_conns", s.mqttBudget.held.Load(), "reserve_conns", s.mqttBudget.reserve, "refused_total", s.mqttBudget.refused.Load())
	}
}

// serveMQTT is the ALPN route's Serve: the connection goes to the broker
// unless MQTT would eat into the reserve.
func (s *Server) serveMQTT(ctx context.Context, c *tls.Conn) {
	b := s.notifier.broker
	if !s.mqttBudget.take() {
		s.refuseMQTT(c.RemoteAddr().String())
		c.Close()
		return
	}
	s.conns.markLong(c)
	if err := b.ServeConn(ctx, &slotConn{Conn: c, b: s.mqttBudget}); err != nil && ctx.Err() == nil {
		s.logger.Warn("MQTT connection not served", "remote", c.RemoteAddr().String(), "err", err)
	}
}

// mqttCollector exports the embedded broker's counts, limits, refusals and
// drops, and the reserve.
type mqttCollector struct {
	s *Server

	conns, connsLimit, sessions, offline, sessionsLimit, queued, queuedLimit, limit, refused, dropped *prometheus.Desc
	tlsConns, tlsSlots, reserve                                                                       *prometheus.Desc
}

func newMQTTCollector(s *Server) *mqttCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &mqttCollector{
		s:             s,
		conns:         d("tunneld_mqtt_connections", "Open MQTT connections of the embedded broker (all listeners, CONNECT sent or not)."),
		connsLimit:    d("tunneld_mqtt_connections_limit", "Bound on tunneld_mqtt_connections (--mqtt-max-conns; 0 = none)."),
		sessions:      d("tunneld_mqtt_sessions", "MQTT sessions held: connected clients and kept sessions of disconnected persistent clients."),
		offline:       d("tunneld_mqtt_sessions_offline", "Kept MQTT sessions of disconnected persistent clients."),
		sessionsLimit: d("tunneld_mqtt_sessions_limit", "Bound on tunneld_mqtt_sessions (--mqtt-max-sessions; 0 = none)."),
		queued:        d("tunneld_mqtt_queued_messages", "QoS 1 messages held for MQTT sessions (unacknowledged, or queued for disconnected sessions)."),
		queuedLimit:   d("tunneld_mqtt_queued_messages_limit", "Bound on tunneld_mqtt_queued_messages for disconnected sessions (--mqtt-max-queued; 0 = none)."),
		limit:         d("tunneld_mqtt_limit", "The other MQTT limits (0 = none).", "limit"),
		refused:       d("tunneld_mqtt_refused_total", "MQTT connections refused by a limit, by reason.", "reason"),
		dropped:       d("tunneld_mqtt_dropped_total", "MQTT messages not queued for a disconnected session, by reason.", "reason"),
		tlsConns:      d("tunneld_conns_mqtt", "Connection slots of the main listener held by MQTT (ALPN x-amzn-mqtt-ca)."),
		tlsSlots:      d("tunneld_conns_mqtt_limit", "Most connection slots of the main listener MQTT may hold: --max-conns less the reserve (0 with --max-conns 0: no bound)."),
		reserve:       d("tunneld_conns_reserve", "Connection slots and file descriptors MQTT can never take, kept for HTTPS, the API and /tunnel (--mqtt-reserve-conns)."),
	}
}

func (c *mqttCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.conns, c.connsLimit, c.sessions, c.offline, c.sessionsLimit, c.queued, c.queuedLimit,
		c.limit, c.refused, c.dropped, c.tlsConns, c.tlsSlots, c.reserve} {
		ch <- d
	}
}

func (c *mqttCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	b := c.s.mqttBudget
	gauge(c.tlsConns, float64(b.held.Load()))
	gauge(c.tlsSlots, float64(max(b.slots, 0)))
	gauge(c.reserve, float64(b.reserve))
	st := c.s.notifier.broker.Stats()
	gauge(c.conns, float64(st.Conns))
	gauge(c.connsLimit, float64(st.MaxConns))
	gauge(c.sessions, float64(st.Sessions))
	gauge(c.offline, float64(st.OfflineSessions))
	gauge(c.sessionsLimit, float64(st.MaxSessions))
	gauge(c.queued, float64(st.Queued))
	gauge(c.queuedLimit, float64(st.MaxQueued))
	for name, v := range map[string]int{
		"conns_per_addr": st.MaxConnsPerAddr, "conns_per_identity": st.MaxConnsPerIdentity,
		"sessions_per_identity": st.MaxSessionsPerIdentity, "queued_per_session": st.MaxQueuedPerSession,
	} {
		gauge(c.limit, float64(v), name)
	}
	for reason, n := range st.Refused {
		counter(c.refused, float64(n), reason)
	}
	counter(c.refused, float64(b.refused.Load()), "reserve")
	for reason, n := range st.Dropped {
		counter(c.dropped, float64(n), reason)
	}
}
