package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/tcptest"
	"github.com/sectun/sectun/internal/wsconn"
	"github.com/sectun/sectun/wire"
)

// The localproxy end-to-end tests run the real localproxy and tunneld
// binaries (built by TestMain) against real local services: sshd, curl, Go
// servers.

const lpWait = 30 * time.Second

// startTunneldLP starts tunneld without its MQTT broker (a fixed port that
// concurrent tests would fight over; these tests need no notifications).
func startTunneldLP(t *testing.T) *tunneld {
	t.Helper()
	return startTunneld(t, "--mqtt-listen", "off")
}

func tokenEnv(tok string) []string { return []string{"AWSIOT_TUNNEL_ACCESS_TOKEN=" + tok} }

// startDestination starts a destination localproxy for the service at
// endpoint (token from the environment) and waits until it serves its
// mappings.
func startDestination(t *testing.T, endpoint, tok, mapping string, extra ...string) *proc {
	t.Helper()
	args := append([]string{"-e", endpoint, "-d", mapping}, withMetrics(extra)...)
	p := start(t, "localproxy", tokenEnv(tok), args...)
	p.waitLine(`Use port mapping`, lpWait)
	return p
}

// startSource starts a source localproxy and returns the address it
// listens on for each of n services, keyed by service ID ("" for a tunnel
// without service IDs).
func startSource(t *testing.T, endpoint, tok, mapping string, n int, extra ...string) (*proc, map[string]string) {
	t.Helper()
	args := append([]string{"-e", endpoint, "-s", mapping}, withMetrics(extra)...)
	p := start(t, "localproxy", tokenEnv(tok), args...)
	return p, listenAddrs(p, n)
}

func listenAddrs(p *proc, n int) map[string]string {
	p.t.Helper()
	addrs := map[string]string{}
	for range n {
		m := p.waitLine(`Listening for (.+?) on (\S+)`, lpWait)
		id := m[1]
		if id == "the tunnel's service" {
			id = ""
		}
		addrs[id] = m[2]
	}
	return addrs
}

// echoService is a TCP echo server on 127.0.0.1.
func echoService(t *testing.T) string {
	t.Helper()
	return tcptest.EchoServer(t).Addr()
}

// tcpService serves each connection with handle on 127.0.0.1:0.
func tcpService(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	return tcptest.NewServer(t, handle).Addr()
}

// dialTCP connects to addr with a deadline of lpWait on the connection.
func dialTCP(t *testing.T, addr string) net.Conn {
	t.Helper()
	c := tcptest.Dial(t, addr)
	c.SetDeadline(time.Now().Add(lpWait))
	return c
}

// echoRoundTrip checks that msg comes back on c.
func echoRoundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if err := tcptest.RoundTrip(context.Background(), c, []byte(msg)); err != nil {
		t.Fatal(err)
	}
}

// expectClosed reads c until the other side closes it.
func expectClosed(t *testing.T, c net.Conn, within time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("connection still open after %v", within)
	}
}

// TestLocalproxySSH runs a real ssh session through the tunnel to a real
// sshd.
func TestLocalproxySSH(t *testing.T) {
	sshd := startSSHD(t) // agent_test.go
	d := startTunneldLP(t)
	tun := d.openTunnel(t, "thing1", "SSH")
	startDestination(t, d.wsURL, tun.DestinationAccessToken, fmt.Sprintf("SSH=%d", sshd.port))
	_, addrs := startSource(t, d.wsURL, tun.SourceAccessToken, "SSH=0", 1)
	_, srcPort, _ := net.SplitHostPort(addrs["SSH"])
	sshd.sshEcho(t, srcPort, "hello")
}

// TestLocalproxyHTTPParallelCurl runs parallel curls through one service
// (simultaneous connections, V3) while another service is mapped too.
func TestLocalproxyHTTPParallelCurl(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(100 * time.Millisecond) // keep the connections open together
		fmt.Fprintf(w, "hello %s", strings.TrimPrefix(r.URL.Path, "/"))
	}))
	t.Cleanup(web.Close)
	d := startTunneldLP(t)
	tun := d.openTunnel(t, "thing1", "HTTP", "ECHO")
	startDestination(t, d.wsURL, tun.DestinationAccessToken, "HTTP="+strings.TrimPrefix(web.URL, "http://")+",ECHO="+echoService(t))
	_, addrs := startSource(t, d.wsURL, tun.SourceAccessToken, "HTTP=0,ECHO=0", 2)

	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := exec.Command("curl", "-sS", "--max-time", "20", fmt.Sprintf("http://%s/%d", addrs["HTTP"], i)).CombinedOutput()
			if err != nil {
				errs <- fmt.Errorf("curl %d: %v: %s", i, err, out)
				return
			}
			if want := fmt.Sprintf("hello %d", i); string(out) != want {
				errs <- fmt.Errorf("curl %d printed %q, want %q", i, out, want)
			}
		}()
	}
	c := dialTCP(t, addrs["ECHO"])
	echoRoundTrip(t, c, "the other service works meanwhile")
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// transfer runs tcptest.Bulk on a connection to a tcptest.BulkHandler(size,
// 2) at addr (sending stream 1, checking the service's stream 2 and its
// hash of stream 1), and returns the time taken, checks included.
func transfer(t *testing.T, addr string, size int64) time.Duration {
	t.Helper()
	c := dialTCP(t, addr)
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	if err := tcptest.Bulk(ctx, c, size, 1, 2); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

// hopEnv makes the test binary a plain TCP relay hop (see init): the
// baseline for the throughput figures runs each hop in its own process, as
// localproxy and tunneld run in theirs.
const hopEnv = "SECTUN_E2E_HOP_TARGET"

func init() {
	if target := os.Getenv(hopEnv); target != "" {
		os.Exit(runHop(target))
	}
}

// runHop forwards every connection to target until killed.
func runHop(target string) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Println("hop listening on", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return 1
		}
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			defer u.Close()
			done := make(chan struct{})
			go func() {
				io.Copy(u, c)
				u.(*net.TCPConn).CloseWrite()
				close(done)
			}()
			io.Copy(c, u)
			c.(*net.TCPConn).CloseWrite()
			<-done
		}()
	}
}

// relayHop starts a hop process forwarding to target; it returns its
// address.
func relayHop(t *testing.T, target string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := startPath(t, "hop", exe, []string{hopEnv + "=" + target})
	return p.waitLine(`hop listening on (\S+)`, lpWait)[1]
}

// TestLocalproxyBulk moves 64 MiB each way through one connection while the
// other service answers echoes, then the same through a plain 3-hop TCP
// relay, and logs both rates.
func TestLocalproxyBulk(t *testing.T) {
	size := int64(64 << 20)
	if testing.Short() {
		size = 8 << 20
	}
	bulk := tcpService(t, tcptest.BulkHandler(size, 2))
	d := startTunneldLP(t)
	tun := d.openTunnel(t, "thing1", "BULK", "ECHO")
	startDestination(t, d.wsURL, tun.DestinationAccessToken, "BULK="+bulk+",ECHO="+echoService(t))
	_, addrs := startSource(t, d.wsURL, tun.SourceAccessToken, "BULK=0,ECHO=0", 2)

	// Interactive traffic on the other service during the transfer.
	stop := make(chan struct{})
	var worst time.Duration
	var echoes int
	echoDone := make(chan error, 1)
	go func() {
		c, err := net.DialTimeout("tcp", addrs["ECHO"], lpWait)
		if err != nil {
			echoDone <- err
			return
		}
		defer c.Close()
		buf := make([]byte, 5)
		for {
			select {
			case <-stop:
				echoDone <- nil
				return
			default:
			}
			c.SetDeadline(time.Now().Add(lpWait))
			t0 := time.Now()
			if _, err := c.Write([]byte("ping!")); err != nil {
				echoDone <- err
				return
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				echoDone <- err
				return
			}
			worst = max(worst, time.Since(t0))
			echoes++
			time.Sleep(10 * time.Millisecond) // pacing, not a readiness wait
		}
	}()
	lp := transfer(t, addrs["BULK"], size)
	close(stop)
	if err := <-echoDone; err != nil {
		t.Fatalf("echo during the transfer: %v", err)
	}

	plain := transfer(t, relayHop(t, relayHop(t, relayHop(t, bulk))), size)
	mb := float64(2*size) / 1e6
	t.Logf("%d MiB each way: localproxy -> tunneld -> localproxy %.0f MB/s (%v); plain 3-hop TCP relay %.0f MB/s (%v); ratio %.2f",
		size>>20, mb/lp.Seconds(), lp.Round(time.Millisecond), mb/plain.Seconds(), plain.Round(time.Millisecond), plain.Seconds()/lp.Seconds())
	t.Logf("other service during the transfer: %d echoes, slowest %v", echoes, worst.Round(time.Millisecond))
}

// TestLocalproxyOldDestinationClientTypes runs sources with -y V2 and -y V1
// against our destination, which must follow the older message formats.
func TestLocalproxyOldDestinationClientTypes(t *testing.T) {
	d := startTunneldLP(t)
	echo := echoService(t)
	for _, tc := range []struct{ y, mapping, service string }{
		{"V2", "SSH=0", "SSH"},
		// The single anonymous mapping serves the tunnel's only service.
		{"V1", "0", "SSH"},
	} {
		t.Run(tc.y, func(t *testing.T) {
			tun := d.openTunnel(t, "thing1", "SSH")
			dst := startDestination(t, d.wsURL, tun.DestinationAccessToken, "SSH="+echo, "-v", "5")
			_, addrs := startSource(t, d.wsURL, tun.SourceAccessToken, tc.mapping, 1, "-y", tc.y)
			addr := addrs[tc.service]
			if addr == "" {
				t.Fatalf("no listener for %q: %v", tc.service, addrs)
			}
			// One connection at a time per service with V1/V2: the
			// second replaces the first.
			c1 := dialTCP(t, addr)
			echoRoundTrip(t, c1, "first "+tc.y)
			c2 := dialTCP(t, addr)
			echoRoundTrip(t, c2, "second "+tc.y)
			expectClosed(t, c1, 10*time.Second)
			c2.Close()
			c3 := dialTCP(t, addr)
			echoRoundTrip(t, c3, "third "+tc.y)
			// The destination got a STREAM_START per connection, without
			// connection ID (V1: without service ID either).
			want := `received .*msg="STREAM_START stream=3 service=\\"SSH\\""`
			if tc.y == "V1" {
				want = `received .*msg="STREAM_START stream=3"`
			}
			dst.waitLine(want, lpWait)
		})
	}
}

// TestLocalproxyDetectsV2Destination: a source without -y finds out from
// the replies that the destination speaks V2 (no connection IDs) and goes
// on in V2. The destination is a minimal V2 peer written here, echoing
// DATA without connection IDs, as an older local proxy would.
func TestLocalproxyDetectsV2Destination(t *testing.T) {
	d := startTunneldLP(t)
	tun := d.openTunnel(t, "thing1", "SSH")
	ctx, cancel := context.WithTimeout(context.Background(), lpWait)
	defer cancel()
	h := http.Header{}
	h.Set("access-token", tun.DestinationAccessToken)
	ws, _, err := wsconn.Dial(ctx, d.wsURL+"/tunnel?local-proxy-mode=destination", wsconn.DialOptions{
		Header:       h,
		Subprotocols: []string{"aws.iot.securetunneling-2.0"},
		Proxy:        func(*url.URL) (*url.URL, error) { return nil, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close(wsconn.CloseNormal, "") })
	ws.SetLiveness(lpWait)
	fr := wire.NewFrameReader(ws)
	m, err := fr.Next()
	if err != nil || m.Type != wire.TypeServiceIDs {
		t.Fatalf("first message %v, %v; want SERVICE_IDS", m, err)
	}
	go func() {
		for {
			m, err := fr.Next()
			if err != nil {
				return
			}
			if m.Type != wire.TypeData {
				continue
			}
			b, err := wire.AppendFrame(nil, &wire.Message{Type: wire.TypeData, StreamID: m.StreamID, ServiceID: m.ServiceID, Payload: m.Payload})
			if err != nil || ws.WriteMessage(context.Background(), b) != nil {
				return
			}
		}
	}()

	src, addrs := startSource(t, d.wsURL, tun.SourceAccessToken, "SSH=0", 1)
	c := dialTCP(t, addrs["SSH"])
	echoRoundTrip(t, c, "hello V2 destination")
	echoRoundTrip(t, c, "and again")
	src.waitLine(`destination speaks protocol V2`, lpWait)
}

// TestLocalproxyUnknownService: a mapping for a service the tunnel lacks is
// a start-up error naming it.
func TestLocalproxyUnknownService(t *testing.T) {
	d := startTunneldLP(t)
	tun := d.openTunnel(t, "thing1", "SSH")
	p := start(t, "localproxy", tokenEnv(tun.DestinationAccessToken), "-e", d.wsURL, "-d", "SSH=22,VNC=5900", "-i", strings.Repeat("a", 32))
	if code := p.waitExit(lpWait); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	out := p.output()
	if !strings.Contains(out, "VNC") || !strings.Contains(out, "[fatal]") {
		t.Fatalf("the error does not name the service:\n%s", out)
	}
}

// TestLocalproxyTokenReuse: a second destination with the same access token
// and no client token is refused with a clear message (exit 0 without
// retrying, as the reference does on HTTP 401).
func TestLocalproxyTokenReuse(t *testing.T) {
	d := startTunneldLP(t)
	tun := d.openTunnel(t, "thing1", "SSH")
	echo := echoService(t)
	startDestination(t, d.wsURL, tun.DestinationAccessToken, "SSH="+echo)
	// --single-use-token: a random client token, as the reference and another
	// machine have (on this machine the derived one would reconnect).
	p := start(t, "localproxy", tokenEnv(tun.DestinationAccessToken), "-e", d.wsURL, "-d", "SSH="+echo, "--single-use-token")
	if code := p.waitExit(lpWait); code != 0 {
		t.Fatalf("exit %d, want 0 (HTTP 401, as the reference)", code)
	}
	out := p.output()
	if !strings.Contains(out, "HTTP 401") || !strings.Contains(out, "already used") || !strings.Contains(out, "[error]") {
		t.Fatalf("no clear refusal in the output:\n%s", out)
	}
	if strings.Contains(out, tun.DestinationAccessToken) {
		t.Fatal("the token appears in the output")
	}
}

// TestLocalproxyCloseTunnel: CloseTunnel through the API ends both proxies
// with exit 0 and closes their local connections.
func TestLocalproxyCloseTunnel(t *testing.T) {
	d := startTunneldLP(t)
	tun := d.openTunnel(t, "thing1", "SSH")
	dst := startDestination(t, d.wsURL, tun.DestinationAccessToken, "SSH="+echoService(t))
	src, addrs := startSource(t, d.wsURL, tun.SourceAccessToken, "SSH=0", 1)
	c := dialTCP(t, addrs["SSH"])
	echoRoundTrip(t, c, "before close")
	if code := d.call(t, "CloseTunnel", map[string]any{"tunnelId": tun.TunnelID}, nil); code != 200 {
		t.Fatalf("CloseTunnel: HTTP %d", code)
	}
	for _, p := range []*proc{src, dst} {
		if code := p.waitExit(lpWait); code != 0 {
			t.Errorf("%s exit %d, want 0:\n%s", p.name, code, p.output())
		}
	}
	expectClosed(t, c, 5*time.Second)
}

// TestLocalproxySIGTERM: SIGTERM stops a proxy promptly with exit 0, closing
// its local connections.
func TestLocalproxySIGTERM(t *testing.T) {
	d := startTunneldLP(t)
	tun := d.openTunnel(t, "thing1", "SSH")
	dst := startDestination(t, d.wsURL, tun.DestinationAccessToken, "SSH="+echoService(t))
	src, addrs := startSource(t, d.wsURL, tun.SourceAccessToken, "SSH=0", 1)
	c := dialTCP(t, addrs["SSH"])
	echoRoundTrip(t, c, "before SIGTERM")
	for _, p := range []*proc{src, dst} {
		start := time.Now()
		p.cmd.Process.Signal(syscall.SIGTERM)
		if code := p.waitExit(5 * time.Second); code != 0 {
			t.Errorf("%s exit %d after SIGTERM, want 0", p.name, code)
		}
		t.Logf("%s stopped %v after SIGTERM", p.name, time.Since(start).Round(time.Millisecond))
		if p == src {
			expectClosed(t, c, 2*time.Second)
		}
	}
}

// TestLocalproxyConfigSources checks with the real binary that the access
// token comes from AWSIOT_TUNNEL_ACCESS_TOKEN or a --config file, and that
// --export-default-settings writes the reference's settings.
func TestLocalproxyConfigSources(t *testing.T) {
	t.Run("export-default-settings", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "settings.json")
		p := start(t, "localproxy", nil, "--export-default-settings", path)
		if code := p.waitExit(lpWait); code != 0 {
			t.Fatalf("exit %d:\n%s", code, p.output())
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Tunneling struct {
				Proxy struct {
					TCP struct {
						MaxActiveConnections string `json:"max_active_connections"`
					} `json:"tcp"`
					WebSocket struct {
						Subprotocol string `json:"subprotocol"`
					} `json:"websocket"`
				} `json:"proxy"`
			} `json:"tunneling"`
		}
		if err := json.Unmarshal(data, &doc); err != nil {
			t.Fatalf("%v:\n%s", err, data)
		}
		if doc.Tunneling.Proxy.TCP.MaxActiveConnections != "128" || doc.Tunneling.Proxy.WebSocket.Subprotocol != "aws.iot.securetunneling-3.0" {
			t.Fatalf("unexpected settings:\n%s", data)
		}
	})

	d := startTunneldLP(t)
	echo := echoService(t)
	t.Run("config file", func(t *testing.T) {
		tun := d.openTunnel(t, "thing1", "SSH")
		startDestination(t, d.wsURL, tun.DestinationAccessToken, "SSH="+echo)
		path := filepath.Join(t.TempDir(), "source.ini")
		ini := fmt.Sprintf("# source proxy\naccess-token = %s\nproxy-endpoint = %s\nsource-listen-port = SSH=0\nverbose = 5\n", tun.SourceAccessToken, d.wsURL)
		if err := os.WriteFile(path, []byte(ini), 0o600); err != nil {
			t.Fatal(err)
		}
		p := start(t, "localproxy", nil, "--config", path)
		addrs := listenAddrs(p, 1)
		echoRoundTrip(t, dialTCP(t, addrs["SSH"]), "via --config")
		if strings.Contains(p.output(), tun.SourceAccessToken) {
			t.Fatal("the token appears in the output")
		}
	})
	t.Run("no token", func(t *testing.T) {
		p := start(t, "localproxy", []string{"AWSIOT_TUNNEL_ACCESS_TOKEN="}, "-e", d.wsURL, "-s", "0")
		if code := p.waitExit(lpWait); code != 1 {
			t.Fatalf("exit %d, want 1", code)
		}
		if out := p.output(); strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.Contains(out, "AWSIOT_TUNNEL_ACCESS_TOKEN") {
			t.Fatalf("want one line naming the environment variable, got:\n%s", out)
		}
	})
	t.Run("help and version", func(t *testing.T) {
		for _, arg := range []string{"--help", "--version"} {
			p := start(t, "localproxy", nil, arg)
			if code := p.waitExit(lpWait); code != 0 {
				t.Errorf("%s: exit %d", arg, code)
			}
		}
	})
}

// TestLocalproxyMaxConnections: beyond tcp.max_active_connections a source
// closes new connections cleanly and keeps running.
func TestLocalproxyMaxConnections(t *testing.T) {
	d := startTunneldLP(t)
	tun := d.openTunnel(t, "thing1", "SSH")
	settings := filepath.Join(t.TempDir(), "settings.json")
	os.WriteFile(settings, []byte(`{"tunneling":{"proxy":{"tcp":{"max_active_connections":"2"}}}}`), 0o600)
	startDestination(t, d.wsURL, tun.DestinationAccessToken, "SSH="+echoService(t), "--settings-json", settings)
	src, addrs := startSource(t, d.wsURL, tun.SourceAccessToken, "SSH=0", 1, "--settings-json", settings)
	c1, c2 := dialTCP(t, addrs["SSH"]), dialTCP(t, addrs["SSH"])
	echoRoundTrip(t, c1, "one")
	echoRoundTrip(t, c2, "two")
	c3 := dialTCP(t, addrs["SSH"])
	expectClosed(t, c3, 5*time.Second)
	src.waitLine(`refused a connection: too many active connections`, lpWait)
	echoRoundTrip(t, c1, "one still works")
	select {
	case <-src.done:
		t.Fatal("the source exited")
	default:
	}
}

// TestLocalproxyReconnectAfterTunneldRestart: when tunneld restarts, both
// proxies close their connections, reconnect with their client tokens
// (generated, as none was given) and serve new connections.
func TestLocalproxyReconnectAfterTunneldRestart(t *testing.T) {
	d := startTunneldLP(t)
	tun := d.openTunnel(t, "thing1", "SSH")
	settings := filepath.Join(t.TempDir(), "settings.json")
	os.WriteFile(settings, []byte(`{"tunneling":{"proxy":{"websocket":{"retry_delay_ms":"200"}}}}`), 0o600)
	dst := startDestination(t, d.wsURL, tun.DestinationAccessToken, "SSH="+echoService(t), "--settings-json", settings)
	src, addrs := startSource(t, d.wsURL, tun.SourceAccessToken, "SSH=0", 1, "--settings-json", settings)
	c := dialTCP(t, addrs["SSH"])
	echoRoundTrip(t, c, "before the restart")

	d.stop()
	expectClosed(t, c, 10*time.Second)
	d2 := startTunneld(t, "--mqtt-listen", "off", "--listen", strings.TrimPrefix(d.url, "http://"), "--data-dir", d.dataDir)
	if d2.url != d.url {
		t.Fatalf("tunneld came back on %s, not %s", d2.url, d.url)
	}
	for _, p := range []*proc{src, dst} {
		p.waitLine(`\] +connected `, lpWait)
	}
	// The destination may come back after the source: retry briefly.
	deadline := time.Now().Add(lpWait)
	for {
		c2 := dialTCP(t, addrs["SSH"])
		c2.SetDeadline(time.Now().Add(5 * time.Second))
		_, err := io.WriteString(c2, "after")
		got := make([]byte, 5)
		if err == nil {
			_, err = io.ReadFull(c2, got)
		}
		c2.Close()
		if err == nil && string(got) == "after" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no working connection after the restart: %v", err)
		}
	}
}

// TestLocalproxyTLS runs both proxies over TLS against tunneld's
// self-signed certificate, the way the reference is used: -e host:port,
// the source trusting the CA with -c DIR, the destination with -k; without
// either, the connection fails and, with websocket.connect_retry_count 1,
// the proxy gives up with exit 1.
func TestLocalproxyTLS(t *testing.T) {
	d := startTunneld(t, "--mqtt-listen", "off", "--plaintext=false")
	if !strings.HasPrefix(d.url, "https://") {
		t.Fatalf("tunneld serves %s", d.url)
	}
	caPEM, err := os.ReadFile(filepath.Join(d.dataDir, "tls", "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	d.client = &http.Client{Timeout: lpWait, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	caDir := t.TempDir()
	os.WriteFile(filepath.Join(caDir, "ca.pem"), caPEM, 0o600)
	endpoint := strings.TrimPrefix(d.url, "https://")

	tun := d.openTunnel(t, "thing1", "SSH")
	startDestination(t, endpoint, tun.DestinationAccessToken, "SSH="+echoService(t), "-k")
	_, addrs := startSource(t, endpoint, tun.SourceAccessToken, "SSH=0", 1, "-c", caDir)
	echoRoundTrip(t, dialTCP(t, addrs["SSH"]), "over TLS")

	settings := filepath.Join(t.TempDir(), "settings.json")
	os.WriteFile(settings, []byte(`{"tunneling":{"proxy":{"websocket":{"connect_retry_count":"1","retry_delay_ms":"100"}}}}`), 0o600)
	tun2 := d.openTunnel(t, "thing1", "SSH")
	p := start(t, "localproxy", tokenEnv(tun2.SourceAccessToken), "-e", endpoint, "-s", "0", "--settings-json", settings)
	if code := p.waitExit(lpWait); code != 1 {
		t.Fatalf("untrusted certificate: exit %d, want 1:\n%s", code, p.output())
	}
	if out := p.output(); !strings.Contains(out, "certificate") {
		t.Fatalf("the failure does not mention the certificate:\n%s", out)
	}
}
