package e2e

// Security properties checked on the real binaries: no secret in any log
// at any verbosity, tokens hashed at rest, TLS 1.2+ with modern suites,
// the API refusing unauthenticated requests, the embedded broker refusing
// anonymous clients where configured and confining each device to its own
// topic. See SECURITY.md.

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// TestSecurityNoSecretInLogsOrDatabase runs a full session at the highest
// verbosity of every binary (tunneld debug logs, localproxy -v 6,
// tunnel-agent debug): tunnels opened, used, a token rotated, a token
// reused, a bogus token, a tunnel closed. No access token, client token or
// API secret appears in any output, nor in the database files, which hold
// the tokens' SHA-256 hashes.
func TestSecurityNoSecretInLogsOrDatabase(t *testing.T) {
	d := startTunneld(t, "--log-level", "debug")
	echo := echoService(t)
	secrets := map[string]string{"API secret key": d.secret}
	addTok := func(what, tok string) {
		if tok == "" {
			t.Fatalf("%s is empty", what)
		}
		secrets[what] = tok
	}

	// Tunnel 1: localproxies at -v 6 with explicit client tokens.
	t1 := d.openTunnel(t, "thing1", "ECHO")
	addTok("tunnel 1 source token", t1.SourceAccessToken)
	addTok("tunnel 1 destination token", t1.DestinationAccessToken)
	ct1, ct2 := "client-token-"+strings.Repeat("a", 24), "client-token-"+strings.Repeat("b", 24)
	addTok("client token 1", ct1)
	addTok("client token 2", ct2)
	dst := startDestination(t, d.wsURL, t1.DestinationAccessToken, "ECHO="+echo, "-v", "6", "-i", ct1)
	src, addrs := startSource(t, d.wsURL, t1.SourceAccessToken, "ECHO=0", 1, "-v", "6", "-i", ct2)
	echoRoundTrip(t, dialTCP(t, addrs["ECHO"]), "traffic at trace level")

	// Rotation of the source token: the source is disconnected; a new one
	// connects with the new token.
	var rot struct {
		SourceAccessToken string `json:"sourceAccessToken"`
	}
	if code := d.call(t, "RotateTunnelAccessToken", map[string]any{"tunnelId": t1.TunnelID, "clientMode": "SOURCE"}, &rot); code != 200 {
		t.Fatalf("RotateTunnelAccessToken: HTTP %d", code)
	}
	addTok("tunnel 1 rotated source token", rot.SourceAccessToken)
	src.waitExit(lpWait)
	src2, addrs2 := startSource(t, d.wsURL, rot.SourceAccessToken, "ECHO=0", 1, "-v", "6")
	echoRoundTrip(t, dialTCP(t, addrs2["ECHO"]), "after rotation")

	// A reused token without client token, and a bogus token: refused.
	reuse := start(t, "localproxy", tokenEnv(t1.DestinationAccessToken), "-e", d.wsURL, "-d", "ECHO="+echo, "-v", "6")
	reuse.waitExit(lpWait)
	bogus := "bogus" + strings.Repeat("Z", 38)
	addTok("bogus token", bogus)
	bad := start(t, "localproxy", tokenEnv(bogus), "-e", d.wsURL, "-s", "0", "-v", "6")
	bad.waitExit(lpWait)

	// Tunnel 2: the device side is tunnel-agent, which gets its token by
	// MQTT.
	broker := d.brokerAddr(t)
	ag := startAgent(t, "--thing", "sec-dev", "--broker", "tcp://"+broker, "--tunnel-endpoint", d.wsURL,
		"--map", "ECHO="+echo, "--log-level", "debug")
	t2 := d.openTunnel(t, "sec-dev", "ECHO")
	addTok("tunnel 2 source token", t2.SourceAccessToken)
	addTok("tunnel 2 destination token", t2.DestinationAccessToken)
	ag.waitLine(`msg="tunnel session started"`, lpWait)
	src3, addrs3 := startSource(t, d.wsURL, t2.SourceAccessToken, "ECHO=0", 1, "-v", "6")
	if _, err := echoUntil(addrs3["ECHO"], lpWait); err != nil {
		t.Fatal(err)
	}
	if code := d.call(t, "CloseTunnel", map[string]any{"tunnelId": t2.TunnelID}, nil); code != 200 {
		t.Fatalf("CloseTunnel: HTTP %d", code)
	}
	src3.waitExit(lpWait)

	// The database: hashes of the current tokens, no token.
	checkDatabase(t, d.dataDir, secrets, []string{t1.DestinationAccessToken, rot.SourceAccessToken})

	for _, p := range []*proc{src2, dst, ag, d.proc} {
		p.stop()
	}
	var total int
	for _, p := range []*proc{d.proc, dst, src, src2, src3, reuse, bad, ag} {
		out := p.output()
		total += len(out)
		for what, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("the output of %s %v contains the %s", p.name, p.cmd.Args[1:], what)
			}
		}
	}
	// The files next to the database hold no token either (the
	// credentials file holds the API key, by design).
	checkDatabase(t, d.dataDir, secrets, nil)
	t.Logf("%d secrets absent from %d bytes of logs of 8 processes and from the database files", len(secrets), total)
}

// checkDatabase checks tunneld's SQLite files (database, WAL) for the
// secrets, byte for byte, and that the tokens table holds the SHA-256 of
// each of hashed.
func checkDatabase(t *testing.T, dataDir string, secrets map[string]string, hashed []string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dataDir, "tunneld.db*"))
	if len(files) == 0 {
		t.Fatal("no database files")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for what, s := range secrets {
			if what == "API secret key" {
				continue // lives in aws-credentials, not in the database
			}
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s contains the %s", filepath.Base(f), what)
			}
		}
	}
	if len(hashed) == 0 {
		return
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dataDir, "tunneld.db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, tok := range hashed {
		sum := sha256.Sum256([]byte(tok))
		var n int
		if err := db.QueryRow(`SELECT count(*) FROM tokens WHERE hash = ?`, sum[:]).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("the tokens table has %d rows with a token's SHA-256, want 1", n)
		}
	}
}

// TestSecurityTLS: tunneld's TLS listener (API, /tunnel) and the embedded
// broker's TLS listener refuse TLS 1.0 and 1.1, accept 1.2 and 1.3, and
// with TLS 1.2 agree only on ECDHE suites with AEAD ciphers.
func TestSecurityTLS(t *testing.T) {
	d, _ := startTunneldTLS(t, "--mqtt-listen", "127.0.0.1:0", "--mqtt-tls-listen", "127.0.0.1:0")
	apiAddr := strings.TrimPrefix(d.url, "https://")
	mqttsAddr := d.waitLine(`mqtts://(\S+?)[, ]`, lpWait)[1]
	for _, l := range []struct{ name, addr string }{{"API and /tunnel", apiAddr}, {"embedded MQTT broker", mqttsAddr}} {
		t.Run(l.name, func(t *testing.T) {
			try := func(cfg *tls.Config) (*tls.ConnectionState, error) {
				cfg.InsecureSkipVerify = true // certificate checks are not the point here
				c, err := tls.DialWithDialer(&dialer, "tcp", l.addr, cfg)
				if err != nil {
					return nil, err
				}
				defer c.Close()
				st := c.ConnectionState()
				return &st, nil
			}
			for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
				if _, err := try(&tls.Config{MinVersion: v, MaxVersion: v}); err == nil {
					t.Errorf("%s accepted", tls.VersionName(v))
				}
			}
			for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
				if st, err := try(&tls.Config{MinVersion: v, MaxVersion: v}); err != nil {
					t.Errorf("%s refused: %v", tls.VersionName(v), err)
				} else {
					t.Logf("%s: %s", tls.VersionName(v), tls.CipherSuiteName(st.CipherSuite))
				}
			}
			var accepted, weak []string
			for _, cs := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
				if !containsVersion(cs.SupportedVersions, tls.VersionTLS12) {
					continue
				}
				if _, err := try(&tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{cs.ID}}); err != nil {
					continue
				}
				accepted = append(accepted, cs.Name)
				if !strings.HasPrefix(cs.Name, "TLS_ECDHE_") || !(strings.Contains(cs.Name, "_GCM_") || strings.Contains(cs.Name, "CHACHA20")) {
					weak = append(weak, cs.Name)
				}
			}
			t.Logf("TLS 1.2 suites accepted: %v", accepted)
			if len(weak) > 0 {
				t.Errorf("TLS 1.2 suites without forward secrecy or AEAD accepted: %v", weak)
			}
		})
	}
}

func containsVersion(vs []uint16, v uint16) bool {
	for _, x := range vs {
		if x == v {
			return true
		}
	}
	return false
}

// TestSecurityAPIAuth: the API refuses unsigned requests and requests
// signed with a wrong key, and tunneld refuses to serve without
// authentication or without TLS off loopback.
func TestSecurityAPIAuth(t *testing.T) {
	d := startTunneldLP(t)
	call := func(keyID, secret string) (int, string) {
		dd := *d
		dd.keyID, dd.secret = keyID, secret
		var out map[string]any
		code := dd.call(t, "ListTunnels", map[string]any{}, &out)
		return code, fmt.Sprint(out)
	}
	for _, tc := range []struct{ name, key, secret string }{
		{"unsigned", "", ""},
		{"wrong secret", d.keyID, "wrong" + d.secret},
		{"unknown key", "AKIDUNKNOWN0000000000", d.secret},
	} {
		if code, body := call(tc.key, tc.secret); code != http.StatusForbidden {
			t.Errorf("%s: HTTP %d %s, want a refusal", tc.name, code, body)
		} else {
			t.Logf("%s: HTTP %d %s", tc.name, code, body)
		}
	}
	if code, _ := call(d.keyID, d.secret); code != 200 {
		t.Fatalf("signed: HTTP %d", code)
	}

	// Off loopback, no --no-auth and no plaintext without --allow-insecure.
	// tunneld refuses before it listens.
	for _, args := range [][]string{
		{"--listen", "0.0.0.0:0", "--no-auth", "--tls-self-signed"},
		{"--listen", "0.0.0.0:0", "--plaintext"},
	} {
		p := start(t, "tunneld", nil, append(args, "--data-dir", t.TempDir(), "--mqtt-listen", "off")...)
		if code := p.waitExit(lpWait); code == 0 {
			t.Errorf("tunneld %v: exit 0, want a refusal", args)
		}
		if out := p.output(); !strings.Contains(out, "refusing") {
			t.Errorf("tunneld %v: %s", args, out)
		}
	}
}

// TestSecurityFailureLimits: an address that keeps failing /tunnel
// handshakes (bad tokens) or API authentication (bad signatures) is
// answered 429 with Retry-After before anything is checked, for a
// cool-down; other addresses would not be (one address here: loopback).
func TestSecurityFailureLimits(t *testing.T) {
	t.Run("handshakes", func(t *testing.T) {
		d := startTunneldLP(t)
		tun := d.openTunnel(t, "thing1", "SSH")
		var codes []int
		var last *http.Response
		for i := range 40 {
			req, _ := http.NewRequest("GET", d.url+"/tunnel?local-proxy-mode=source", nil)
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "websocket")
			req.Header.Set("Sec-WebSocket-Version", "13")
			req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
			req.Header.Set("Sec-WebSocket-Protocol", "aws.iot.securetunneling-3.0")
			req.Header.Set("access-token", fmt.Sprintf("guess%038d", i))
			resp, err := d.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			codes = append(codes, resp.StatusCode)
			last = resp
			if resp.StatusCode == http.StatusTooManyRequests {
				break
			}
		}
		t.Logf("answers to guessed tokens: %v", codes)
		if last.StatusCode != http.StatusTooManyRequests || last.Header.Get("Retry-After") == "" {
			t.Fatalf("no 429 with Retry-After after %d failed handshakes", len(codes))
		}
		if len(codes) < 10 {
			t.Fatalf("429 after only %d failures", len(codes))
		}
		// During the cool-down even a valid token is refused from this
		// address, before it is looked at.
		p := start(t, "localproxy", tokenEnv(tun.SourceAccessToken), "-e", d.wsURL, "-s", "0", "--settings-json", proxySettings(t, 20000, 100))
		p.waitLine(`429`, lpWait)
		p.stop()
	})
	t.Run("API", func(t *testing.T) {
		d := startTunneldLP(t)
		good := d.secret
		d.secret = "wrong" + good
		var codes []int
		for range 40 {
			var out map[string]any
			code := d.call(t, "ListTunnels", map[string]any{}, &out)
			codes = append(codes, code)
			if code == http.StatusTooManyRequests {
				break
			}
		}
		t.Logf("answers to bad signatures: %v", codes)
		if codes[len(codes)-1] != http.StatusTooManyRequests || len(codes) < 10 {
			t.Fatalf("answers %v: want 403s, then 429", codes)
		}
		d.secret = good
		if code := d.call(t, "ListTunnels", map[string]any{}, nil); code != http.StatusTooManyRequests {
			t.Fatalf("a good signature during the cool-down: HTTP %d, want 429 (refused before checking)", code)
		}
	})
}

// TestSecurityBroker: the embedded broker confines an anonymous device on
// loopback to its own notify topic (its client ID names its thing), lets
// no device publish notifications, and with --mqtt-no-anonymous refuses
// anonymous clients.
func TestSecurityBroker(t *testing.T) {
	d := startTunneld(t)
	url := "tcp://" + d.brokerAddr(t)
	connect := func(id string) (mqtt.Client, error) {
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetProtocolVersion(4).
			SetAutoReconnect(false).SetConnectTimeout(10 * time.Second))
		tok := c.Connect()
		if !tok.WaitTimeout(lpWait) {
			return nil, errors.New("connect timed out")
		}
		if tok.Error() != nil {
			return nil, tok.Error()
		}
		t.Cleanup(func() { c.Disconnect(100) })
		return c, nil
	}
	topic := func(thing string) string { return "$aws/things/" + thing + "/tunnels/notify" }
	subscribe := func(c mqtt.Client, filter string, got chan<- string) byte {
		tok := c.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) { got <- m.Topic() })
		if !tok.WaitTimeout(lpWait) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", filter, tok.Error())
		}
		return tok.(*mqtt.SubscribeToken).Result()[filter]
	}

	devA, err := connect("dev-a")
	if err != nil {
		t.Fatal(err)
	}
	devB, err := connect("dev-b")
	if err != nil {
		t.Fatal(err)
	}
	gotA, gotB := make(chan string, 16), make(chan string, 16)
	t.Logf("SUBACK codes: dev-a own topic %#x, dev-b's topic %#x, wildcard %#x",
		subscribe(devA, topic("dev-a"), gotA), subscribe(devA, topic("dev-b"), gotA), subscribe(devA, "$aws/things/+/tunnels/notify", gotA))
	subscribe(devB, topic("dev-b"), gotB)

	// A device may not publish a (forged) notification for another (the
	// broker may disconnect it for trying).
	devC, err := connect("dev-c")
	if err != nil {
		t.Fatal(err)
	}
	devC.Publish(topic("dev-b"), 1, false, `{"clientAccessToken":"forged","clientMode":"destination"}`).WaitTimeout(5 * time.Second)
	t.Logf("dev-c after publishing to dev-b's topic: connected=%v", devC.IsConnectionOpen())
	// A real notification for dev-b reaches dev-b only.
	d.openTunnel(t, "dev-b", "SSH")
	select {
	case tp := <-gotB:
		if tp != topic("dev-b") {
			t.Fatalf("dev-b got %s", tp)
		}
	case <-time.After(lpWait):
		t.Fatal("dev-b got no notification")
	}
	select {
	case tp := <-gotB:
		t.Fatalf("dev-b got a second message on %s: the forged one", tp)
	case tp := <-gotA:
		t.Fatalf("dev-a got a message on %s", tp)
	case <-time.After(500 * time.Millisecond): // anything in flight would have arrived with the real one
	}
	d.openTunnel(t, "dev-a", "SSH")
	select {
	case tp := <-gotA:
		if tp != topic("dev-a") {
			t.Fatalf("dev-a got %s", tp)
		}
	case <-time.After(lpWait):
		t.Fatal("dev-a got no notification for its own tunnel")
	}

	d2 := startTunneld(t, "--mqtt-no-anonymous")
	url = "tcp://" + d2.brokerAddr(t)
	if _, err := connect("dev-c"); err == nil {
		t.Fatal("--mqtt-no-anonymous: an anonymous client connected")
	} else {
		t.Logf("--mqtt-no-anonymous: anonymous refused: %v", err)
	}
}

var dialer = net.Dialer{Timeout: 10 * time.Second}
