package metrics

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sectun/sectun/tunnel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestObserve(t *testing.T) {
	for _, tc := range []struct {
		name   string
		events []struct {
			session string
			ev      tunnel.Event
		}
		want []string // lines that must appear
	}{
		{
			name: "connections per service, then a reset of each kind",
			events: evs(
				"a", tunnel.Connected{},
				"a", tunnel.StreamStarted{ServiceID: "SSH", StreamID: 1, ConnectionID: 1},
				"a", tunnel.ConnectionStarted{ServiceID: "SSH", StreamID: 1, ConnectionID: 2},
				"a", tunnel.StreamStarted{ServiceID: "VNC", StreamID: 1, ConnectionID: 1},
				"a", tunnel.ConnectionReset{ServiceID: "SSH", StreamID: 1, ConnectionID: 2},
			),
			want: []string{
				"sectun_tunnel_connected 1",
				"sectun_tunnel_connects_total 1",
				"sectun_tunnel_reconnects_total 0",
				`sectun_tunnel_connections{service_id="SSH"} 1`,
				`sectun_tunnel_connections{service_id="VNC"} 1`,
				`sectun_tunnel_connections_started_total{service_id="SSH"} 2`,
			},
		},
		{
			name: "stream reset ends every connection of the stream",
			events: evs(
				"a", tunnel.StreamStarted{ServiceID: "SSH", StreamID: 1, ConnectionID: 1},
				"a", tunnel.ConnectionStarted{ServiceID: "SSH", StreamID: 1, ConnectionID: 2},
				"a", tunnel.StreamStarted{ServiceID: "SSH", StreamID: 2, ConnectionID: 1},
				"a", tunnel.StreamReset{ServiceID: "SSH", StreamID: 1},
			),
			want: []string{`sectun_tunnel_connections{service_id="SSH"} 1`},
		},
		{
			name: "disconnect ends the session's connections only; reconnect counted",
			events: evs(
				"a", tunnel.Connected{},
				"b", tunnel.Connected{},
				"a", tunnel.StreamStarted{ServiceID: "SSH", StreamID: 1, ConnectionID: 1},
				"b", tunnel.StreamStarted{ServiceID: "SSH", StreamID: 1, ConnectionID: 1},
				"a", tunnel.Disconnected{Err: errors.New("x")},
				"a", tunnel.Connected{Reconnect: true},
				"b", tunnel.Stopped{},
			),
			want: []string{
				"sectun_tunnel_connected 1",
				"sectun_tunnel_connects_total 3",
				"sectun_tunnel_reconnects_total 1",
				"sectun_tunnel_disconnects_total 1",
				`sectun_tunnel_connections{service_id="SSH"} 0`,
				`sectun_tunnel_connections_started_total{service_id="SSH"} 2`,
			},
		},
		{
			name:   "label escaping",
			events: evs("", tunnel.StreamStarted{ServiceID: "a\"b\\c\nd", StreamID: 1}),
			want:   []string{`sectun_tunnel_connections{service_id="a\"b\\c\nd"} 1`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := New()
			for _, e := range tc.events {
				r.Observe(e.session, e.ev)
			}
			var b strings.Builder
			if err := r.WriteText(&b); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(b.String(), "\n")
			for _, w := range tc.want {
				if !contains(lines, w) {
					t.Errorf("no line %q in:\n%s", w, b.String())
				}
			}
			for _, w := range []string{"go_goroutines ", "process_open_fds "} {
				if !strings.Contains(b.String(), "\n"+w) {
					t.Errorf("no %s in:\n%s", w, b.String())
				}
			}
		})
	}
}

func evs(pairs ...any) []struct {
	session string
	ev      tunnel.Event
} {
	var out []struct {
		session string
		ev      tunnel.Event
	}
	for i := 0; i < len(pairs); i += 2 {
		out = append(out, struct {
			session string
			ev      tunnel.Event
		}{pairs[i].(string), pairs[i+1].(tunnel.Event)})
	}
	return out
}

func contains(lines []string, s string) bool {
	for _, l := range lines {
		if l == s {
			return true
		}
	}
	return false
}

func TestListen(t *testing.T) {
	for _, tc := range []struct {
		addr        string
		allowRemote bool
		wantErr     error // nil: must listen
	}{
		{"127.0.0.1:0", false, nil},
		{"localhost:0", false, nil},
		{"[::1]:0", false, nil},
		{"0.0.0.0:0", false, ErrNotLoopback},
		{":0", false, ErrNotLoopback},
		{"192.0.2.1:9090", false, ErrNotLoopback},
		{"example.com:9090", false, ErrNotLoopback},
		{"0.0.0.0:0", true, nil},
		{"127.0.0.1", false, errAny},
	} {
		ln, err := Listen(tc.addr, tc.allowRemote)
		if ln != nil {
			ln.Close()
		}
		switch {
		case tc.wantErr == nil && err != nil:
			if strings.Contains(err.Error(), "cannot assign") || strings.Contains(err.Error(), "address family") {
				continue // no IPv6 loopback here
			}
			t.Errorf("Listen(%q, %v): %v", tc.addr, tc.allowRemote, err)
		case tc.wantErr == errAny && err == nil, tc.wantErr != nil && tc.wantErr != errAny && !errors.Is(err, tc.wantErr):
			t.Errorf("Listen(%q, %v): %v, want %v", tc.addr, tc.allowRemote, err, tc.wantErr)
		}
	}
}

var errAny = errors.New("any error")

func TestServe(t *testing.T) {
	r := New()
	r.AddGauge("sectun_tcp_connections", "Open local TCP connections.", func() float64 { return 3 })
	r.Observe("", tunnel.Connected{})
	ln, err := Listen("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	s := Serve(ln, r, nil)
	defer s.Close()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + ln.Addr().String() + Path)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Errorf("HTTP %d, %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	for _, w := range []string{"\nsectun_tcp_connections 3\n", "\nsectun_tunnel_connected 1\n", "# TYPE go_goroutines gauge\n"} {
		if !strings.Contains(string(body), w) {
			t.Errorf("no %q in:\n%s", w, body)
		}
	}
	for _, tc := range []struct{ method, path string }{{"POST", Path}, {"GET", "/"}, {"GET", "/debug/pprof/"}} {
		req, _ := http.NewRequest(tc.method, "http://"+ln.Addr().String()+tc.path, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Errorf("%s %s: 200", tc.method, tc.path)
		}
	}
	s.Close()
	s.Close() // idempotent
	if _, err := c.Get("http://" + ln.Addr().String() + Path); err == nil {
		t.Error("still serving after Close")
	}
}
