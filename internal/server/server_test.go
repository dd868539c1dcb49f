package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"go.uber.org/goleak"

	"github.com/sectun/sectun/tunnel"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// modernc sqlite and the HTTP client keep helper goroutines.
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreTopFunction("database/sql.(*DB).connectionOpener"),
	)
}

// testServer is an in-process tunneld on 127.0.0.1 with a settable clock.
type testServer struct {
	*Server
	mu     sync.Mutex
	now    time.Time
	keyID  string
	secret string
	wsURL  string
	tls    *tls.Config // trusts the generated CA when the server uses TLS
}

// httpClient returns a client for the API that trusts the server.
func (ts *testServer) httpClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = ts.tls
	return &http.Client{Timeout: 10 * time.Second, Transport: tr}
}

func (ts *testServer) clock() time.Time {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.now
}

func (ts *testServer) advance(d time.Duration) {
	ts.mu.Lock()
	ts.now = ts.now.Add(d)
	ts.mu.Unlock()
}

func newTestServer(t *testing.T, mod func(*Config)) *testServer {
	t.Helper()
	ts := &testServer{now: time.Now()}
	cfg := Config{
		Listen:    "127.0.0.1:0",
		DataDir:   t.TempDir(),
		Plaintext: true,
		MQTT:      MQTTConfig{Off: true},
		Now:       ts.clock,
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts.Server = srv
	ts.wsURL = strings.Replace(srv.URL(), "http", "ws", 1)
	if p := srv.CAPath(); p != "" {
		pem, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		ts.tls = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if p := srv.CredentialsPath(); p != "" {
		creds, err := loadCredentialFiles([]string{p})
		if err != nil {
			t.Fatal(err)
		}
		for id, secret := range creds {
			ts.keyID, ts.secret = id, secret
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("server did not stop")
		}
	})
	return ts
}

// call makes a SigV4-signed API call and decodes the answer.
func (ts *testServer) call(t *testing.T, op string, in, out any) int {
	t.Helper()
	body, _ := json.Marshal(in)
	req, _ := http.NewRequest("POST", ts.URL()+"/", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "IoTSecuredTunneling."+op)
	sum := sha256.Sum256(body)
	if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: ts.keyID, SecretAccessKey: ts.secret},
		req, hex.EncodeToString(sum[:]), "IoTSecuredTunneling", "us-east-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	client := ts.httpClient()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	client.CloseIdleConnections()
	data, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s: %q: %v", op, data, err)
		}
	}
	return resp.StatusCode
}

type opened struct {
	TunnelID               string `json:"tunnelId"`
	SourceAccessToken      string `json:"sourceAccessToken"`
	DestinationAccessToken string `json:"destinationAccessToken"`
}

func (ts *testServer) open(t *testing.T, services ...string) opened {
	t.Helper()
	var o opened
	in := map[string]any{"destinationConfig": map[string]any{"services": services}, "timeoutConfig": map[string]any{"maxLifetimeTimeoutMinutes": 5}}
	if code := ts.call(t, "OpenTunnel", in, &o); code != 200 {
		t.Fatalf("OpenTunnel: HTTP %d", code)
	}
	return o
}

func (ts *testServer) describe(t *testing.T, id string) map[string]any {
	t.Helper()
	var out struct{ Tunnel map[string]any }
	if code := ts.call(t, "DescribeTunnel", map[string]any{"tunnelId": id}, &out); code != 200 {
		t.Fatalf("DescribeTunnel: HTTP %d", code)
	}
	return out.Tunnel
}

func (ts *testServer) session(t *testing.T, mode tunnel.Mode, tok, clientToken string) (*tunnel.Session, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := tunnel.Connect(ctx, tunnel.Config{
		Mode: mode, AccessToken: tok, ClientToken: clientToken, Endpoint: ts.wsURL, TLS: ts.tls,
		ReconnectMin: 20 * time.Millisecond, ReconnectMax: 100 * time.Millisecond,
		Proxy: func(*url.URL) (*url.URL, error) { return nil, nil },
	})
	if err == nil {
		t.Cleanup(func() { s.Close() })
	}
	return s, err
}

// echoDestination answers every accepted connection with what it reads.
func echoDestination(dst *tunnel.Session) {
	go func() {
		for {
			c, err := dst.Accept(context.Background())
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
}

func roundTrip(t *testing.T, src *tunnel.Session, service, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := src.Dial(ctx, service)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("reading echo: %v", err)
	}
	if string(buf) != msg {
		t.Fatalf("echo %q, want %q", buf, msg)
	}
}

func waitDone(t *testing.T, s *tunnel.Session, want error) {
	t.Helper()
	select {
	case <-s.Done():
		if want != nil && !errors.Is(s.Err(), want) {
			t.Fatalf("session ended with %v, want %v", s.Err(), want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("session still running")
	}
}

const clientTokenA = "client-token-aaaaaaaaaaaaaaaaaaaaaaaaaaaa"
const clientTokenB = "client-token-bbbbbbbbbbbbbbbbbbbbbbbbbbbb"

func TestTunnelLifecycle(t *testing.T) {
	ts := newTestServer(t, nil)
	o := ts.open(t, "SSH", "HTTP")

	dst, err := ts.session(t, tunnel.ModeDestination, o.DestinationAccessToken, clientTokenA)
	if err != nil {
		t.Fatal(err)
	}
	echoDestination(dst)
	src, err := ts.session(t, tunnel.ModeSource, o.SourceAccessToken, clientTokenB)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(src.Services(), ","); got != "SSH,HTTP" {
		t.Fatalf("services %q", got)
	}
	roundTrip(t, src, "SSH", "hello over SSH")
	roundTrip(t, src, "HTTP", "hello over HTTP")

	d := ts.describe(t, o.TunnelID)
	for _, k := range []string{"sourceConnectionState", "destinationConnectionState"} {
		if st := d[k].(map[string]any)["status"]; st != "CONNECTED" {
			t.Errorf("%s = %v, want CONNECTED", k, st)
		}
	}

	// The source token is bound to its client token: another client token
	// is refused without disturbing the connected session.
	_, err = ts.session(t, tunnel.ModeSource, o.SourceAccessToken, clientTokenA)
	var he *tunnel.HandshakeError
	if !errors.As(err, &he) || he.StatusCode != 401 {
		t.Fatalf("other client token: %v, want 401", err)
	}
	roundTrip(t, src, "SSH", "still fine")

	// Reconnect with the same client token replaces the old connection.
	src.Close()
	src2, err := ts.session(t, tunnel.ModeSource, o.SourceAccessToken, clientTokenB)
	if err != nil {
		t.Fatalf("reconnect with client token: %v", err)
	}
	roundTrip(t, src2, "HTTP", "after reconnect")

	// CloseTunnel disconnects both ends for good.
	if code := ts.call(t, "CloseTunnel", map[string]any{"tunnelId": o.TunnelID}, nil); code != 200 {
		t.Fatalf("CloseTunnel: %d", code)
	}
	waitDone(t, src2, tunnel.ErrTunnelClosed)
	waitDone(t, dst, tunnel.ErrTunnelClosed)
	if _, err := ts.session(t, tunnel.ModeSource, o.SourceAccessToken, clientTokenB); !errors.Is(err, tunnel.ErrTokenRejected) {
		t.Fatalf("connect to closed tunnel: %v", err)
	}
}

func TestTokenWithoutClientTokenIsSingleUse(t *testing.T) {
	ts := newTestServer(t, nil)
	o := ts.open(t, "SSH")
	// The library always sends a client token, so speak the handshake
	// directly to leave it out.
	status := func() int {
		req, _ := http.NewRequest("GET", ts.URL()+"/tunnel?local-proxy-mode=destination", nil)
		req.Header.Set("access-token", o.DestinationAccessToken)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		req.Header.Set("Sec-WebSocket-Protocol", "aws.iot.securetunneling-3.0")
		conn, err := net.DialTimeout("tcp", ts.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		req.Write(conn)
		resp, err := http.ReadResponse(bufioReader(conn), req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Header.Get("channel-id") == "" {
			t.Error("no channel-id header")
		}
		return resp.StatusCode
	}
	if got := status(); got != http.StatusSwitchingProtocols {
		t.Fatalf("first use: HTTP %d", got)
	}
	if got := status(); got != http.StatusUnauthorized {
		t.Fatalf("second use: HTTP %d, want 401", got)
	}
}

func TestRotationDisconnectsHolder(t *testing.T) {
	ts := newTestServer(t, nil)
	o := ts.open(t, "SSH")
	dst, err := ts.session(t, tunnel.ModeDestination, o.DestinationAccessToken, clientTokenA)
	if err != nil {
		t.Fatal(err)
	}
	var rotated struct {
		DestinationAccessToken string `json:"destinationAccessToken"`
	}
	if code := ts.call(t, "RotateTunnelAccessToken", map[string]any{"tunnelId": o.TunnelID, "clientMode": "DESTINATION"}, &rotated); code != 200 {
		t.Fatalf("rotate: %d", code)
	}
	// The old token's holder is cut off and cannot come back.
	waitDone(t, dst, nil)
	if _, err := ts.session(t, tunnel.ModeDestination, o.DestinationAccessToken, clientTokenA); !errors.Is(err, tunnel.ErrTokenRejected) {
		t.Fatalf("old token after rotation: %v", err)
	}
	dst2, err := ts.session(t, tunnel.ModeDestination, rotated.DestinationAccessToken, clientTokenA)
	if err != nil {
		t.Fatalf("new token: %v", err)
	}
	echoDestination(dst2)
	src, err := ts.session(t, tunnel.ModeSource, o.SourceAccessToken, clientTokenB)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, src, "SSH", "after rotation")
}

func TestExpiryDisconnectsPeers(t *testing.T) {
	ts := newTestServer(t, nil)
	o := ts.open(t, "SSH")
	dst, err := ts.session(t, tunnel.ModeDestination, o.DestinationAccessToken, clientTokenA)
	if err != nil {
		t.Fatal(err)
	}
	ts.advance(6 * time.Minute) // lifetime is 5 minutes
	if err := ts.api.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitDone(t, dst, tunnel.ErrTunnelClosed)
	if st := ts.describe(t, o.TunnelID)["status"]; st != "CLOSED" {
		t.Fatalf("status %v after expiry", st)
	}
	// Even before a sweep, an expired tunnel refuses handshakes.
	o2 := ts.open(t, "SSH")
	ts.advance(6 * time.Minute)
	if _, err := ts.session(t, tunnel.ModeDestination, o2.DestinationAccessToken, clientTokenA); !errors.Is(err, tunnel.ErrTokenRejected) {
		t.Fatalf("expired tunnel: %v", err)
	}
}

func TestRefusesInsecurePublicListen(t *testing.T) {
	for _, c := range []Config{
		{Listen: "0.0.0.0:0", Plaintext: true},
		{Listen: "0.0.0.0:0", NoAuth: true},
	} {
		c.DataDir = t.TempDir()
		c.MQTT.Off = true
		_, err := New(context.Background(), c)
		var ce *ConfigError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), "AllowInsecure") || strings.Contains(err.Error(), "--") {
			t.Errorf("%+v: err %v, want a *ConfigError naming AllowInsecure", c, err)
		}
	}
}

// TestConfigErrorsNameFields: validation errors are *ConfigError naming
// Config fields (cmd/tunneld renders them with flags), and New refuses
// before it touches the data directory.
func TestConfigErrorsNameFields(t *testing.T) {
	for _, c := range []struct {
		cfg          Config
		field, names string
	}{
		{Config{Listen: "nohostport"}, "Listen", "Listen \"nohostport\""},
		{Config{Listen: "0.0.0.0:0", Plaintext: true}, "Plaintext", "TLSCertFile/TLSKeyFile"},
		{Config{Listen: "0.0.0.0:0", NoAuth: true}, "NoAuth", "refusing NoAuth on"},
		{Config{Plaintext: true, MQTT: MQTTConfig{ClientCAFile: "ca.pem"}}, "MQTT.ClientCAFile", "MQTT.ClientCAFile verifies devices"},
	} {
		dir := filepath.Join(t.TempDir(), "data")
		c.cfg.DataDir = dir
		_, err := New(context.Background(), c.cfg)
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != c.field || !strings.Contains(err.Error(), c.names) || strings.Contains(err.Error(), "{") {
			t.Errorf("%+v: err %v, want a *ConfigError of %s saying %q", c.cfg, err, c.field, c.names)
			continue
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%+v: the data directory was made: %v", c.cfg, err)
		}
		if got := ce.Render(func(f string) string { return "<" + f + ">" }); !strings.Contains(got, "<"+c.field+">") && c.field != "Plaintext" {
			t.Errorf("Render: %s", got)
		}
	}
}

func TestHealthzMetricsAndUnsignedRefused(t *testing.T) {
	ts := newTestServer(t, nil)
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	get := func(path string) (int, string) {
		resp, err := client.Get(ts.URL() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("healthz: %d %q", code, body)
	}
	ts.open(t, "SSH")
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "tunneld_tunnels_open 1") {
		t.Fatalf("metrics: %d, tunneld_tunnels_open missing in:\n%.2000s", code, body)
	}
	req, _ := http.NewRequest("POST", ts.URL()+"/", strings.NewReader("{}"))
	req.Header.Set("X-Amz-Target", "IoTSecuredTunneling.ListTunnels")
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 || resp.Header.Get("X-Amzn-ErrorType") != "MissingAuthenticationTokenException" {
		t.Fatalf("unsigned: %d %s", resp.StatusCode, resp.Header.Get("X-Amzn-ErrorType"))
	}
}

func TestCredentialsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "creds")
	created, err := ensureCredentialsFile(path)
	if err != nil || !created {
		t.Fatal(created, err)
	}
	if created, _ := ensureCredentialsFile(path); created {
		t.Fatal("existing file replaced")
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode().Perm())
	}
	creds, err := loadCredentialFiles([]string{path})
	if err != nil || len(creds) != 1 {
		t.Fatal(creds, err)
	}
	bad := filepath.Join(t.TempDir(), "bad")
	os.WriteFile(bad, []byte("[x]\naws_access_key_id = A\n"), 0o600)
	if _, err := loadCredentialFiles([]string{bad}); err == nil {
		t.Fatal("profile without secret accepted")
	}
}
