package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/sectun/sectun/internal/certs"
	"github.com/sectun/sectun/internal/proctest"
	"github.com/sectun/sectun/internal/token"
	"github.com/sectun/sectun/tunnel"
)

// The agent end-to-end tests run tunneld, tunnel-agent and sectun connect
// (real binaries) with a real sshd and ssh, curl, and the embedded broker
// or a real Mosquitto.

const agentWait = 30 * time.Second

const agentThing = "dev-1"

// sshServer is a real sshd on a free 127.0.0.1 port accepting a generated
// key for the current user.
type sshServer struct {
	port int
	key  string // private key file of the authorized user
	user string
}

func startSSHD(t *testing.T) sshServer {
	t.Helper()
	return startSSHDPort(t, 0)
}

// startSSHDPort is startSSHD on 127.0.0.1:port (0: a free port).
func startSSHDPort(t *testing.T, port int) sshServer {
	t.Helper()
	for _, prog := range []string{"/usr/sbin/sshd", "ssh", "ssh-keygen"} {
		if _, err := exec.LookPath(prog); err != nil {
			t.Skipf("%s not installed (Debian: openssh-server, openssh-client): %v", prog, err)
		}
	}
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, name := range []string{"host", "user"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, name)).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v\n%s", err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "user.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		// sshd needs its privilege separation directory.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Skipf("cannot create /run/sshd: %v", err)
		}
	}
	if port == 0 {
		port = freePort(t)
	}
	conf := fmt.Sprintf("Port %d\nListenAddress 127.0.0.1\nHostKey %s\nPidFile none\nUsePAM no\nStrictModes no\n"+
		"AuthorizedKeysFile %s\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"+
		"PermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
		port, filepath.Join(dir, "host"), filepath.Join(dir, "authorized_keys"))
	if err := os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	sshd := startPath(t, "sshd", "/usr/sbin/sshd", nil, "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	sshd.waitLine(`Server listening on 127\.0\.0\.1 port`, agentWait)
	return sshServer{port: port, key: filepath.Join(dir, "user"), user: me.Username}
}

// sshEcho runs `ssh -p port user@127.0.0.1 echo <word>` and checks the
// output: a real shell on the device through the tunnel.
func (s sshServer) sshEcho(t *testing.T, port, word string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), agentWait)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ssh", "-p", port, "-i", s.key,
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
		"-o", "ConnectTimeout=20", s.user+"@127.0.0.1", "echo", word).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`(?m)^` + word + `\r?$`).Match(out) {
		t.Fatalf("ssh printed %q, want %s", out, word)
	}
}

// getThroughTunnel connects a library source session with cfg, GETs path
// from the device's HTTP service (webServer) through it and checks the
// answer. The session stays connected until the test ends.
func getThroughTunnel(t *testing.T, cfg tunnel.Config, path string) {
	t.Helper()
	cfg.Mode = tunnel.ModeSource
	ctx, cancel := context.WithTimeout(context.Background(), agentWait)
	defer cancel()
	src, err := tunnel.Connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	conn, err := src.Dial(ctx, "HTTP")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: device\r\n\r\n", path)
	conn.SetReadDeadline(time.Now().Add(agentWait))
	body, _ := io.ReadAll(conn)
	conn.Close()
	if !strings.Contains(string(body), "hello from the device: "+path) {
		t.Fatalf("HTTP GET %s through the tunnel: %q", path, body)
	}
}

// webServer is the device's HTTP service.
func webServer(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the device: %s\n", r.URL.Path)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func curl(t *testing.T, url, want string) {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), agentWait)
	defer cancel()
	out, err := exec.CommandContext(ctx, "curl", "-sS", "--max-time", "20", url).CombinedOutput()
	if err != nil || !strings.Contains(string(out), want) {
		t.Fatalf("curl %s: %v\n%s", url, err, out)
	}
}

// waitLines waits until p printed a line matching each of res, in any
// order.
func waitLines(t *testing.T, p *proc, timeout time.Duration, res ...string) {
	t.Helper()
	left := map[string]*regexp.Regexp{}
	for _, re := range res {
		left[re] = regexp.MustCompile(re)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for len(left) > 0 {
		line, err := p.NextLine(ctx, 0)
		if err != nil {
			t.Fatalf("%s: waiting for %v (within %v): %v", p.name, left, timeout, err)
		}
		for k, rx := range left {
			if rx.MatchString(line) {
				delete(left, k)
			}
		}
	}
}

// startTunneldTLS starts tunneld with TLS (its self-signed development CA)
// and returns it with the CA file; d.call trusts the CA.
func startTunneldTLS(t *testing.T, extra ...string) (*tunneld, string) {
	t.Helper()
	dir := t.TempDir()
	p := start(t, "tunneld", nil, append([]string{"--listen", "127.0.0.1:0", "--data-dir", dir}, extra...)...)
	u := p.waitLine(`listening on (https://\S+)`, agentWait)[1]
	ca := p.waitLine(`trust the CA at (\S+)`, agentWait)[1]
	tlsCfg, err := tunnel.TLSConfig(ca, false)
	if err != nil {
		t.Fatal(err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg
	d := &tunneld{proc: p, url: u, wsURL: strings.Replace(u, "https", "wss", 1), dataDir: dir,
		client: &http.Client{Timeout: 30 * time.Second, Transport: tr}}
	t.Cleanup(tr.CloseIdleConnections)
	creds, err := os.ReadFile(filepath.Join(dir, "aws-credentials"))
	if err != nil {
		t.Fatal(err)
	}
	d.keyID = regexp.MustCompile(`aws_access_key_id = (\S+)`).FindStringSubmatch(string(creds))[1]
	d.secret = regexp.MustCompile(`aws_secret_access_key = (\S+)`).FindStringSubmatch(string(creds))[1]
	return d, ca
}

// startAgent starts tunnel-agent and waits until it is subscribed.
func startAgent(t *testing.T, args ...string) *proc {
	t.Helper()
	p := start(t, "tunnel-agent", nil, withMetrics(args)...)
	p.waitLine(`msg="subscribed to tunnel notifications".*reconnect=false`, agentWait)
	return p
}

// connectOut is what sectun connect printed.
type connectOut struct {
	*proc
	tunnelID string
	ports    map[string]string // service -> local port
}

// sectunConnect runs sectun connect against d with d's generated
// credentials and waits for the device and the usage lines.
func sectunConnect(t *testing.T, d *tunneld, extra []string, services ...string) *connectOut {
	t.Helper()
	args := []string{"connect", "--endpoint-url", d.url, "--thing", agentThing, "--close-on-exit"}
	for _, s := range services {
		args = append(args, "--service", s)
	}
	env := []string{
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(d.dataDir, "aws-credentials"),
		"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "AWS_PROFILE=", "AWS_CA_BUNDLE=",
	}
	p := start(t, "sectun", env, append(args, extra...)...)
	c := &connectOut{proc: p, ports: map[string]string{}}
	c.tunnelID = p.waitLine(`^Opened tunnel (\S+) for thing `+agentThing, agentWait)[1]
	p.waitLine(`^Device connected\.`, agentWait)
	for range services {
		m := p.waitLine(`^\s+(\S+)\s+(?:ssh -p (\d+) |http://localhost:(\d+)/)`, agentWait)
		c.ports[m[1]] = m[2] + m[3]
	}
	return c
}

// interrupt stops sectun like Ctrl-C and checks that it closed its tunnel.
func (c *connectOut) interrupt(t *testing.T) {
	t.Helper()
	c.cmd.Process.Signal(os.Interrupt)
	c.waitLine(`^Closed tunnel `+regexp.QuoteMeta(c.tunnelID), agentWait)
	if code := c.waitExit(agentWait); code != 0 {
		t.Fatalf("sectun exited with %d", code)
	}
}

// TestAgentEmbeddedBroker: tunneld with its embedded broker, tunnel-agent
// on the device, sectun connect on the operator's side: ssh and curl
// through one tunnel, destination token rotation, close, SIGTERM.
func TestAgentEmbeddedBroker(t *testing.T) {
	sshd := startSSHD(t)
	web := webServer(t)
	d := startTunneld(t)
	broker := d.brokerAddr(t)
	ag := startAgent(t, "--thing", agentThing, "--broker", "tcp://"+broker, "--tunnel-endpoint", d.wsURL,
		"--map", fmt.Sprintf("SSH=%d", sshd.port), "--map", "HTTP="+web)

	// One command on the operator's side: a shell and a web page.
	c := sectunConnect(t, d, nil, "SSH", "HTTP")
	ag.waitLine(`msg="tunnel session started"`, agentWait)
	sshd.sshEcho(t, c.ports["SSH"], "hello")
	curl(t, "http://127.0.0.1:"+c.ports["HTTP"]+"/status", "hello from the device: /status")

	// Rotation: tunneld disconnects the old destination and notifies the
	// new token; the agent's old session ends and a new one serves the
	// same source.
	var rot struct {
		DestinationAccessToken string `json:"destinationAccessToken"`
	}
	if code := d.call(t, "RotateTunnelAccessToken", map[string]any{"tunnelId": c.tunnelID, "clientMode": "DESTINATION"}, &rot); code != 200 {
		t.Fatalf("RotateTunnelAccessToken: HTTP %d", code)
	}
	newID := token.Short(rot.DestinationAccessToken)
	waitLines(t, ag, agentWait,
		`msg="tunnel closed: session ended".*access token rotated`,
		`msg="tunnel session started" session=`+newID)
	sshd.sshEcho(t, c.ports["SSH"], "rotated")
	if got := len(regexp.MustCompile(`msg="tunnel session started"`).FindAllString(ag.output(), -1)); got != 2 {
		t.Fatalf("%d sessions started, want 2", got)
	}

	// Ctrl-C in sectun closes the tunnel; the agent's session ends.
	c.interrupt(t)
	ag.waitLine(`msg="tunnel closed: session ended" session=`+newID, agentWait)

	// SIGTERM with a session running: a clean stop within seconds.
	c2 := sectunConnect(t, d, nil, "SSH")
	ag.waitLine(`msg="tunnel session started"`, agentWait)
	sshd.sshEcho(t, c2.ports["SSH"], "again")
	start := time.Now()
	ag.cmd.Process.Signal(syscall.SIGTERM)
	if code := ag.waitExit(10 * time.Second); code != 0 {
		t.Fatalf("tunnel-agent exited with %d after SIGTERM", code)
	}
	took := time.Since(start)
	t.Logf("tunnel-agent stopped %v after SIGTERM, with one session running", took)
	if took > 5*time.Second {
		t.Errorf("tunnel-agent took %v to stop", took)
	}
	out := ag.output()
	for _, want := range []string{`msg="closing sessions" sessions=1`, `msg="session stopped"`, `msg="disconnected from the MQTT broker"`, `msg="agent stopped"`} {
		if !strings.Contains(out, want) {
			t.Errorf("tunnel-agent output lacks %s", want)
		}
	}
	if strings.Contains(out, rot.DestinationAccessToken) {
		t.Error("tunnel-agent logged an access token")
	}
	c2.interrupt(t)
}

// mosquittoBroker is a real Mosquitto with a TLS listener that requires
// client certificates (the certificate's CN is the MQTT identity), with
// persistence so that sessions survive a restart.
type mosquittoBroker struct {
	t    *testing.T
	conf string
	port int
	p    *proc
}

func startMosquitto(t *testing.T, caFile, certFile, keyFile string) *mosquittoBroker {
	t.Helper()
	const bin = "/usr/sbin/mosquitto"
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("mosquitto not installed (%v)", err)
	}
	dir := t.TempDir()
	m := &mosquittoBroker{t: t, conf: filepath.Join(dir, "mosquitto.conf"), port: freePort(t)}
	conf := fmt.Sprintf(`user root
log_dest stderr
log_type all
persistence true
persistence_location %s/
listener %d 127.0.0.1
cafile %s
certfile %s
keyfile %s
require_certificate true
use_identity_as_username true
`, dir, m.port, caFile, certFile, keyFile)
	if err := os.WriteFile(m.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	m.start()
	return m
}

func (m *mosquittoBroker) start() {
	m.t.Helper()
	for try := 0; ; try++ {
		p := startPath(m.t, "mosquitto", "/usr/sbin/mosquitto", nil, "-c", m.conf)
		ok := func() (ok bool) {
			ctx, cancel := context.WithTimeout(context.Background(), agentWait)
			defer cancel()
			for {
				line, err := p.NextLine(ctx, 0)
				switch {
				case errors.Is(err, proctest.ErrExited):
					return false
				case err != nil:
					m.t.Fatalf("mosquitto not running after %v:\n%s", agentWait, p.output())
				case strings.Contains(line, " running"):
					return true
				}
			}
		}()
		if ok {
			m.p = p
			return
		}
		if try == 20 || !strings.Contains(p.output(), "in use") {
			m.t.Fatalf("mosquitto did not start:\n%s", p.output())
		}
		time.Sleep(100 * time.Millisecond) // the old socket lingers; retry the bind
	}
}

// restart stops the broker (SIGTERM: it saves its persistence file) and
// starts it again on the same port.
func (m *mosquittoBroker) restart() {
	m.t.Helper()
	m.p.cmd.Process.Signal(syscall.SIGTERM)
	m.p.waitExit(agentWait)
	m.start()
}

// observer is an MQTT client of the test that sees the notifications and
// can publish raw payloads on the notify topic.
type observer struct {
	c     mqtt.Client
	topic string
	got   chan []byte
}

func newObserver(t *testing.T, url string, tlsCfg *tls.Config) *observer {
	t.Helper()
	o := &observer{topic: "$aws/things/" + agentThing + "/tunnels/notify", got: make(chan []byte, 16)}
	o.c = mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("observer").
		SetTLSConfig(tlsCfg).SetProtocolVersion(4).SetAutoReconnect(false))
	if tok := o.c.Connect(); !tok.WaitTimeout(agentWait) || tok.Error() != nil {
		t.Fatalf("observer connect: %v", tok.Error())
	}
	t.Cleanup(func() { o.c.Disconnect(100) })
	tok := o.c.Subscribe(o.topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		select {
		case o.got <- append([]byte(nil), m.Payload()...):
		default:
		}
	})
	if !tok.WaitTimeout(agentWait) || tok.Error() != nil {
		t.Fatalf("observer subscribe: %v", tok.Error())
	}
	return o
}

func (o *observer) publish(t *testing.T, payload []byte) {
	t.Helper()
	if tok := o.c.Publish(o.topic, 1, false, payload); !tok.WaitTimeout(agentWait) || tok.Error() != nil {
		t.Fatalf("observer publish: %v", tok.Error())
	}
}

func (o *observer) next(t *testing.T) []byte {
	t.Helper()
	select {
	case p := <-o.got:
		return p
	case <-time.After(agentWait):
		t.Fatal("no notification seen by the observer")
		return nil
	}
}

// TestAgentMosquittoTLS: tunneld (TLS) publishing to an external Mosquitto
// with client certificates, tunnel-agent subscribed to it with the
// device's certificate. Covers ssh through sectun connect, a duplicate and
// a malformed notification, a broker restart (the agent resubscribes and
// gets the next notification) and CloseTunnel ending the agent's session.
func TestAgentMosquittoTLS(t *testing.T) {
	sshd := startSSHD(t)
	web := webServer(t)
	dir := t.TempDir()
	ca, err := certs.NewCA("sectun e2e MQTT CA")
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile := write("ca.pem", ca.CertPEM)
	issue := func(name string, server bool) (string, string) {
		var is *certs.Issued
		var err error
		if server {
			is, err = ca.IssueServer([]string{"127.0.0.1", "localhost"}, time.Hour)
		} else {
			is, err = ca.IssueClient(name, time.Hour)
		}
		if err != nil {
			t.Fatal(err)
		}
		return write(name+".pem", is.CertPEM), write(name+"-key.pem", is.KeyPEM)
	}
	srvCert, srvKey := issue("broker", true)
	tdCert, tdKey := issue("tunneld", false)
	devCert, devKey := issue(agentThing, false)
	obsCert, obsKey := issue("observer", false)
	mq := startMosquitto(t, caFile, srvCert, srvKey)
	brokerURL := fmt.Sprintf("ssl://127.0.0.1:%d", mq.port)

	d, tunneldCA := startTunneldTLS(t, "--mqtt-broker", brokerURL, "--mqtt-ca", caFile, "--mqtt-cert", tdCert, "--mqtt-key", tdKey)
	ag := startAgent(t, "--thing", agentThing, "--broker", brokerURL, "--ca", caFile, "--cert", devCert, "--key", devKey,
		"--tunnel-endpoint", d.wsURL, "--tunnel-ca", tunneldCA,
		"--map", fmt.Sprintf("SSH=%d", sshd.port), "--map", "HTTP="+web)
	obsPair, err := tls.LoadX509KeyPair(obsCert, obsKey)
	if err != nil {
		t.Fatal(err)
	}
	obsTLS, err := tunnel.TLSConfig(caFile, false)
	if err != nil {
		t.Fatal(err)
	}
	obsTLS.Certificates = []tls.Certificate{obsPair}
	obs := newObserver(t, brokerURL, obsTLS)

	c := sectunConnect(t, d, []string{"--ca", tunneldCA}, "SSH")
	ag.waitLine(`msg="tunnel session started"`, agentWait)
	sshd.sshEcho(t, c.ports["SSH"], "mosquitto")

	// MQTT delivers at least once: the same notification again starts
	// nothing. A malformed one is ignored too, and the tunnel keeps working.
	note := obs.next(t)
	obs.publish(t, note)
	ag.waitLine(`msg="duplicate notification ignored"`, agentWait)
	obs.next(t) // our own duplicate
	obs.publish(t, []byte(`{"clientAccessToken":"x","clientMode":"source","region":"us-east-1","services":["SSH"]}`))
	ag.waitLine(`msg="notification ignored".*clientMode is \\"source\\"`, agentWait)
	obs.next(t)
	sshd.sshEcho(t, c.ports["SSH"], "still")

	// Broker restart: the agent reconnects, subscribes again and acts on
	// the next notification; the running tunnel never depended on MQTT.
	mq.restart()
	waitLines(t, ag, agentWait, `msg="MQTT broker unavailable; retrying"`)
	ag.waitLine(`msg="subscribed to tunnel notifications".*reconnect=true`, agentWait)
	sshd.sshEcho(t, c.ports["SSH"], "restarted")

	tun2 := d.openTunnel(t, agentThing, "HTTP")
	id2 := token.Short(tun2.DestinationAccessToken)
	ag.waitLine(`msg="tunnel session started" session=`+id2, agentWait)
	srcTLS, err := tunnel.TLSConfig(tunneldCA, false)
	if err != nil {
		t.Fatal(err)
	}
	getThroughTunnel(t, tunnel.Config{AccessToken: tun2.SourceAccessToken, Endpoint: d.wsURL, TLS: srcTLS}, "/second")

	// CloseTunnel ends the agent's session for it.
	if code := d.call(t, "CloseTunnel", map[string]any{"tunnelId": tun2.TunnelID}, nil); code != 200 {
		t.Fatalf("CloseTunnel: HTTP %d", code)
	}
	ag.waitLine(`msg="tunnel closed: session ended" session=`+id2, agentWait)
	c.interrupt(t)
	ag.waitLine(`msg="tunnel closed: session ended"`, agentWait)
}

// TestAgentTokenMode: tunnel-agent without MQTT, for scripts: the token
// comes from the environment, and the agent exits 0 when the tunnel closes.
func TestAgentTokenMode(t *testing.T) {
	web := webServer(t)
	d := startTunneld(t, "--mqtt-listen", "off")
	tun := d.openTunnel(t, "", "HTTP")
	ag := start(t, "tunnel-agent", []string{"AWSIOT_TUNNEL_ACCESS_TOKEN=" + tun.DestinationAccessToken},
		"--tunnel-endpoint", d.wsURL, "--map", "HTTP="+web)
	ag.waitLine(`msg="tunnel session started" session=`+token.Short(tun.DestinationAccessToken), agentWait)

	getThroughTunnel(t, tunnel.Config{AccessToken: tun.SourceAccessToken, Endpoint: d.wsURL}, "/token")
	if code := d.call(t, "CloseTunnel", map[string]any{"tunnelId": tun.TunnelID}, nil); code != 200 {
		t.Fatalf("CloseTunnel: HTTP %d", code)
	}
	if code := ag.waitExit(agentWait); code != 0 {
		t.Fatalf("tunnel-agent exited with %d after the tunnel closed", code)
	}
	if strings.Contains(ag.output(), tun.DestinationAccessToken) {
		t.Error("tunnel-agent logged its access token")
	}
}
