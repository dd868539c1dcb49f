package localproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sectun/sectun/internal/localproxy/config"
	"github.com/sectun/sectun/internal/localproxy/metrics"
	"github.com/sectun/sectun/internal/proxy"
	"github.com/sectun/sectun/internal/relaytest"
	"github.com/sectun/sectun/internal/server/relay"
	"github.com/sectun/sectun/internal/tcptest"
	"github.com/sectun/sectun/tunnel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testTimeout = 20 * time.Second

// service is the real relay with tunneld's token rules.
type service struct {
	*relaytest.Service
	relay *relay.Relay
	url   string
}

func newService(t *testing.T) *service {
	s := relaytest.NewService(t, relay.Config{})
	return &service{Service: s, relay: s.Relay, url: s.URL}
}

func (s *service) open(services ...string) (id, src, dst string) { return s.Open(services...) }

// lines collects log output and lets a test wait for a line.
type lines struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	seen []string
	ch   chan struct{}
}

func newLines() *lines { return &lines{ch: make(chan struct{}, 1)} }

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.buf.Write(p)
	for {
		line, err := l.buf.ReadString('\n')
		if err != nil {
			l.buf.WriteString(line) // incomplete: keep it
			break
		}
		l.seen = append(l.seen, line)
	}
	l.mu.Unlock()
	select {
	case l.ch <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.seen, "")
}

func (l *lines) wait(t *testing.T, re string) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.After(testTimeout)
	for {
		l.mu.Lock()
		for _, s := range l.seen {
			if m := rx.FindStringSubmatch(s); m != nil {
				l.mu.Unlock()
				return m
			}
		}
		l.mu.Unlock()
		select {
		case <-l.ch:
		case <-deadline:
			t.Fatalf("no log line matching %q in:\n%s", re, l.String())
		}
	}
}

// proc is a Run in a goroutine.
type proc struct {
	log    *lines
	cancel context.CancelFunc
	done   chan error
}

func run(t *testing.T, args ...string) *proc {
	t.Helper()
	cfg, action, err := config.Parse(args, config.Environment{})
	if err != nil || action != config.ActionRun {
		t.Fatalf("Parse(%q) = %v, %v", args, action, err)
	}
	p := &proc{log: newLines(), done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() { p.done <- Run(ctx, cfg, NewLogger(p.log, 5)) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-p.done:
		case <-time.After(testTimeout):
			t.Errorf("Run did not return after cancel")
		}
		if t.Failed() {
			t.Logf("log of %q:\n%s", args, p.log.String())
		}
	})
	return p
}

func (p *proc) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		return err
	case <-time.After(testTimeout):
		t.Fatal("Run did not return")
		return nil
	}
}

// echoThrough checks that addr echoes msg, on a connection of its own.
func echoThrough(t *testing.T, addr, msg string) {
	t.Helper()
	if err := tcptest.DialRoundTrip(t.Context(), addr, []byte(msg)); err != nil {
		t.Fatal(err)
	}
}

func TestRunSourceAndDestination(t *testing.T) {
	svc := newService(t)
	_, src, dst := svc.open("SSH", "HTTP")
	a, b := tcptest.EchoServer(t).Addr(), tcptest.EchoServer(t).Addr()
	d := run(t, "-t", dst, "-e", svc.url, "-d", "SSH="+a+",HTTP="+b)
	d.log.wait(t, `Use port mapping`)
	s := run(t, "-t", src, "-e", svc.url, "-s", "SSH=0,HTTP=0", "-b", "127.0.0.1")
	sshAddr := s.log.wait(t, `Listening for SSH on (127\.0\.0\.1:\d+)`)[1]
	httpAddr := s.log.wait(t, `Listening for HTTP on (127\.0\.0\.1:\d+)`)[1]
	echoThrough(t, sshAddr, "ssh bytes")
	echoThrough(t, httpAddr, "http bytes")
	if strings.Contains(s.log.String(), src) || strings.Contains(d.log.String(), dst) {
		t.Error("a token appears in the log")
	}

	s.cancel()
	if err := s.wait(t); err != nil || ExitCode(err) != 0 {
		t.Fatalf("source after cancel: %v", err)
	}
}

func TestRunUnknownServiceFails(t *testing.T) {
	svc := newService(t)
	_, _, dst := svc.open("SSH")
	d := run(t, "-t", dst, "-e", svc.url, "-d", "SSH=22,VNC=5900")
	err := d.wait(t)
	if !errors.Is(err, config.ErrServiceIDs) || ExitCode(err) != 1 {
		t.Fatalf("err = %v (exit %d), want ErrServiceIDs, exit 1", err, ExitCode(err))
	}
	if !strings.Contains(err.Error(), "VNC") {
		t.Errorf("the error does not name the service: %v", err)
	}
}

func TestRunTokenRejectedExitsZero(t *testing.T) {
	svc := newService(t)
	p := run(t, "-t", "not-a-token", "-e", svc.url, "-s", "0")
	err := p.wait(t)
	var he *tunnel.HandshakeError
	if !errors.As(err, &he) || he.StatusCode != 401 {
		t.Fatalf("err = %v, want a 401 HandshakeError", err)
	}
	if ExitCode(err) != 0 {
		t.Fatalf("ExitCode = %d, want 0 (as the reference)", ExitCode(err))
	}
	var b bytes.Buffer
	Exit(NewLogger(&b, 4), err, false)
	if !strings.Contains(b.String(), "[error]") || !strings.Contains(b.String(), "401") {
		t.Errorf("exit line: %q", b.String())
	}
}

func TestRunTokenReuseRefused(t *testing.T) {
	svc := newService(t)
	_, _, dst := svc.open("SSH")
	a := tcptest.EchoServer(t).Addr()
	d1 := run(t, "-t", dst, "-e", svc.url, "-d", "SSH="+a)
	d1.log.wait(t, `Use port mapping`)
	// Another machine, or --single-use-token: another client token. (On
	// the same machine the derived client token reconnects, replacing
	// the first: TestRunRestartAfterMistake.)
	d2 := run(t, "-t", dst, "-e", svc.url, "-d", "SSH="+a, "--single-use-token")
	err := d2.wait(t)
	var he *tunnel.HandshakeError
	if !errors.As(err, &he) || he.StatusCode != 401 {
		t.Fatalf("second destination: %v, want HTTP 401", err)
	}
	if !strings.Contains(err.Error(), "already used") {
		t.Errorf("unclear message: %v", err)
	}
}

func TestRunTunnelClosedExitsZero(t *testing.T) {
	svc := newService(t)
	id, src, dst := svc.open("SSH")
	a := tcptest.EchoServer(t).Addr()
	d := run(t, "-t", dst, "-e", svc.url, "-d", "SSH="+a)
	d.log.wait(t, `Use port mapping`)
	s := run(t, "-t", src, "-e", svc.url, "-s", "SSH=0")
	addr := s.log.wait(t, `Listening for SSH on (\S+)`)[1]
	echoThrough(t, addr, "x")
	svc.relay.CloseTunnel(id, "tunnel closed")
	for _, p := range []*proc{s, d} {
		err := p.wait(t)
		if !errors.Is(err, tunnel.ErrTunnelClosed) || ExitCode(err) != 0 {
			t.Errorf("err = %v (exit %d), want ErrTunnelClosed, exit 0", err, ExitCode(err))
		}
	}
}

func TestRunListenFailure(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := busy.Addr().(*net.TCPAddr).Port
	svc := newService(t)
	_, src, _ := svc.open("SSH")
	p := run(t, "-t", src, "-e", svc.url, "-s", fmt.Sprintf("SSH=%d", port), "-b", "127.0.0.1")
	// The default retry count is 5 with 2.5 s between attempts; the
	// settings JSON is covered elsewhere, so only check the first failure
	// is logged and that cancel ends it.
	p.log.wait(t, `cannot listen; retrying`)
	p.cancel()
	if err := p.wait(t); ExitCode(err) != 0 {
		t.Fatalf("after cancel: %v", err)
	}
}

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{fmt.Errorf("x: %w", tunnel.ErrTunnelClosed), 0},
		{&tunnel.HandshakeError{StatusCode: 401}, 0},
		{&tunnel.HandshakeError{StatusCode: 403}, 1},
		{&tunnel.HandshakeError{StatusCode: 400}, 1},
		{config.ErrServiceIDs, 1},
		{errors.New("other"), 1},
	} {
		if got := ExitCode(tc.err); got != tc.want {
			t.Errorf("ExitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

func TestTunnelConfig(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		check func(t *testing.T, c tunnel.Config)
	}{
		{"source defaults", []string{"-t", "tok", "-r", "us-east-1", "-s", "5555"}, func(t *testing.T, c tunnel.Config) {
			if c.Mode != tunnel.ModeSource || c.AccessToken != "tok" || c.ClientToken != DerivedClientToken("tok") || len(c.ClientToken) != 64 {
				t.Errorf("mode/tokens: %+v", c)
			}
			if c.Endpoint != "wss://data.tunneling.iot.us-east-1.amazonaws.com:443" {
				t.Errorf("endpoint %q", c.Endpoint)
			}
			if c.KeepaliveInterval != 20*time.Second || c.ReconnectMin != 2500*time.Millisecond || c.MaxAttempts != 0 || c.MaxConns != 128 || c.MaxDataSize != 64512 {
				t.Errorf("settings: %+v", c)
			}
			if c.PeerVersion != 0 || c.Subprotocols != nil || c.DisableReconnect {
				t.Errorf("version: %+v", c)
			}
			if u, err := c.Proxy(nil); u != nil || err != nil {
				t.Errorf("proxy %v %v", u, err)
			}
		}},
		{"destination", []string{"-t", "tok", "-e", "ws://127.0.0.1:9", "-d", "22", "-i", strings.Repeat("c", 32), "-y", "V2"}, func(t *testing.T, c tunnel.Config) {
			if c.Mode != tunnel.ModeDestination || c.ClientToken != strings.Repeat("c", 32) || c.PeerVersion != 0 {
				t.Errorf("%+v", c)
			}
		}},
		{"V1", []string{"-t", "tok", "-e", "h:1", "-s", "1", "-y", "V1"}, func(t *testing.T, c tunnel.Config) {
			if c.PeerVersion != 1 {
				t.Errorf("PeerVersion %d", c.PeerVersion)
			}
		}},
		{"V2", []string{"-t", "tok", "-e", "h:1", "-s", "1", "-y", "V2"}, func(t *testing.T, c tunnel.Config) {
			if c.PeerVersion != 2 {
				t.Errorf("PeerVersion %d", c.PeerVersion)
			}
		}},
		{"insecure", []string{"-t", "tok", "-e", "h:1", "-s", "1", "-k"}, func(t *testing.T, c tunnel.Config) {
			if c.TLS == nil || !c.TLS.InsecureSkipVerify {
				t.Errorf("TLS %+v", c.TLS)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _, err := config.Parse(tc.args, config.Environment{})
			if err != nil {
				t.Fatal(err)
			}
			c, err := TunnelConfig(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestTunnelConfigSettings(t *testing.T) {
	cfg, _, err := config.Parse([]string{"-t", "tok", "-e", "h:1", "-s", "1"}, config.Environment{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Settings.WebSocketConnectRetryCount = 3
	cfg.Settings.ReconnectOnDataError = false
	cfg.Settings.Subprotocol = "aws.iot.securetunneling-2.0"
	cfg.Settings.MaxActiveConnections = 7
	cfg.Settings.MaxPayloadSize = 4000
	cfg.Proxy = mustURL(t, "http://proxy:3128")
	c, err := TunnelConfig(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxAttempts != 4 || !c.DisableReconnect || len(c.Subprotocols) != 1 || c.Subprotocols[0] != "aws.iot.securetunneling-2.0" || c.MaxConns != 7 || c.MaxDataSize != 4000 {
		t.Errorf("%+v", c)
	}
	if u, _ := c.Proxy(nil); u == nil || u.Host != "proxy:3128" {
		t.Errorf("proxy %v", u)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestRunMetrics: --metrics-listen serves the session's metrics from
// start-up; an open connection shows per service and as a TCP connection;
// a non-loopback address is refused without --metrics-allow-remote.
func TestRunMetrics(t *testing.T) {
	svc := newService(t)
	_, src, dst := svc.open("SSH", "HTTP")
	a, b := tcptest.EchoServer(t).Addr(), tcptest.EchoServer(t).Addr()
	d := run(t, "-t", dst, "-e", svc.url, "-d", "SSH="+a+",HTTP="+b)
	d.log.wait(t, `Use port mapping`)
	s := run(t, "-t", src, "-e", svc.url, "-s", "SSH=0,HTTP=0", "--metrics-listen", "127.0.0.1:0")
	murl := s.log.wait(t, `metrics on (http://127\.0\.0\.1:\d+/metrics)`)[1]
	sshAddr := s.log.wait(t, `Listening for SSH on (\S+)`)[1]
	s.log.wait(t, `Listening for HTTP on (\S+)`)
	if strings.Contains(d.log.String(), "metrics on") {
		t.Error("metrics served without --metrics-listen")
	}

	c, err := net.DialTimeout("tcp", sshAddr, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testTimeout))
	io.WriteString(c, "x")
	io.ReadFull(c, make([]byte, 1)) // the tunnel connection is up
	body := scrape(t, murl)
	for _, w := range []string{"sectun_tunnel_connected 1", "sectun_tunnel_reconnects_total 0", "sectun_tcp_connections 1",
		`sectun_tunnel_connections{service_id="SSH"} 1`, `sectun_tunnel_connections_started_total{service_id="SSH"} 1`} {
		if !strings.Contains(body, "\n"+w+"\n") {
			t.Errorf("no %q in:\n%s", w, body)
		}
	}
	if !strings.Contains(body, "\ngo_goroutines ") {
		t.Errorf("no go_goroutines in:\n%s", body)
	}
	c.Close()
	deadline := time.Now().Add(testTimeout)
	for !strings.Contains(scrape(t, murl), "\nsectun_tcp_connections 0\n") {
		if time.Now().After(deadline) {
			t.Fatalf("connection still counted:\n%s", scrape(t, murl))
		}
		time.Sleep(10 * time.Millisecond) // polling the gauge
	}
	s.cancel()
	s.wait(t)
	if _, err := http.Get(murl); err == nil {
		t.Error("metrics still served after Run returned")
	}

	r := run(t, "-t", src, "-e", svc.url, "-s", "0", "--metrics-listen", "0.0.0.0:0")
	if err := r.wait(t); !errors.Is(err, metrics.ErrNotLoopback) || ExitCode(err) != 1 {
		t.Errorf("non-loopback metrics address: %v", err)
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: testTimeout, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestRunBusyPortBeforeHandshake: a source port in use fails before the
// handshake, so the (single-use) access token still works for the
// corrected command.
func TestRunBusyPortBeforeHandshake(t *testing.T) {
	svc := newService(t)
	_, src, _ := svc.open("SSH")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, port, _ := net.SplitHostPort(busy.Addr().String())
	settings := filepath.Join(t.TempDir(), "s.json")
	if err := os.WriteFile(settings, []byte(`{"tunneling":{"proxy":{"tcp":{"connection_retry_count":"0"}}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	p := run(t, "-t", src, "-e", svc.url, "-s", "SSH="+port, "-b", "127.0.0.1", "--single-use-token", "--settings-json", settings)
	err = p.wait(t)
	if !errors.Is(err, proxy.ErrListen) || !strings.Contains(err.Error(), "access token is not used") {
		t.Fatalf("err = %v, want ErrListen before connecting", err)
	}
	if strings.Contains(p.log.String(), "connected") {
		t.Fatalf("it connected before failing:\n%s", p.log.String())
	}
	q := run(t, "-t", src, "-e", svc.url, "-s", "SSH=0", "-b", "127.0.0.1", "--single-use-token")
	q.log.wait(t, `Listening for SSH on`)
}

// TestRunRestartAfterMistake: a destination started with a wrong service
// ID fails after the handshake; started again on the same machine with the
// same access token and the right mapping, it reconnects (the client
// token is derived from the access token and the machine) and serves.
func TestRunRestartAfterMistake(t *testing.T) {
	svc := newService(t)
	_, src, dst := svc.open("SSH")
	echo := tcptest.EchoServer(t).Addr()
	d := run(t, "-t", dst, "-e", svc.url, "-d", "VNC="+echo)
	err := d.wait(t)
	if !errors.Is(err, config.ErrServiceIDs) || !strings.Contains(err.Error(), "start again on this machine with the same access token") {
		t.Fatalf("err = %v, want ErrServiceIDs saying how to restart", err)
	}
	d2 := run(t, "-t", dst, "-e", svc.url, "-d", "SSH="+echo)
	d2.log.wait(t, `Use port mapping`)
	s := run(t, "-t", src, "-e", svc.url, "-s", "SSH=0", "-b", "127.0.0.1")
	addr := s.log.wait(t, `Listening for SSH on (127\.0\.0\.1:\d+)`)[1]
	echoThrough(t, addr, "after the restart")

	// With --single-use-token the reference's behaviour: used up, and the
	// refusal names the rotate command.
	_, _, dst2 := svc.open("SSH")
	e := run(t, "-t", dst2, "-e", svc.url, "-d", "VNC="+echo, "--single-use-token")
	e.wait(t)
	e2 := run(t, "-t", dst2, "-e", svc.url, "-d", "SSH="+echo, "--single-use-token")
	err = e2.wait(t)
	if !errors.Is(err, tunnel.ErrTokenRejected) || !strings.Contains(err.Error(), "aws iotsecuretunneling rotate-tunnel-access-token --tunnel-id TUNNEL_ID --client-mode DESTINATION") {
		t.Fatalf("err = %v, want a refusal naming the rotate command", err)
	}
}

// TestStrictExit: the reference exits 0 when the service refuses the
// token; --strict-exit makes it 2.
func TestStrictExit(t *testing.T) {
	svc := newService(t)
	p := run(t, "-t", "not-a-token", "-e", svc.url, "-s", "0", "--strict-exit")
	err := p.wait(t)
	if ExitCode(err) != 0 || StrictExitCode(err) != ExitTokenRefused {
		t.Fatalf("ExitCode %d, StrictExitCode %d, want 0 and %d", ExitCode(err), StrictExitCode(err), ExitTokenRefused)
	}
	if got := Exit(nil, err, true); got != 2 {
		t.Fatalf("Exit(strict) = %d", got)
	}
	cfg, _, err := config.Parse([]string{"-t", "x", "-e", "h:1", "-s", "1", "--strict-exit"}, config.Environment{})
	if err != nil || !cfg.StrictExit {
		t.Fatalf("--strict-exit: %v, %+v", err, cfg)
	}
}

// TestSchemeHint: the library's error names its Config field; Exit adds
// the localproxy option that fixes it.
func TestSchemeHint(t *testing.T) {
	svc := newService(t)
	_, src, _ := svc.open("SSH")
	p := run(t, "-t", src, "-e", "wss://"+strings.TrimPrefix(svc.url, "ws://"), "-s", "0", "--single-use-token")
	err := p.wait(t)
	if !errors.Is(err, tunnel.ErrTLSNotSpoken) {
		t.Fatalf("err = %v, want ErrTLSNotSpoken at once", err)
	}
	var b bytes.Buffer
	Exit(NewLogger(&b, 4), err, false)
	if !strings.Contains(b.String(), "-e as ws://HOST:PORT") {
		t.Fatalf("exit log does not say what to pass: %s", b.String())
	}
	for _, e := range []error{tunnel.ErrTLSRequired, tunnel.ErrCertificateUntrusted} {
		if h := Hint(fmt.Errorf("x: %w", e)); h == "" {
			t.Errorf("no hint for %v", e)
		}
	}
	if !strings.Contains(Hint(tunnel.ErrCertificateUntrusted), "-c FILE or -c DIR") {
		t.Error("the CA hint does not name -c")
	}
}
