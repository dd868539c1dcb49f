package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
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
