package main

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sectun/sectun/internal/agent"
	"github.com/sectun/sectun/tunnel"
)

func TestParse(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "agent.json")
	os.WriteFile(conf, []byte(`{"thingName":"file-thing","broker":"tcp://file:1883","services":{"SSH":"2222","HTTP":"localhost:80"},
		"maxTunnels":3,"passwordFile":"`+filepath.Join(dir, "pw")+`","tunnelEndpoint":"ws://file:8443","logLevel":"warn"}`), 0o600)
	os.WriteFile(filepath.Join(dir, "pw"), []byte("s3cret\n"), 0o600)
	noenv := func(string) string { return "" }
	cases := []struct {
		name     string
		args     []string
		env      map[string]string
		thing    string
		broker   string
		endpoint string
		token    string
		max      int
		services map[string]string
		password string
		err      string
	}{
		{
			name: "file only", args: []string{"--config", conf},
			thing: "file-thing", broker: "tcp://file:1883", endpoint: "ws://file:8443", max: 3, password: "s3cret",
			services: map[string]string{"SSH": "localhost:2222", "HTTP": "localhost:80"},
		},
		{
			name:  "flags override the file",
			args:  []string{"--config", conf, "--thing", "flag-thing", "--broker", "tcp://flag:1", "--map", "SSH=10.0.0.1:22", "--map", "VNC=5901", "--max-tunnels", "5", "--tunnel-endpoint", "ws://flag:1"},
			thing: "flag-thing", broker: "tcp://flag:1", endpoint: "ws://flag:1", max: 5, password: "s3cret",
			services: map[string]string{"SSH": "10.0.0.1:22", "HTTP": "localhost:80", "VNC": "localhost:5901"},
		},
		{
			name: "flags only", args: []string{"--thing", "t", "--broker", "tcp://b:1883"},
			thing: "t", broker: "tcp://b:1883", max: 16, services: map[string]string{},
		},
		{
			name: "token mode", args: []string{"--token", "abc", "--tunnel-endpoint", "ws://x:1", "--map", "SSH=22"},
			token: "abc", endpoint: "ws://x:1", max: 16, services: map[string]string{"SSH": "localhost:22"},
		},
		{
			name: "token from env", args: []string{"--tunnel-endpoint", "ws://x:1"}, env: map[string]string{tokenEnv: "envtok"},
			token: "envtok", endpoint: "ws://x:1", max: 16, services: map[string]string{},
		},
		{
			name: "env token ignored with a broker", args: []string{"--thing", "t", "--broker", "tcp://b"}, env: map[string]string{tokenEnv: "envtok"},
			thing: "t", broker: "tcp://b", max: 16, services: map[string]string{},
		},
		{name: "nothing to do", args: nil, err: "set --thing and --broker"},
		{name: "bad map", args: []string{"--thing", "t", "--broker", "tcp://b", "--map", "SSH"}, err: "--map"},
		{name: "bad level", args: []string{"--log-level", "loud"}, err: "--log-level"},
		{name: "zero max", args: []string{"--thing", "t", "--broker", "tcp://b", "--max-tunnels", "0"}, err: "--max-tunnels"},
		{name: "missing config", args: []string{"--config", filepath.Join(dir, "nope.json")}, err: "no such file"},
		{name: "extra argument", args: []string{"run"}, err: "unexpected argument"},
		{name: "missing tunnel CA", args: []string{"--thing", "t", "--broker", "tcp://b", "--tunnel-ca", filepath.Join(dir, "nope.pem")}, err: "--tunnel-ca"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			getenv := noenv
			if tc.env != nil {
				getenv = func(k string) string { return tc.env[k] }
			}
			o, err := parse(tc.args, getenv, io.Discard, io.Discard)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("parse: %+v, %v; want error containing %q", o, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c := o.cfg
			got := []any{c.ThingName, c.BrokerURL, c.TunnelEndpoint, o.token, c.MaxTunnels, c.Services, c.Password}
			want := []any{tc.thing, tc.broker, tc.endpoint, tc.token, tc.max, tc.services, tc.password}
			if d := cmp.Diff(want, got); d != "" {
				t.Fatalf("parse (-want +got):\n%s", d)
			}
		})
	}
}

func TestHelpAndVersion(t *testing.T) {
	var out strings.Builder
	if _, err := parse([]string{"--help"}, nil, io.Discard, &out); err == nil || !strings.Contains(out.String(), "--tunnel-endpoint") {
		t.Fatalf("--help: %v\n%s", err, out.String())
	}
	out.Reset()
	if o, err := parse([]string{"--version"}, nil, &out, io.Discard); err != nil || o != nil || !strings.HasPrefix(out.String(), "tunnel-agent ") {
		t.Fatalf("--version: %v, %q", err, out.String())
	}
}

// TestMetricsOptions: --metrics-listen and metricsListen in the file; the
// flag wins; a non-loopback address needs --metrics-allow-remote; the
// listener serves the agent's gauges.
func TestMetricsOptions(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "agent.json")
	os.WriteFile(conf, []byte(`{"thingName":"t","broker":"tcp://b:1883","metricsListen":"127.0.0.1:9100"}`), 0o600)
	noenv := func(string) string { return "" }
	for _, tc := range []struct {
		args   []string
		listen string
		remote bool
		err    string
	}{
		{[]string{"--thing", "t", "--broker", "tcp://b:1883"}, "", false, ""},
		{[]string{"--config", conf}, "127.0.0.1:9100", false, ""},
		{[]string{"--config", conf, "--metrics-listen", "127.0.0.1:0"}, "127.0.0.1:0", false, ""},
		{[]string{"--config", conf, "--metrics-listen", "0.0.0.0:0", "--metrics-allow-remote"}, "0.0.0.0:0", true, ""},
		{[]string{"--config", conf, "--metrics-listen", "9090"}, "", false, "HOST:PORT"},
	} {
		o, err := parse(tc.args, noenv, io.Discard, io.Discard)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want %q", tc.args, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if o.metricsListen != tc.listen || o.metricsRemote != tc.remote {
			t.Errorf("%q: %q %v, want %q %v", tc.args, o.metricsListen, o.metricsRemote, tc.listen, tc.remote)
		}
	}

	o, err := parse([]string{"--thing", "t", "--broker", "tcp://b:1883", "--metrics-listen", "0.0.0.0:0"}, noenv, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := serveMetrics(o); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("0.0.0.0 without --metrics-allow-remote: %v", err)
	}
	o.metricsListen = "127.0.0.1:0"
	srv, err := serveMetrics(o)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	o.cfg.OnEvent(agent.Subscribed{})
	o.cfg.OnEvent(agent.SessionStarted{Session: "s1"})
	o.cfg.OnTunnelEvent("s1", tunnel.Connected{})
	o.cfg.OnTunnelEvent("s1", tunnel.StreamStarted{ServiceID: "SSH", StreamID: 1, ConnectionID: 1})
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + srv.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, w := range []string{"\nsectun_agent_sessions 1\n", "\nsectun_agent_broker_subscribed 1\n", "\nsectun_tunnel_connected 1\n", "\nsectun_tunnel_connections{service_id=\"SSH\"} 1\n", "\ngo_goroutines "} {
		if !strings.Contains(string(body), w) {
			t.Errorf("no %q in:\n%s", w, body)
		}
	}
}
