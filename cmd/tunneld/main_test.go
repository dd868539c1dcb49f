package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/sectun/sectun/internal/ratelimit"
	"github.com/sectun/sectun/internal/server"
)

func TestDeviceCommand(t *testing.T) {
	data := t.TempDir()
	out := filepath.Join(t.TempDir(), "dev")
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"device", "create", "--data-dir", data, "--init-data-dir", "--thing", "dev-1", "--out", out, "--endpoint", "127.0.0.1"}, &stdout, &stderr)
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
		{[]string{"device", "create", "--data-dir", filepath.Join(data, "typo"), "--thing", "dev-3", "--out", out}, "does not exist"},
		{[]string{"device", "ca", "--data-dir", filepath.Join(data, "typo")}, "--init-data-dir"},
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
	var ce *server.ConfigError
	if err == nil || !strings.Contains(err.Error(), "refusing --no-auth on non-loopback address 0.0.0.0:0") || !strings.Contains(err.Error(), "--allow-insecure") ||
		strings.Contains(err.Error(), "AllowInsecure") || !errors.As(err, &ce) || ce.Field != "NoAuth" {
		t.Errorf("--no-auth on 0.0.0.0: %v", err)
	}
	// Every field a ConfigError names is rendered as its flag.
	err = run(context.Background(), []string{"--plaintext", "--listen", "0.0.0.0:0", "--data-dir", t.TempDir(), "--mqtt-listen", "off"}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "give --tls-cert/--tls-key") || !strings.Contains(err.Error(), "or set --allow-insecure") {
		t.Errorf("--plaintext on 0.0.0.0: %v", err)
	}
	err = run(context.Background(), []string{"--listen", "nohostport", "--data-dir", t.TempDir(), "--mqtt-listen", "off"}, &stdout, &stderr)
	if err == nil || !strings.HasPrefix(err.Error(), "tunneld: --listen \"nohostport\": ") {
		t.Errorf("--listen nohostport: %v", err)
	}
}

// TestDevicePrintedCommand runs what device create prints: the
// configuration file named by the printed aws-iot-device-client command
// exists, its paths are the files written, the certificate verifies
// against the CA printed (path and fingerprint), and that CA is the one a
// tunneld on the data directory loads. With --device-dir the command
// names the device's path, and the files to copy are in --out.
func TestDevicePrintedCommand(t *testing.T) {
	data := t.TempDir()
	// A tunneld ran on it: the data directory exists with its CAs.
	p := startTunneldTLS(t, data)
	p.cmd.Process.Kill()
	p.wait(t)

	out := filepath.Join(t.TempDir(), "dev")
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"device", "create", "--data-dir", data, "--thing", "dev-1", "--out", out}, &stdout, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	printed := stdout.String()
	m := regexp.MustCompile(`(?m)^  aws-iot-device-client --config-file (\S+)$`).FindStringSubmatch(printed)
	if m == nil {
		t.Fatalf("no device client command printed:\n%s", printed)
	}
	var cfg struct {
		Cert   string `json:"cert"`
		Key    string `json:"key"`
		RootCA string `json:"root-ca"`
		Thing  string `json:"thing-name"`
	}
	b, err := os.ReadFile(m[1])
	if err != nil {
		t.Fatalf("the printed command's configuration: %v", err)
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(cfg.Cert, cfg.Key)
	if err != nil {
		t.Fatalf("the configuration's cert and key: %v", err)
	}
	if _, err := os.ReadFile(cfg.RootCA); err != nil {
		t.Fatalf("the configuration's root-ca: %v", err)
	}
	caPath := filepath.Join(data, "devices", "ca.pem")
	caPEM, _ := os.ReadFile(caPath)
	blk, _ := pem.Decode(caPEM)
	ca, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"at " + caPath, "SHA-256 " + server.Fingerprint(ca), ca.Subject.String(), "--data-dir " + data} {
		if !strings.Contains(printed, want) {
			t.Errorf("output does not say %q:\n%s", want, printed)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("the certificate does not verify against the printed CA: %v", err)
	}
	root, _ := os.ReadFile(cfg.RootCA)
	dev, _ := os.ReadFile(filepath.Join(data, "tls", "ca.pem"))
	if !bytes.Equal(root, dev) {
		t.Error("root-ca.pem is not the CA of tunneld's certificate")
	}

	// --device-dir: the command names the device's path; the files are
	// in --out under the same names.
	stdout.Reset()
	if err := run(context.Background(), []string{"device", "create", "--data-dir", data, "--thing", "dev-2", "--out", out, "--device-dir", "/etc/aws-iot-device-client"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	m = regexp.MustCompile(`(?m)^  aws-iot-device-client --config-file (\S+)$`).FindStringSubmatch(stdout.String())
	if m == nil || m[1] != "/etc/aws-iot-device-client/dev-2.device-client.json" {
		t.Fatalf("command %v, want the device's path:\n%s", m, stdout.String())
	}
	if _, err := os.Stat(filepath.Join(out, filepath.Base(m[1]))); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "copy the four files of "+out+" to /etc/aws-iot-device-client") {
		t.Errorf("no copy instruction:\n%s", stdout.String())
	}
}

// TestClusterModeRefusals: cluster mode without what it needs is refused
// at startup, with a message naming the flag to add.
func TestClusterModeRefusals(t *testing.T) {
	data := t.TempDir()
	base := []string{"--data-dir", data, "--plaintext", "--no-auth", "--listen", "127.0.0.1:0"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cluster-listen", "127.0.0.1:0"}, "add --node-id"},
		{[]string{"--node-id", "n1"}, "add --cluster-listen"},
		{[]string{"--node-id", "n1", "--cluster-listen", "127.0.0.1:0"}, "add --postgres"},
		{[]string{"--node-id", "n1", "--cluster-listen", "127.0.0.1:0", "--postgres", "postgres://x@127.0.0.1:1/db"}, "add --mqtt-broker"},
		{[]string{"--node-id", "n1", "--cluster-listen", "nonsense", "--postgres", "postgres://x@127.0.0.1:1/db", "--mqtt-listen", "off"}, "--cluster-listen \"nonsense\""},
		{[]string{"--node-id", "n1", "--cluster-listen", "127.0.0.1:0", "--cluster-advertise", "nohost", "--postgres", "postgres://x@127.0.0.1:1/db", "--mqtt-listen", "off"}, "--cluster-advertise"},
	} {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), append(append([]string{}, base...), tc.args...), &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want one saying %q", tc.args, err, tc.want)
		}
	}
}
