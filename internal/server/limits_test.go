package server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/sectun/sectun/internal/ratelimit"
	"github.com/sectun/sectun/tunnel"
)

// Second loopback addresses: Linux routes all of 127/8 to lo.
const (
	ipA = "127.0.0.1"
	ipB = "127.0.0.2"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// dialFrom connects to the server from the local address ip.
func (ts *testServer) dialFrom(t *testing.T, ip string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", ts.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// clientFrom is an HTTP client whose connections come from ip.
func (ts *testServer) clientFrom(ip string) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = ts.tls
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	tr.DialContext = d.DialContext
	tr.DisableKeepAlives = true
	return &http.Client{Timeout: 10 * time.Second, Transport: tr}
}

// apiFrom makes an API call from ip, signed or not.
func (ts *testServer) apiFrom(t *testing.T, ip, op string, signed bool) *http.Response {
	t.Helper()
	body := []byte("{}")
	req, _ := http.NewRequest("POST", ts.URL()+"/", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "IoTSecuredTunneling."+op)
	if signed {
		sum := sha256.Sum256(body)
		if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: ts.keyID, SecretAccessKey: ts.secret},
			req, hex.EncodeToString(sum[:]), "IoTSecuredTunneling", "us-east-1", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := ts.clientFrom(ip).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return resp
}

func TestAPIFailureLimit(t *testing.T) {
	clock := &fakeClock{now: time.Now()}
	ts := newTestServer(t, func(c *Config) {
		c.APIFailureLimit = ratelimit.Config{PerMinute: 10, Burst: 3, Cooldown: time.Minute, Now: clock.Now}
	})
	o := ts.open(t, "SSH")
	// Successes do not count.
	for range 10 {
		if resp := ts.apiFrom(t, ipA, "ListTunnels", true); resp.StatusCode != 200 {
			t.Fatalf("signed: %d", resp.StatusCode)
		}
	}
	for i := range 3 {
		if resp := ts.apiFrom(t, ipA, "ListTunnels", false); resp.StatusCode != 403 {
			t.Fatalf("unsigned %d: %d", i, resp.StatusCode)
		}
	}
	for _, signed := range []bool{false, true} {
		resp := ts.apiFrom(t, ipA, "ListTunnels", signed)
		var e struct {
			Type    string `json:"__type"`
			Message string `json:"message"`
		}
		json.NewDecoder(resp.Body).Decode(&e)
		if resp.StatusCode != 429 || resp.Header.Get("X-Amzn-ErrorType") != "ThrottlingException" || e.Type != "ThrottlingException" || resp.Header.Get("Retry-After") != "60" {
			t.Fatalf("blocked (signed=%v): %d %v %+v", signed, resp.StatusCode, resp.Header, e)
		}
	}
	if resp := ts.apiFrom(t, ipB, "ListTunnels", true); resp.StatusCode != 200 {
		t.Fatalf("other address: %d", resp.StatusCode)
	}
	// The relay's limit is separate: handshakes from ipA still reach it.
	if _, err := ts.session(t, tunnel.ModeDestination, o.DestinationAccessToken, clientTokenA); err != nil {
		t.Fatalf("tunnel from the API-blocked address: %v", err)
	}
	clock.advance(time.Minute)
	if resp := ts.apiFrom(t, ipA, "ListTunnels", true); resp.StatusCode != 200 {
		t.Fatalf("after the cool-down: %d", resp.StatusCode)
	}
	_, metrics := get(t, ts, "/metrics")
	if !strings.Contains(metrics, "tunneld_api_rate_limited_total 2") || !strings.Contains(metrics, "tunneld_api_addresses_blocked_total 1") {
		t.Errorf("metrics miss the API limit:\n%s", grepLines(metrics, "tunneld_api_"))
	}
}

// A burst of bad tokens from one address gets 429; a good token from
// another address still connects.
func TestHandshakeFailureLimit(t *testing.T) {
	ts := newTestServer(t, func(c *Config) {
		c.HandshakeFailureLimit = ratelimit.Config{Burst: 5}
	})
	o := ts.open(t, "SSH")
	handshake := func(ip, tok string) *http.Response {
		c := ts.dialFrom(t, ip)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		req, _ := http.NewRequest("GET", ts.URL()+"/tunnel?local-proxy-mode=destination", nil)
		req.Header = wsHeader(tok)
		req.Write(c)
		resp, err := http.ReadResponse(bufio.NewReader(c), req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	for i := range 5 {
		if resp := handshake(ipA, "bad-token"); resp.StatusCode != 401 {
			t.Fatalf("bad token %d: %d", i, resp.StatusCode)
		}
	}
	resp := handshake(ipA, o.DestinationAccessToken)
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "60" || resp.Header.Get("channel-id") == "" {
		t.Fatalf("after the burst: %d %v", resp.StatusCode, resp.Header)
	}
	if resp := handshake(ipB, o.DestinationAccessToken); resp.StatusCode != 101 {
		t.Fatalf("good token from %s: %d", ipB, resp.StatusCode)
	}
	// The tunnel library explains the refusal.
	_, err := ts.session(t, tunnel.ModeSource, o.SourceAccessToken, clientTokenB)
	var he *tunnel.HandshakeError
	if !errors.As(err, &he) || he.StatusCode != 429 {
		t.Fatalf("library: %v", err)
	}
	t.Logf("library error: %v", err)
}

func wsHeader(tok string) http.Header {
	h := http.Header{}
	h.Set("access-token", tok)
	h.Set("Connection", "Upgrade")
	h.Set("Upgrade", "websocket")
	h.Set("Sec-WebSocket-Version", "13")
	h.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	h.Set("Sec-WebSocket-Protocol", "aws.iot.securetunneling-3.0")
	return h
}

func get(t *testing.T, ts *testServer, path string) (int, string) {
	t.Helper()
	c := ts.clientFrom(ipB)
	resp, err := c.Get(ts.URL() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func grepLines(s, substr string) string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// waitUntil polls cond for a state change that has no event.
func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// closedBy reports whether the server closed c within d (a read returns
// EOF or a reset rather than timing out).
func closedBy(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// One address opening 100 idle connections gets only MaxConnsPerIP of
// them, which are cut after ReadHeaderTimeout; other addresses are served
// throughout; goroutines return to their number before.
func TestIdleConnectionFlood(t *testing.T) {
	const perIP, headerTimeout = 10, 500 * time.Millisecond
	ts := newTestServer(t, func(c *Config) {
		c.MaxConnsPerIP = perIP
		c.ReadHeaderTimeout = headerTimeout
	})
	get(t, ts, "/healthz")
	waitUntil(t, "no pending connections", 5*time.Second, func() bool { return ts.conns.pendingCount() == 0 })
	base := runtime.NumGoroutine()

	conns := make([]net.Conn, 100)
	for i := range conns {
		conns[i] = ts.dialFrom(t, ipA)
	}
	waitUntil(t, "90 refused", 5*time.Second, func() bool { return ts.conns.refused.Load() == 90 })
	held := runtime.NumGoroutine() - base
	t.Logf("100 idle connections from one address: %d held, %d refused, %d more goroutines", ts.conns.pendingCount(), ts.conns.refused.Load(), held)
	if n := ts.conns.pendingCount(); n != perIP {
		t.Fatalf("%d connections held, want %d", n, perIP)
	}
	if held > 3*perIP {
		t.Errorf("%d more goroutines for %d held connections", held, perIP)
	}
	if code, _ := get(t, ts, "/healthz"); code != 200 {
		t.Fatalf("another address: %d", code)
	}
	start := time.Now()
	for _, c := range conns {
		if !closedBy(c, headerTimeout+2*time.Second) {
			t.Fatal("an idle connection outlived ReadHeaderTimeout")
		}
	}
	if d := time.Since(start); d > headerTimeout+time.Second {
		t.Errorf("idle connections cut after %v", d)
	}
	waitUntil(t, "goroutines back to baseline", 5*time.Second, func() bool { return runtime.NumGoroutine() <= base })
	// The second /healthz left a keep-alive connection from another
	// address, counted until tunneld's idle cut (ReadHeaderTimeout): the
	// goroutine count can reach the baseline (which held the first one's
	// goroutine) before that, so wait for the count to drain too.
	waitUntil(t, "no connections counted", 5*time.Second, func() bool { return ts.conns.pendingCount() == 0 })
}

// Slowloris: headers or a body one byte at a time are cut at
// ReadHeaderTimeout and RequestTimeout.
func TestSlowRequests(t *testing.T) {
	const headerTimeout, requestTimeout = 500 * time.Millisecond, time.Second
	ts := newTestServer(t, func(c *Config) {
		c.ReadHeaderTimeout = headerTimeout
		c.RequestTimeout = requestTimeout
	})
	tests := []struct {
		name   string
		head   string // sent at once
		drip   string // then one byte every 50 ms
		within time.Duration
	}{
		{"headers", "GET /healthz HTTP/1.1\r\nHost: x\r\n", strings.Repeat("X-Slow: 1\r\n", 100), headerTimeout},
		{"api body", "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: 1000\r\n\r\n", strings.Repeat(" ", 1000), requestTimeout},
		{"tunnel body", "GET /tunnel HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", strings.Repeat(" ", 1000), requestTimeout},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := ts.dialFrom(t, ipA)
			start := time.Now()
			c.Write([]byte(tc.head))
			closed := make(chan struct{})
			go func() {
				defer close(closed)
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				io.Copy(io.Discard, c) // a response (the API's 400), then EOF
			}()
			sent := 0
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
		drip:
			for sent < len(tc.drip) {
				select {
				case <-closed:
					break drip
				case <-tick.C:
					if _, err := c.Write([]byte{tc.drip[sent]}); err != nil {
						break drip
					}
					sent++
				}
			}
			select {
			case <-closed:
			case <-time.After(10 * time.Second):
				t.Fatal("connection never closed")
			}
			d := time.Since(start)
			t.Logf("cut after %v and %d dripped bytes", d.Round(time.Millisecond), sent)
			if d > tc.within+time.Second {
				t.Errorf("cut after %v, want about %v", d, tc.within)
			}
		})
	}
}

// WebSockets do not count against the per-address cap: a NAT address may
// hold many tunnels. The cap applies to the other connections. Plain, TLS
// and TLS shared with MQTT (alpnmux) listeners alike.
func TestWebSocketsOutsidePerIPCap(t *testing.T) {
	const perIP = 3
	for _, sv := range []struct {
		name string
		mod  func(*Config)
	}{
		{"plain", func(*Config) {}},
		{"TLS", func(c *Config) { c.Plaintext = false }},
		{"TLS shared with MQTT", func(c *Config) { c.Plaintext = false; c.MQTT = MQTTConfig{Listen: "127.0.0.1:0"} }},
	} {
		t.Run(sv.name, func(t *testing.T) {
			ts := newTestServer(t, func(c *Config) { c.MaxConnsPerIP = perIP; sv.mod(c) })
			var sessions []*tunnel.Session
			for range 3 {
				o := ts.open(t, "SSH")
				for _, end := range []struct {
					mode tunnel.Mode
					tok  string
				}{{tunnel.ModeDestination, o.DestinationAccessToken}, {tunnel.ModeSource, o.SourceAccessToken}} {
					s, err := ts.session(t, end.mode, end.tok, clientTokenA)
					if err != nil {
						t.Fatalf("session %d: %v", len(sessions), err)
					}
					sessions = append(sessions, s)
				}
				echoDestination(sessions[len(sessions)-2])
			}
			roundTrip(t, sessions[len(sessions)-1], "SSH", "six WebSockets from one address")
			if ts.MQTTOnTLSPort() {
				// Nor do MQTT sessions of devices.
				for i := range perIP + 1 {
					f, err := CreateDevice(DeviceRequest{DataDir: ts.cfg.DataDir, Thing: "dev-" + string(rune('a'+i)), OutDir: t.TempDir()})
					if err != nil {
						t.Fatal(err)
					}
					deviceMQTT(t, ts, f)
				}
			}
			waitUntil(t, "no pending connections", 5*time.Second, func() bool { return ts.conns.pendingCount() == 0 })
			var idle []net.Conn
			for range perIP {
				idle = append(idle, ts.dialFrom(t, ipA))
			}
			waitUntil(t, "idle connections counted", 5*time.Second, func() bool { return ts.conns.pendingCount() == perIP })
			extra := ts.dialFrom(t, ipA)
			if !closedBy(extra, 5*time.Second) {
				t.Fatal("connection over the per-address cap not closed")
			}
			for _, s := range sessions {
				select {
				case <-s.Done():
					t.Fatalf("a session ended: %v", s.Err())
				default:
				}
			}
			for _, c := range idle {
				c.Close()
			}
		})
	}
}

// Over MaxConns, new connections wait (in the kernel's accept queue) until
// one closes.
func TestMaxConns(t *testing.T) {
	const total = 4
	ts := newTestServer(t, func(c *Config) { c.MaxConns = total })
	var idle []net.Conn
	for range total {
		idle = append(idle, ts.dialFrom(t, ipA))
	}
	waitUntil(t, "connections accepted", 5*time.Second, func() bool { return ts.conns.pendingCount() == total })
	c := ts.dialFrom(t, ipB) // the kernel completes the TCP handshake
	io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("served over MaxConns")
	}
	idle[0].Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("after a slot freed: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// Only TLS 1.2+ with ECDHE and AEAD suites: a TLS 1.1 client, and a TLS
// 1.2 client offering only CBC (or only non-ECDHE) suites, are refused, on
// the plain TLS listener and on the one shared with MQTT (alpnmux), for
// HTTPS and for the MQTT route alike.
func TestTLSVersionsAndSuites(t *testing.T) {
	cbc := []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256,
		tls.TLS_RSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_AES_256_CBC_SHA, tls.TLS_RSA_WITH_AES_128_CBC_SHA256,
	}
	clients := []struct {
		name string
		cfg  func(*tls.Config)
		ok   bool
	}{
		{"default", func(*tls.Config) {}, true},
		{"TLS 1.2 ECDHE GCM", func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}
		}, true},
		{"TLS 1.2 ChaCha20", func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256}
		}, true},
		{"TLS 1.1", func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11 }, false},
		{"TLS 1.0", func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS10 }, false},
		{"TLS 1.2 CBC only", func(c *tls.Config) { c.MaxVersion, c.CipherSuites = tls.VersionTLS12, cbc }, false},
		{"TLS 1.2 RSA key exchange", func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.CipherSuites = []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_RSA_WITH_AES_256_GCM_SHA384}
		}, false},
	}
	servers := []struct {
		name string
		mod  func(*Config)
		alpn []string
	}{
		{"TLS listener", func(c *Config) { c.Plaintext = false }, []string{"http/1.1"}},
		{"shared with MQTT, HTTPS", func(c *Config) { c.Plaintext = false; c.MQTT = MQTTConfig{Listen: "127.0.0.1:0"} }, []string{"http/1.1"}},
		{"shared with MQTT, MQTT route", func(c *Config) { c.Plaintext = false; c.MQTT = MQTTConfig{Listen: "127.0.0.1:0"} }, []string{MQTTALPN}},
	}
	for _, sv := range servers {
		t.Run(sv.name, func(t *testing.T) {
			ts := newTestServer(t, sv.mod)
			var certs []tls.Certificate
			if sv.alpn[0] == MQTTALPN {
				f, err := CreateDevice(DeviceRequest{DataDir: ts.cfg.DataDir, Thing: "dev", OutDir: t.TempDir()})
				if err != nil {
					t.Fatal(err)
				}
				pair, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
				if err != nil {
					t.Fatal(err)
				}
				certs = []tls.Certificate{pair}
			}
			for _, cl := range clients {
				cfg := ts.tls.Clone()
				cfg.ServerName = "127.0.0.1"
				cfg.NextProtos = sv.alpn
				cfg.Certificates = certs
				cl.cfg(cfg)
				d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				c, err := d.DialContext(ctx, "tcp", ts.Addr().String())
				cancel()
				if err == nil {
					st := c.(*tls.Conn).ConnectionState()
					t.Logf("%s: %s %s", cl.name, tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite))
					c.Close()
				}
				if (err == nil) != cl.ok {
					t.Errorf("%s: err %v, want ok=%v", cl.name, err, cl.ok)
				}
			}
		})
	}
}

// TestLimitedConnNetConn: the limiter's wrapper exposes the TCP connection,
// as tls.Conn does, so that wsconn's short kernel queues and the relay's
// read-ahead reach the socket of every tunneld WebSocket.
func TestLimitedConnNetConn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newConnLimiter(ln, 4, 4, nil)
	t.Cleanup(func() { l.Close() })
	client, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	w, ok := c.(interface{ NetConn() net.Conn })
	if !ok {
		t.Fatalf("%T has no NetConn method", c)
	}
	if _, ok := w.NetConn().(*net.TCPConn); !ok {
		t.Fatalf("NetConn() = %T, want *net.TCPConn", w.NetConn())
	}
}
