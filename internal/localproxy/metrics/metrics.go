package metrics

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/sectun/sectun/tunnel"
)

// connKey identifies one tunnel connection of one session.
type connKey struct {
	session string
	service string
	stream  int32
	conn    uint32
}

// Registry holds a process's metrics. Observe feeds it a session's events;
// AddGauge adds values read at scrape time. The zero value is not usable:
// call New.
type Registry struct {
	mu          sync.Mutex
	connected   map[string]bool // session -> has a live WebSocket
	connects    uint64
	reconnects  uint64
	disconnects uint64
	conns       map[connKey]struct{}
	started     map[string]uint64 // service ID -> connections started
	gauges      []gauge
}

type gauge struct {
	name, help string
	value      func() float64
}

// New returns an empty Registry.
func New() *Registry {
	return &Registry{
		connected: map[string]bool{},
		conns:     map[connKey]struct{}{},
		started:   map[string]uint64{},
	}
}

// AddGauge adds a gauge whose value is read by value at each scrape (from
// the scraping goroutine: value must be safe for concurrent use). name is
// a Prometheus metric name; help one line.
func (r *Registry) AddGauge(name, help string, value func() float64) {
	r.mu.Lock()
	r.gauges = append(r.gauges, gauge{name, help, value})
	r.mu.Unlock()
}

// Observe records an event of the tunnel session named session (any
// string that tells a process's sessions apart; "" for a single one).
// It is meant for tunnel.Config.OnEvent, which delivers a session's events
// in order from one goroutine.
//
// The open-connection gauge follows the events: a connection is added by
// StreamStarted or ConnectionStarted and removed by its ConnectionReset,
// its stream's StreamReset, or SessionReset, Disconnected and Stopped
// (which end every connection of the session). The library drops events
// only when OnEvent falls 1024 behind; a Disconnected or Stopped later
// corrects any drift.
func (r *Registry) Observe(session string, ev tunnel.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch e := ev.(type) {
	case tunnel.Connected:
		r.connected[session] = true
		r.connects++
		if e.Reconnect {
			r.reconnects++
		}
	case tunnel.Disconnected:
		r.connected[session] = false
		r.disconnects++
		r.dropSession(session)
	case tunnel.Stopped:
		delete(r.connected, session)
		r.dropSession(session)
	case tunnel.SessionReset:
		r.dropSession(session)
	case tunnel.StreamStarted:
		r.conns[connKey{session, e.ServiceID, e.StreamID, e.ConnectionID}] = struct{}{}
		r.started[e.ServiceID]++
	case tunnel.ConnectionStarted:
		r.conns[connKey{session, e.ServiceID, e.StreamID, e.ConnectionID}] = struct{}{}
		r.started[e.ServiceID]++
	case tunnel.ConnectionReset:
		delete(r.conns, connKey{session, e.ServiceID, e.StreamID, e.ConnectionID})
	case tunnel.StreamReset:
		for k := range r.conns {
			if k.session == session && k.service == e.ServiceID && k.stream == e.StreamID {
				delete(r.conns, k)
			}
		}
	}
}

func (r *Registry) dropSession(session string) {
	for k := range r.conns {
		if k.session == session {
			delete(r.conns, k)
		}
	}
}

// WriteText writes every metric in the Prometheus text exposition format
// (version 0.0.4).
func (r *Registry) WriteText(w io.Writer) error {
	var b strings.Builder
	metric := func(name, typ, help string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	metric("go_goroutines", "gauge", "Number of goroutines that currently exist.")
	fmt.Fprintf(&b, "go_goroutines %d\n", runtime.NumGoroutine())
	if n, err := openFDs(); err == nil {
		metric("process_open_fds", "gauge", "Number of open file descriptors.")
		fmt.Fprintf(&b, "process_open_fds %d\n", n)
	}

	r.mu.Lock()
	connected := 0
	for _, up := range r.connected {
		if up {
			connected++
		}
	}
	perService := map[string]int{}
	for k := range r.conns {
		perService[k.service]++
	}
	for svc := range r.started {
		if _, ok := perService[svc]; !ok {
			perService[svc] = 0 // a service seen once stays listed, at 0
		}
	}
	started := make(map[string]uint64, len(r.started))
	for k, v := range r.started {
		started[k] = v
	}
	connects, reconnects, disconnects := r.connects, r.reconnects, r.disconnects
	gauges := slices.Clone(r.gauges)
	r.mu.Unlock()

	metric("sectun_tunnel_connected", "gauge", "Tunnel sessions with a live WebSocket to the tunneling service.")
	fmt.Fprintf(&b, "sectun_tunnel_connected %d\n", connected)
	metric("sectun_tunnel_connects_total", "counter", "WebSocket connections to the tunneling service that completed (first connections and reconnections).")
	fmt.Fprintf(&b, "sectun_tunnel_connects_total %d\n", connects)
	metric("sectun_tunnel_reconnects_total", "counter", "WebSocket connections to the tunneling service that replaced a lost one.")
	fmt.Fprintf(&b, "sectun_tunnel_reconnects_total %d\n", reconnects)
	metric("sectun_tunnel_disconnects_total", "counter", "WebSocket connections to the tunneling service that were lost.")
	fmt.Fprintf(&b, "sectun_tunnel_disconnects_total %d\n", disconnects)
	svcs := sortedKeys(perService)
	metric("sectun_tunnel_connections", "gauge", "Open tunnel connections (one per local TCP connection) per service ID.")
	for _, svc := range svcs {
		fmt.Fprintf(&b, "sectun_tunnel_connections{service_id=\"%s\"} %d\n", escapeLabel(svc), perService[svc])
	}
	metric("sectun_tunnel_connections_started_total", "counter", "Tunnel connections started per service ID.")
	for _, svc := range svcs {
		fmt.Fprintf(&b, "sectun_tunnel_connections_started_total{service_id=\"%s\"} %d\n", escapeLabel(svc), started[svc])
	}
	for _, g := range gauges {
		metric(g.name, "gauge", g.help)
		fmt.Fprintf(&b, "%s %g\n", g.name, g.value())
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// escapeLabel escapes a label value as the text format wants: backslash,
// double quote and line feed.
func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

// openFDs counts the process's open file descriptors (Linux /proc).
func openFDs() (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, err
	}
	return len(ents) - 1, nil // minus the directory being read
}
