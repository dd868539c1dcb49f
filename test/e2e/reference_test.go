package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/tcptest"
	"github.com/sectun/sectun/tunnel"
)

// The reference interop tests run the real AWS reference local proxy (C++,
// aws-samples/aws-iot-securetunneling-localproxy, v3.x) against tunneld and
// against our localproxy. They find it in ../shared/peers/localproxy, or
// where SECTUN_REFERENCE_LOCALPROXY says, and skip when neither has it
// (peers_test.go; docs/interop.md says how to build one):
//
//	SECTUN_REFERENCE_LOCALPROXY=/path/to/localproxy go test -run Reference ./test/e2e/
//
// The reference always speaks TLS, so tunneld runs with its generated
// certificate; the reference trusts its CA with -c DIR (after openssl
// rehash DIR) and dials -e 127.0.0.1:PORT.

// refRig is a TLS tunneld the reference can use: its endpoint in the
// reference's -e form and a -c directory holding its CA.
type refRig struct {
	*tunneld
	ref      string // the reference binary
	endpoint string // 127.0.0.1:port
	caDir    string
	listen   string
}

// startRefRig starts tunneld with TLS on listen (127.0.0.1:0 for a fresh
// one) with dataDir ("" for a new one).
func startRefRig(t *testing.T, listen, dataDir string) *refRig {
	t.Helper()
	ref := referenceBinary(t)
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	p := start(t, "tunneld", nil, "--listen", listen, "--data-dir", dataDir, "--mqtt-listen", "off")
	u := p.waitLine(`listening on (https://\S+)`, lpWait)[1]
	caFile := filepath.Join(dataDir, "tls", "ca.pem")
	tlsCfg, err := tunnel.TLSConfig(caFile, false)
	if err != nil {
		t.Fatal(err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg
	t.Cleanup(tr.CloseIdleConnections)
	d := &tunneld{proc: p, url: u, wsURL: strings.Replace(u, "https", "wss", 1), dataDir: dataDir,
		client: &http.Client{Timeout: lpWait, Transport: tr}}
	creds, err := os.ReadFile(filepath.Join(dataDir, "aws-credentials"))
	if err != nil {
		t.Fatal(err)
	}
	d.keyID = regexp.MustCompile(`aws_access_key_id = (\S+)`).FindStringSubmatch(string(creds))[1]
	d.secret = regexp.MustCompile(`aws_secret_access_key = (\S+)`).FindStringSubmatch(string(creds))[1]

	caDir := t.TempDir()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(caDir, "ca.pem"), pem, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("openssl", "rehash", caDir).CombinedOutput(); err != nil {
		t.Fatalf("openssl rehash: %v: %s", err, out)
	}
	hostPort := strings.TrimPrefix(u, "https://")
	return &refRig{tunneld: d, ref: ref, endpoint: hostPort, caDir: caDir, listen: hostPort}
}

// refProc starts the reference with the token in its environment, the
// rig's endpoint and CA and debug logging (the readiness lines below are
// debug lines).
func (r *refRig) refProc(t *testing.T, name, tok string, args ...string) *proc {
	t.Helper()
	v := os.Getenv("SECTUN_REFERENCE_VERBOSE") // a debugging aid: 6 = trace
	if v == "" {
		v = "5"
	}
	args = append([]string{"-e", r.endpoint, "-c", r.caDir, "-v", v}, args...)
	p := startPath(t, name, r.ref, []string{"AWSIOT_TUNNEL_ACCESS_TOKEN=" + tok}, args...)
	t.Cleanup(func() {
		// Runs before startPath's stop: says whether it ended on its own.
		select {
		case <-p.done:
			t.Logf("%s had exited by itself: %v", name, p.Err())
		default:
		}
	})
	return p
}

// refDestination starts a reference destination and waits until it has
// the tunnel's service IDs (so a source can start streams).
func (r *refRig) refDestination(t *testing.T, tok, mapping string, extra ...string) *proc {
	t.Helper()
	p := r.refProc(t, "reference-destination", tok, append([]string{"-d", mapping}, extra...)...)
	p.waitLine(`Extracting service Ids from control message`, lpWait)
	return p
}

// refSource starts a reference source listening on a free port per service
// (the reference cannot report a port it picked for an explicit mapping)
// and returns the addresses by service ID ("" for a -s PORT mapping).
func (r *refRig) refSource(t *testing.T, tok string, services []string, extra ...string) (*proc, map[string]string) {
	t.Helper()
	addrs := map[string]string{}
	var mapping []string
	for _, s := range services {
		port := strconv.Itoa(freePort(t))
		addrs[s] = "127.0.0.1:" + port
		if s == "" {
			mapping = append(mapping, port)
		} else {
			mapping = append(mapping, s+"="+port)
		}
	}
	p := r.refProc(t, "reference-source", tok, append([]string{"-s", strings.Join(mapping, ",")}, extra...)...)
	for range services {
		p.waitLine(`Listening for new connection on port \d+`, lpWait)
	}
	return p, addrs
}

// ourDestination and ourSource run our localproxy against the rig.
func (r *refRig) ourDestination(t *testing.T, tok, mapping string, extra ...string) *proc {
	t.Helper()
	return startDestination(t, r.endpoint, tok, mapping, append([]string{"-c", r.caDir}, extra...)...)
}

func (r *refRig) ourSource(t *testing.T, tok string, services []string, extra ...string) (*proc, map[string]string) {
	t.Helper()
	var mapping []string
	for _, s := range services {
		if s == "" {
			mapping = append(mapping, "0")
		} else {
			mapping = append(mapping, s+"=0")
		}
	}
	return startSource(t, r.endpoint, tok, strings.Join(mapping, ","), len(services), append([]string{"-c", r.caDir}, extra...)...)
}

// refServices are the two local services of the V3 scenarios: ECHO (an
// echo server) and BULK (bulkService: both directions checksummed).
type refServices struct{ echo, bulk string }

const refBulkSize = 1 << 20

func startRefServices(t *testing.T) refServices {
	t.Helper()
	return refServices{echo: echoService(t), bulk: tcpService(t, tcptest.BulkHandler(refBulkSize, 2))}
}

func (s refServices) mapping() string { return "ECHO=" + s.echo + ",BULK=" + s.bulk }

// v3Workload opens n connections on ECHO and n on BULK, all open at the
// same time (CONNECTION_START), runs the n bulk transfers at once (both
// directions checksummed) while the echo connections exchange interleaved
// messages, closes one echo connection while the others go on
// (CONNECTION_RESET), and opens one more; then, once the source has seen
// every bulk connection close, it opens a new one on BULK (a service whose
// connections all ended) and transfers again.
type sourceHooks struct {
	// accepted(service, k), when not nil, returns once the source has
	// accepted the k-th connection to a service: the reference source
	// listens with a backlog of 0, so connections are made one at a time
	// (see TestReferenceKnownBugSimultaneousConnects).
	accepted func(service string, k int) error
	// closed(service, k) returns once the source has seen k connections to
	// a service end.
	closed func(service string, k int) error
	// oneAtATime runs the bulk transfers one after another, before the
	// echo rounds, instead of all at once beside them: the reference (source
	// and destination) shares one TCP write handler between its local
	// connections (see TestReferenceKnownBugConcurrentWrites), which stalls
	// or corrupts one of several connections written at once. The
	// connections are still all open at the same time.
	oneAtATime bool
}

func v3Workload(t *testing.T, addrs map[string]string, n int, h sourceHooks) {
	t.Helper()
	accepted := h.accepted
	counts := map[string]int{}
	dial := func(service string) net.Conn {
		c := dialRetry(t, addrs[service])
		counts[service]++
		if accepted != nil {
			if err := accepted(service, counts[service]); err != nil {
				t.Fatal(err)
			}
		}
		return c
	}
	conns := make([]net.Conn, n)
	bulk := make([]net.Conn, n)
	for i := range n {
		conns[i] = dial("ECHO")
		bulk[i] = dial("BULK")
	}
	var wg sync.WaitGroup
	bulkErrs := make(chan error, n)
	for i, c := range bulk {
		wg.Add(1)
		transfer := func() {
			defer wg.Done()
			if err := bulkTransferConn(c, refBulkSize); err != nil {
				bulkErrs <- fmt.Errorf("bulk connection %d: %w", i, err)
			}
		}
		if h.oneAtATime {
			transfer()
			// and its end handled: a reset reassigns the handler too.
			if err := h.closed("BULK", i+1); err != nil {
				t.Fatal(err)
			}
		} else {
			go transfer()
		}
	}
	for round := range 3 {
		for i, c := range conns {
			echoRoundTrip(t, c, fmt.Sprintf("connection %d round %d", i, round))
		}
	}
	wg.Wait()
	close(bulkErrs)
	for err := range bulkErrs {
		t.Error(err)
	}
	conns[0].Close()
	if h.oneAtATime {
		if err := h.closed("ECHO", 1); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range conns[1:] {
		echoRoundTrip(t, c, fmt.Sprintf("connection %d after the first closed", i+1))
		if err := tcptest.Echoed(context.Background(), c, 256<<10, byte(i)); err != nil {
			t.Fatalf("echo connection %d: %v", i+1, err)
		}
	}
	echoRoundTrip(t, dial("ECHO"), "a new connection")
	if err := h.closed("BULK", n); err != nil {
		t.Fatal(err)
	}
	if err := bulkTransferConn(dial("BULK"), refBulkSize); err != nil {
		t.Fatalf("bulk connection after all the others closed: %v", err)
	}
}

// refSourceHooks are the v3Workload hooks for the reference source src.
func refSourceHooks(src *proc, addrs map[string]string) sourceHooks {
	return sourceHooks{
		accepted: func(service string, k int) error {
			_, port, _ := net.SplitHostPort(addrs[service])
			return waitCount(src, `Accepted tcp connection on port `+port+`\b`, k, lpWait)
		},
		closed: func(service string, k int) error {
			return waitCount(src, `Handling tcp socket error for service id: `+service+` `, k, lpWait)
		},
	}
}

// ourSourceHooks are the v3Workload hooks for our source src.
func ourSourceHooks(src *proc) sourceHooks {
	return sourceHooks{closed: func(service string, k int) error {
		return waitCount(src, `connection closed by the local side .*service_id=`+service+` `, k, lpWait)
	}}
}

// bulkTransfer is transfer (localproxy_test.go) returning an error, for
// use from several goroutines.
func bulkTransfer(addr string, size int64) error {
	c, err := dialRetryErr(addr)
	if err != nil {
		return err
	}
	return bulkTransferConn(c, size)
}

// bulkTransferConn runs transfer's exchange on c and closes it.
func bulkTransferConn(c net.Conn, size int64) error {
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), lpWait)
	defer cancel()
	return tcptest.Bulk(ctx, c, size, 1, 2)
}

// TestReferenceInteropV3: V3 with two services and several simultaneous
// connections per service, for each pairing of the reference and our
// localproxy through tunneld.
func TestReferenceInteropV3(t *testing.T) {
	rig := startRefRig(t, "127.0.0.1:0", "")
	for _, tc := range []struct {
		name           string
		refSrc, refDst bool
	}{
		{"reference-source/reference-destination", true, true},
		{"reference-source/our-destination", true, false},
		{"our-source/reference-destination", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := startRefServices(t)
			tun := rig.openTunnel(t, "thing1", "ECHO", "BULK")
			if tc.refDst {
				rig.refDestination(t, tun.DestinationAccessToken, svc.mapping())
			} else {
				rig.ourDestination(t, tun.DestinationAccessToken, svc.mapping())
			}
			var addrs map[string]string
			var hooks sourceHooks
			if tc.refSrc {
				var src *proc
				src, addrs = rig.refSource(t, tun.SourceAccessToken, []string{"ECHO", "BULK"})
				hooks = refSourceHooks(src, addrs)
			} else {
				var src *proc
				src, addrs = rig.ourSource(t, tun.SourceAccessToken, []string{"ECHO", "BULK"})
				hooks = ourSourceHooks(src)
			}
			// Every case has a reference end, and both of its modes write
			// to their local connections with the shared handler.
			hooks.oneAtATime = true
			v3Workload(t, addrs, 4, hooks)
		})
	}
}

// oldWorkload runs sequential connections (V1/V2: one at a time per
// service) on each service, each carrying 256 KiB echoed and checked, the
// services active at the same time. Before connection i > 0 of a service it
// calls ready(service, i) (nil: dial at once).
//
// With ended not nil the services' streams still overlap (a connection is
// opened, so its STREAM_START sent, while another service's transfer runs)
// but their transfers take turns: a connection's echo, its close and
// ended(service, i), which returns once the destination has closed its side
// of connection i, run while no other transfer does. That is for the
// reference destination, whose TCP writes to two local connections at once
// can mix up their completion handlers (see
// TestReferenceKnownBugConcurrentWrites).
func oldWorkload(t *testing.T, addrs map[string]string, services []string, ready, ended func(service string, i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	var turn sync.Mutex // held by the transfer under way when ended != nil
	errs := make(chan error, len(services))
	for _, s := range services {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 3 {
				if i > 0 && ready != nil {
					if err := ready(s, i); err != nil {
						errs <- fmt.Errorf("service %q connection %d: %w", s, i, err)
						return
					}
				}
				c, err := dialRetryErr(addrs[s])
				if err != nil {
					errs <- fmt.Errorf("service %q connection %d: %w", s, i, err)
					return
				}
				if ended != nil {
					turn.Lock()
					c.SetDeadline(time.Now().Add(lpWait)) // the wait for the turn is not the transfer's
				}
				err = tcptest.Echoed(context.Background(), c, 256<<10, byte(i))
				c.Close()
				if err == nil && ended != nil {
					err = ended(s, i)
				}
				if ended != nil {
					turn.Unlock()
				}
				if err != nil {
					errs <- fmt.Errorf("service %q connection %d: %w", s, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// dialRetryErr dials addr until it accepts: the reference source (V1/V2)
// closes and reopens its listener after each connection.
func dialRetryErr(addr string) (net.Conn, error) {
	deadline := time.Now().Add(lpWait)
	for {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(lpWait))
			return c, nil
		}
		if !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(50 * time.Millisecond) // the listener is being reopened: nothing to wait on
	}
}

// dialRetry dials addr, retrying while it refuses, for up to lpWait: the
// reference prints "Listening for new connection" before it calls
// listen(), and (V1/V2) reopens its listener after each connection.
func dialRetry(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := dialRetryErr(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitCount waits until p's output holds n lines matching re.
func waitCount(p *proc, re string, n int, timeout time.Duration) error {
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(timeout)
	for {
		if got := len(rx.FindAllStringIndex(p.output(), -1)); got >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s printed %q fewer than %d times in %v", p.name, re, n, timeout)
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited (%v) before printing %q %d times", p.name, p.Err(), re, n)
		case <-time.After(20 * time.Millisecond): // polling collected output
		}
	}
}

// TestReferenceOldClientTypes: the reference source with -y V1 and -y V2
// against our destination, and our source with -y V2 against the
// reference destination.
func TestReferenceOldClientTypes(t *testing.T) {
	rig := startRefRig(t, "127.0.0.1:0", "")
	for _, tc := range []struct {
		name     string
		y        string
		refSrc   bool
		services []string // tunnel services
		srcMap   []string // source mapping keys
	}{
		{"reference-source-V1/our-destination", "V1", true, []string{"ECHO"}, []string{""}},
		{"reference-source-V2/our-destination", "V2", true, []string{"ECHO", "BULK"}, []string{"ECHO", "BULK"}},
		{"our-source-V2/reference-destination", "V2", false, []string{"ECHO", "BULK"}, []string{"ECHO", "BULK"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mapping []string
			targets := map[string]string{}
			for _, s := range tc.services {
				targets[s] = echoService(t)
				mapping = append(mapping, s+"="+targets[s])
			}
			tun := rig.openTunnel(t, "thing1", tc.services...)
			var addrs map[string]string
			var ready, ended func(string, int) error
			if tc.refSrc {
				rig.ourDestination(t, tun.DestinationAccessToken, strings.Join(mapping, ","))
				var src *proc
				src, addrs = rig.refSource(t, tun.SourceAccessToken, tc.srcMap, "-y", tc.y)
				// With -y V1/V2 the reference closes its listener when a
				// connection ends and reopens it once its STREAM_RESET is
				// sent; a connection accepted in between is killed by the
				// reopening. A client of the reference must wait for it.
				ready = func(service string, i int) error {
					_, port, _ := net.SplitHostPort(addrs[service]) // addrs as remapped below for V1
					return waitCount(src, `Listening for new connection on port `+port+`\b`, i+1, lpWait)
				}
			} else {
				dst := rig.refDestination(t, tun.DestinationAccessToken, strings.Join(mapping, ","))
				_, addrs = rig.ourSource(t, tun.SourceAccessToken, tc.srcMap, "-y", tc.y)
				// The reference destination mixes up two local
				// connections written at once (a reference bug,
				// TestReferenceKnownBugConcurrentWrites): transfers take
				// turns, each until the reference has closed its
				// connection to the service.
				ended = func(service string, i int) error {
					return waitCount(dst, `Disconnected from: `+regexp.QuoteMeta(targets[service])+`\b`, i+1, lpWait)
				}
			}
			keys := tc.srcMap
			if tc.y == "V1" {
				addrs = map[string]string{"ECHO": addrs[""]}
				keys = []string{"ECHO"}
			}
			oldWorkload(t, addrs, keys, ready, ended)
		})
	}
}

// TestReferenceCloseTunnel: CloseTunnel ends both reference proxies with
// exit 0 and closes their local connections.
func TestReferenceCloseTunnel(t *testing.T) {
	rig := startRefRig(t, "127.0.0.1:0", "")
	tun := rig.openTunnel(t, "thing1", "ECHO")
	dst := rig.refDestination(t, tun.DestinationAccessToken, "ECHO="+echoService(t))
	src, addrs := rig.refSource(t, tun.SourceAccessToken, []string{"ECHO"})
	c := dialRetry(t, addrs["ECHO"])
	echoRoundTrip(t, c, "before close")
	if code := rig.call(t, "CloseTunnel", map[string]any{"tunnelId": tun.TunnelID}, nil); code != 200 {
		t.Fatalf("CloseTunnel: HTTP %d", code)
	}
	for _, p := range []*proc{src, dst} {
		if code := p.waitExit(lpWait); code != 0 {
			t.Errorf("%s exit %d, want 0", p.name, code)
		}
	}
	expectClosed(t, c, 5*time.Second)
}

// TestReferenceTokenReuse: a second reference destination with a used
// token and no client token gets HTTP 401 and exits 0 without retrying.
func TestReferenceTokenReuse(t *testing.T) {
	rig := startRefRig(t, "127.0.0.1:0", "")
	tun := rig.openTunnel(t, "thing1", "ECHO")
	echo := echoService(t)
	rig.refDestination(t, tun.DestinationAccessToken, "ECHO="+echo)
	p := rig.refProc(t, "reference-destination-2", tun.DestinationAccessToken, "-d", "ECHO="+echo)
	p.waitLine(`rejected web socket upgrade request: \(HTTP/1\.1 401`, lpWait)
	if code := p.waitExit(lpWait); code != 0 {
		t.Fatalf("exit %d, want 0", code)
	}
	if n := strings.Count(p.output(), "Attempting to establish web socket connection"); n != 1 {
		t.Fatalf("%d connection attempts, want 1 (no retry after 401)", n)
	}
}

// TestReferenceReconnectAfterTunneldRestart: with client tokens, both
// reference proxies reconnect when tunneld comes back on the same address
// with the same data, and new connections work: after a crash (SIGKILL:
// the WebSocket just drops) and after a graceful restart (SIGTERM).
func TestReferenceReconnectAfterTunneldRestart(t *testing.T) {
	for _, tc := range []struct {
		name string
		stop func(*proc)
	}{
		{"crash", func(p *proc) { p.cmd.Process.Kill(); <-p.done }},
		{"graceful", func(p *proc) { p.stop() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rig := startRefRig(t, "127.0.0.1:0", "")
			tun := rig.openTunnel(t, "thing1", "ECHO")
			settings := filepath.Join(t.TempDir(), "settings.json")
			os.WriteFile(settings, []byte(`{"tunneling":{"proxy":{"websocket":{"retry_delay_ms":"200"}}}}`), 0o600)
			dst := rig.refDestination(t, tun.DestinationAccessToken, "ECHO="+echoService(t),
				"-i", strings.Repeat("d", 32), "--settings-json", settings)
			src, addrs := rig.refSource(t, tun.SourceAccessToken, []string{"ECHO"},
				"-i", strings.Repeat("s", 32), "--settings-json", settings)
			c := dialRetry(t, addrs["ECHO"])
			echoRoundTrip(t, c, "before the restart")

			tc.stop(rig.proc)
			expectClosed(t, c, 10*time.Second)
			rig2 := startRefRig(t, rig.listen, rig.dataDir)
			if rig2.endpoint != rig.endpoint {
				t.Fatalf("tunneld came back on %s, not %s", rig2.endpoint, rig.endpoint)
			}
			for _, p := range []*proc{src, dst} {
				if err := waitCount(p, `Successfully established websocket connection`, 2, lpWait); err != nil {
					t.Fatalf("no reconnection: %v", err)
				}
			}
			deadline := time.Now().Add(lpWait)
			for {
				c2, err := dialRetryErr(addrs["ECHO"])
				if err == nil {
					c2.SetDeadline(time.Now().Add(5 * time.Second))
					err = tcptest.Echoed(context.Background(), c2, 4096, 7)
					c2.Close()
				}
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no working connection after the restart: %v", err)
				}
				time.Sleep(100 * time.Millisecond) // the destination may come back after the source
			}
		})
	}
}

// TestReferenceKnownBugSimultaneousConnects shows a limit of the
// reference itself (any other end): its source listens with a backlog of 0
// (TcpAdapterProxy.cpp, async_setup_source_tcp_socket_retry:
// acceptor_.listen(0)), so of several connections made at the same moment
// some are dropped by the kernel (with tcp_syncookies=1 the client sees an
// established connection that then ends with EOF or a reset) and others
// wait for a SYN retransmission (about 1 s). The same happens with a plain
// listen(0) server. It runs only with SECTUN_REFERENCE_KNOWN_BUGS=1; the
// other tests connect one at a time to the reference.
func TestReferenceKnownBugSimultaneousConnects(t *testing.T) {
	if os.Getenv("SECTUN_REFERENCE_KNOWN_BUGS") == "" {
		t.Skip("a reference limit, not ours: set SECTUN_REFERENCE_KNOWN_BUGS=1 to reproduce it")
	}
	rig := startRefRig(t, "127.0.0.1:0", "")
	svc := startRefServices(t)
	tun := rig.openTunnel(t, "thing1", "ECHO", "BULK")
	rig.refDestination(t, tun.DestinationAccessToken, svc.mapping())
	_, addrs := rig.refSource(t, tun.SourceAccessToken, []string{"ECHO", "BULK"})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := bulkTransfer(addrs["BULK"], refBulkSize); err != nil {
				errs <- fmt.Errorf("bulk connection %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestReferenceKnownBugConcurrentWrites shows a bug of the reference
// destination: in async_tcp_write_buffer_drain (TcpAdapterProxy.cpp) the
// TCP write completion handler is a function-local static std::function
// that every drain start reassigns (a new DATA for an idle connection, a
// STREAM_RESET), while a write that completes with more data buffered
// continues with whatever handler that static holds: another connection's.
// That connection's buffer is then consumed by the wrong byte count and its
// writing flag cleared, while the first one stays "writing" forever. Seen
// here: an echo stalls mid-stream ("TCP write buffer drain cannot be
// started while already writing" at its reset), the echo differs from what
// was sent, or the reference exits with "basic_multi_buffer too long". Two
// services (V2) or two connections (V3) whose local writes overlap are
// enough. Our source sends 16 KiB DATA (the reference source up to 63 KiB),
// so the reference destination makes more writes per byte and the mix-up
// is likelier: this test failed in 16 of 52 runs here (0 to 6 of 12,
// depending on the load). With a log line on that path, every failing run
// showed one mix-up and no passing run did; with the handler made per
// write, 28 of 28 runs passed. It runs only with
// SECTUN_REFERENCE_KNOWN_BUGS=1 (use -count 12); TestReferenceOldClientTypes
// lets the transfers take turns instead.
func TestReferenceKnownBugConcurrentWrites(t *testing.T) {
	if os.Getenv("SECTUN_REFERENCE_KNOWN_BUGS") == "" {
		t.Skip("a reference bug, not ours: set SECTUN_REFERENCE_KNOWN_BUGS=1 to reproduce it")
	}
	rig := startRefRig(t, "127.0.0.1:0", "")
	services := []string{"ECHO", "BULK"}
	var mapping []string
	for _, s := range services {
		mapping = append(mapping, s+"="+echoService(t))
	}
	tun := rig.openTunnel(t, "thing1", services...)
	rig.refDestination(t, tun.DestinationAccessToken, strings.Join(mapping, ","))
	_, addrs := rig.ourSource(t, tun.SourceAccessToken, services, "-y", "V2")
	oldWorkload(t, addrs, services, nil, nil)
}
