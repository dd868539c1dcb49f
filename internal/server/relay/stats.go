package relay

import "github.com/prometheus/client_golang/prometheus"

// Stats is a snapshot of the relay's activity. Counters count since New.
type Stats struct {
	// Tunnels is the number of tunnels with at least one peer connected.
	Tunnels int
	// Peers is the number of connected tunnel ends (a replaced or closed
	// peer still finishing its closing handshake is not counted), remote
	// ends (AttachRemote) not included.
	Peers int
	// Handshakes counts successful handshakes.
	Handshakes int64
	// HandshakeFailures counts refused or failed handshakes by reason:
	// path, request_too_large, not_websocket, mode, access_token,
	// client_token, subprotocol, shutting_down, unauthorized, internal,
	// upgrade (failed after Authorize), fenced (tunnel closed or token
	// rotated during the handshake), rate_limited (429: the address failed
	// too often), early_data (bytes sent before the 101). Only non-zero
	// reasons are present.
	HandshakeFailures map[string]int64
	// AddressesBlocked counts times a client address was blocked for
	// failing too many handshakes (Config.HandshakeFailureLimit).
	AddressesBlocked int64
	// FramesRelayed and BytesRelayed count tunnel frames handed to a
	// receiving peer (bytes include the 2-byte length prefixes).
	FramesRelayed, BytesRelayed int64
	// FramesDropped counts frames not delivered because the receiving end
	// had no peer or was closing.
	FramesDropped int64
	// Violations counts peers closed for breaking the protocol (text and
	// oversized messages included).
	Violations int64
	// Replaced counts peers replaced by a new connection for the same end.
	Replaced int64
}

// Stats returns current figures. It takes the relay's lock briefly.
func (r *Relay) Stats() Stats {
	s := Stats{
		Handshakes: r.handshake.ok.Load(),
		Violations: r.violations.Load(),
		Replaced:   r.replaced.Load(),

		AddressesBlocked: r.failLimit.Stats().Blocks,
	}
	var c counters
	r.mu.Lock()
	c.add(&r.totals)
	for p := range r.peers {
		c.add(&p.cnt)
	}
	for a := range r.remotes {
		c.add(&a.cnt)
	}
	for _, t := range r.tunnels {
		n := 0
		for i := range t.ends {
			if e := t.ends[i].Load(); e != nil && e.local != nil {
				n++
			}
		}
		s.Peers += n
		if n > 0 {
			s.Tunnels++
		}
	}
	r.mu.Unlock()
	s.FramesRelayed, s.BytesRelayed, s.FramesDropped = c.frames.Load(), c.bytes.Load(), c.dropped.Load()
	for i := range r.handshake.failures {
		if n := r.handshake.failures[i].Load(); n > 0 {
			if s.HandshakeFailures == nil {
				s.HandshakeFailures = make(map[string]int64)
			}
			s.HandshakeFailures[failure(i).String()] = n
		}
	}
	return s
}

// collector exports Stats to Prometheus at scrape time, so the data path
// never touches a metric.
type collector struct{ r *Relay }

var (
	descTunnels    = prometheus.NewDesc("tunneld_relay_tunnels", "Tunnels with at least one peer connected.", nil, nil)
	descPeers      = prometheus.NewDesc("tunneld_relay_peers", "Connected WebSockets.", nil, nil)
	descHandshakes = prometheus.NewDesc("tunneld_relay_handshakes_total", "Successful handshakes.", nil, nil)
	descFailures   = prometheus.NewDesc("tunneld_relay_handshake_failures_total", "Refused or failed handshakes.", []string{"reason"}, nil)
	descFrames     = prometheus.NewDesc("tunneld_relay_frames_total", "Tunnel frames relayed.", nil, nil)
	descBytes      = prometheus.NewDesc("tunneld_relay_bytes_total", "Tunnel frame bytes relayed.", nil, nil)
	descDropped    = prometheus.NewDesc("tunneld_relay_frames_dropped_total", "Tunnel frames dropped because the receiving end had no peer.", nil, nil)
	descViolations = prometheus.NewDesc("tunneld_relay_violations_total", "Peers closed for protocol violations.", nil, nil)
	descReplaced   = prometheus.NewDesc("tunneld_relay_replaced_total", "Peers replaced by a reconnection.", nil, nil)
	descBlocked    = prometheus.NewDesc("tunneld_relay_addresses_blocked_total", "Times a client address was blocked for failing too many handshakes.", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTunnels, descPeers, descHandshakes, descFailures, descFrames, descBytes, descDropped, descViolations, descReplaced, descBlocked} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.r.Stats()
	ch <- prometheus.MustNewConstMetric(descTunnels, prometheus.GaugeValue, float64(s.Tunnels))
	ch <- prometheus.MustNewConstMetric(descPeers, prometheus.GaugeValue, float64(s.Peers))
	ch <- prometheus.MustNewConstMetric(descHandshakes, prometheus.CounterValue, float64(s.Handshakes))
	for i := range numFailures {
		ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(s.HandshakeFailures[i.String()]), i.String())
	}
	ch <- prometheus.MustNewConstMetric(descFrames, prometheus.CounterValue, float64(s.FramesRelayed))
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(s.BytesRelayed))
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(s.FramesDropped))
	ch <- prometheus.MustNewConstMetric(descViolations, prometheus.CounterValue, float64(s.Violations))
	ch <- prometheus.MustNewConstMetric(descReplaced, prometheus.CounterValue, float64(s.Replaced))
	ch <- prometheus.MustNewConstMetric(descBlocked, prometheus.CounterValue, float64(s.AddressesBlocked))
}
