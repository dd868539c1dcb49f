package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/sectun/sectun/internal/ratelimit"
)

func TestDeviceCommand(t *testing.T) {
	data := t.TempDir()
	out := filepath.Join(t.TempDir(), "dev")
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"device", "create", "--data-dir", data, "--thing", "dev-1", "--out", out, "--endpoint", "127.0.0.1"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	for _, name := range []string{"dev-1.cert.pem", "dev-1.private.key", "root-ca.pem", "dev-1.device-client.json"} {
		if _, err := os.Stat(filepath.Join(out, name)); err != nil {
			t.Error(err)
		}
	}
	if !strings.Contains(stdout.String(), `"thing-name": "dev-1"`) {
		t.Errorf("no configuration printed:\n%s", stdout.String())
	}
	stdout.Reset()
	if err := run(context.Background(), []string{"device", "ca", "--data-dir", data}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(stdout.String()), filepath.Join(data, "devices", "ca.pem"); got != want {
		t.Errorf("device ca printed %q, want %q", got, want)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"device", "create", "--data-dir", data, "--out", out}, "--thing"},
		{[]string{"device", "create", "--data-dir", data, "--thing", "dev-1", "--out", out}, "--force"},
		{[]string{"device", "create", "--data-dir", data, "--thing", "dev-2", "--out", out, "--endpoint", "wss://x:443"}, "bare host"},
		{[]string{"device", "renew"}, "unknown command"},
		{[]string{"device"}, "want one command"},
		{[]string{"--plaintext", "--mqtt-alpn", "--data-dir", data}, "needs TLS"},
		{[]string{"--mqtt-broker", "tcp://127.0.0.1:1", "--mqtt-alpn", "--data-dir", data}, "embedded broker"},
	} {
		err := run(context.Background(), tc.args, &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
}

func TestHelpAndLimitFlags(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, &stdout, &stderr); !errors.Is(err, pflag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"--handshake-failure-limit", "--api-failure-limit", "--failure-limit-exempt-loopback", "--max-conns ", "--max-conns-per-ip", "--read-header-timeout duration", "--request-timeout duration",
		"refused at startup on a non-loopback --listen unless --allow-insecure"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("--help does not mention %q", want)
		}
	}
	for _, tc := range []struct {
		n      int
		exempt bool
		want   ratelimit.Config
	}{
		{10, false, ratelimit.Config{PerMinute: 10}},
		{3, true, ratelimit.Config{PerMinute: 3, ExemptLoopback: true}},
		{0, false, ratelimit.Config{PerMinute: -1}},
		{-5, true, ratelimit.Config{PerMinute: -1}},
	} {
		if got := failureLimit(tc.n, tc.exempt); got.PerMinute != tc.want.PerMinute || got.ExemptLoopback != tc.want.ExemptLoopback {
			t.Errorf("failureLimit(%d, %v) = %+v", tc.n, tc.exempt, got)
		}
	}
	for _, args := range [][]string{{"--read-header-timeout", "0s"}, {"--request-timeout", "-1s"}} {
		err := run(context.Background(), append(args, "--data-dir", t.TempDir(), "--mqtt-listen", "off"), &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), "must be positive") {
			t.Errorf("%v: %v", args, err)
		}
	}
	// --no-auth on a public address is refused at startup.
	err := run(context.Background(), []string{"--no-auth", "--listen", "0.0.0.0:0", "--data-dir", t.TempDir(), "--mqtt-listen", "off"}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "--allow-insecure") {
		t.Errorf("--no-auth on 0.0.0.0: %v", err)
	}
}
