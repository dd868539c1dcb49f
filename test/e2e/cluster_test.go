package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/cluster/pgtest"
	"github.com/sectun/sectun/internal/tcptest"
)

// Cluster scenarios (issue 14): three real tunneld processes on 127.0.0.2,
// .3 and .4, one real PostgreSQL, HAProxy in TCP mode with health checks.

type clusterRig struct {
	t     *testing.T
	pg    *pgtest.Server
	dsn   string
	nodes []*tunneld
	args  [][]string
	lb    string // HAProxy's address
}

// clusterNodeArgs are the flags of node i (0-based) on 127.0.0.(2+i).
func clusterNodeArgs(dsn string, i int, port int, extra ...string) []string {
	host := fmt.Sprintf("127.0.0.%d", 2+i)
	return append([]string{
		"--listen", fmt.Sprintf("%s:%d", host, port), "--no-auth", "--mqtt-listen", "off",
		"--postgres", dsn, "--node-id", fmt.Sprintf("node%d", i+1),
		"--cluster-listen", host + ":0", "--cluster-lease-ttl", "2s", "--cluster-link-ping", "500ms",
		"--drain-grace", "2s", "--handshake-failure-limit", "0", "--log-level", "debug",
	}, extra...)
}

func startClusterNode(t *testing.T, args []string) *tunneld {
	t.Helper()
	dir := t.TempDir()
	args = append([]string{"--data-dir", dir, "--plaintext"}, args...)
	p := start(t, "tunneld", nil, args...)
	m := p.waitLine(`listening on (\S+)`, 60*time.Second)
	d := &tunneld{proc: p, url: m[1], dataDir: dir, client: &http.Client{Timeout: 30 * time.Second}}
	d.wsURL = strings.Replace(d.url, "http", "ws", 1)
	return d
}

func newClusterRig(t *testing.T, n int, extra ...string) *clusterRig {
	t.Helper()
	return newClusterRigWith(t, n, func(int) []string { return extra })
}

// newClusterRigWith starts n nodes, node i with the extra flags
// extra(i).
func newClusterRigWith(t *testing.T, n int, extra func(i int) []string) *clusterRig {
	t.Helper()
	if testing.Short() {
		t.Skip("cluster scenarios start PostgreSQL and three tunnelds: not in -short")
	}
	pg := pgtest.Start(t)
	r := &clusterRig{t: t, pg: pg, dsn: pg.NewDatabase("sectun")}
	for i := range n {
		a := clusterNodeArgs(r.dsn, i, 0, extra(i)...)
		d := startClusterNode(t, a)
		// Later restarts use the same port (HAProxy's configuration).
		_, port, _ := net.SplitHostPort(strings.TrimPrefix(d.url, "http://"))
		a[1] = fmt.Sprintf("127.0.0.%d:%s", 2+i, port)
		r.args = append(r.args, a)
		r.nodes = append(r.nodes, d)
	}
	return r
}

// restart starts node i again (after a kill) on the same address.
func (r *clusterRig) restart(i int) *tunneld {
	d := startClusterNode(r.t, r.args[i])
	r.nodes[i] = d
	return d
}

// startHAProxy puts HAProxy (TCP mode, health checks on /healthz every
// 500 ms, down after 2 failures) in front of the nodes.
func (r *clusterRig) startHAProxy() {
	t := r.t
	t.Helper()
	path, err := exec.LookPath("haproxy")
	if err != nil {
		for _, p := range []string{"/usr/sbin/haproxy", "/usr/local/sbin/haproxy"} {
			if _, err := os.Stat(p); err == nil {
				path = p
			}
		}
	}
	if path == "" {
		t.Skip("haproxy not installed (apt-get install haproxy): skipping the load-balancer scenarios")
	}
	port := freePort(t)
	var b strings.Builder
	fmt.Fprintf(&b, `global
  maxconn 4096
defaults
  mode tcp
  timeout connect 2s
  timeout client 10m
  timeout server 10m
  timeout check 1s
  option redispatch
  retries 2
frontend fe
  bind 127.0.0.1:%d
  default_backend nodes
backend nodes
  balance roundrobin
  option httpchk GET /healthz
`, port)
	for i, d := range r.nodes {
		fmt.Fprintf(&b, "  server n%d %s check inter 500ms fall 2 rise 2\n", i+1, strings.TrimPrefix(d.url, "http://"))
	}
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startPath(t, "haproxy", path, nil, "-db", "-f", cfg)
	r.lb = fmt.Sprintf("127.0.0.1:%d", port)
	// Ready when every node's health check passed once: probe through it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + r.lb + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("HAProxy at %s never answered /healthz 200: %v\n%s", r.lb, err, p.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *clusterRig) lbWS() string { return "ws://" + r.lb }

// describe returns DescribeTunnel's connection states through node d.
func describe(t *testing.T, d *tunneld, id string) (src, dst string) {
	t.Helper()
	var out struct {
		Tunnel struct {
			SourceConnectionState      struct{ Status string } `json:"sourceConnectionState"`
			DestinationConnectionState struct{ Status string } `json:"destinationConnectionState"`
		} `json:"tunnel"`
	}
	if code := d.call(t, "DescribeTunnel", map[string]any{"tunnelId": id}, &out); code != 200 {
		t.Fatalf("DescribeTunnel: HTTP %d", code)
	}
	return out.Tunnel.SourceConnectionState.Status, out.Tunnel.DestinationConnectionState.Status
}

func waitStates(t *testing.T, d *tunneld, id, wantSrc, wantDst string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		s, ds := describe(t, d, id)
		if s == wantSrc && ds == wantDst {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("DescribeTunnel on %s: source %s destination %s, want %s %s", d.url, s, ds, wantSrc, wantDst)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// exercise checks several connections on each service both ways: echo
// round trips on every address and a byte-verified bulk transfer each way
// on the BULK service.
func exercise(t *testing.T, addrs map[string]string, conns int, bulk int64) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 16*conns)
	for id, a := range addrs {
		if id == "BULK" {
			continue
		}
		for i := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.DialTimeout("tcp", a, 10*time.Second)
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(lpWait))
				for j := range 5 {
					if err := tcptest.RoundTrip(t.Context(), c, fmt.Appendf(nil, "%s conn %d msg %d", id, i, j)); err != nil {
						errs <- fmt.Errorf("%s conn %d: %w", id, i, err)
						return
					}
				}
			}()
		}
	}
	if a, ok := addrs["BULK"]; ok && bulk > 0 {
		wg.Add(1)
		go func() { defer wg.Done(); transfer(t, a, bulk) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

const clusterServices = "ECHO1,ECHO2,BULK"

func clusterDestMapping(t *testing.T, bulk int64) string {
	return "ECHO1=" + echoService(t) + ",ECHO2=" + echoService(t) + ",BULK=" + tcpService(t, tcptest.BulkHandler(bulk, 2))
}

// TestClusterPeersOnDifferentNodes is scenario 1: the two peers of a
// tunnel on different nodes, dialing nodes directly and through HAProxy;
// three services, several connections each, both directions, a
// byte-verified bulk transfer; DescribeTunnel through a third node.
func TestClusterPeersOnDifferentNodes(t *testing.T) {
	r := newClusterRig(t, 3)
	const bulk = 8 << 20
	t.Run("direct", func(t *testing.T) {
		tun := r.nodes[0].openTunnel(t, "", strings.Split(clusterServices, ",")...)
		startDestination(t, r.nodes[1].wsURL, tun.DestinationAccessToken, clusterDestMapping(t, bulk))
		_, addrs := startSource(t, r.nodes[2].wsURL, tun.SourceAccessToken, "ECHO1=0,ECHO2=0,BULK=0", 3)
		exercise(t, addrs, 4, bulk)
		waitStates(t, r.nodes[0], tun.TunnelID, "CONNECTED", "CONNECTED", 10*time.Second)
	})
	r.startHAProxy()
	t.Run("haproxy", func(t *testing.T) {
		for k := range 3 { // round robin: the two ends land on different nodes
			tun := r.nodes[k].openTunnel(t, "", strings.Split(clusterServices, ",")...)
			dst := startDestination(t, r.lbWS(), tun.DestinationAccessToken, clusterDestMapping(t, bulk))
			src, addrs := startSource(t, r.lbWS(), tun.SourceAccessToken, "ECHO1=0,ECHO2=0,BULK=0", 3)
			exercise(t, addrs, 3, bulk)
			src.stop()
			dst.stop()
		}
	})
}

// sigkill kills a node's process.
func sigkill(t *testing.T, d *tunneld) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.waitExit(10 * time.Second)
}
