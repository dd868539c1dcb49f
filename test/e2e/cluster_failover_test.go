package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/tcptest"
)

// holder returns the index of the node whose log last recorded the peer
// of mode for tunnel id connecting, or -1.
func (r *clusterRig) holder(id, mode string) int {
	rx := regexp.MustCompile(`msg="peer connected" tunnel_id=` + regexp.QuoteMeta(id) + `\b.*\bmode=` + mode + `\b`)
	for i, d := range r.nodes {
		if !d.Exited() && rx.MatchString(d.output()) {
			return i
		}
	}
	return -1
}

func (r *clusterRig) waitHolder(id, mode string, not int, within time.Duration) int {
	r.t.Helper()
	deadline := time.Now().Add(within)
	for {
		rx := regexp.MustCompile(`msg="peer connected" tunnel_id=` + regexp.QuoteMeta(id) + `\b.*\bmode=` + mode + `\b`)
		for i, d := range r.nodes {
			if i != not && !d.Exited() && rx.MatchString(d.output()) {
				return i
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("no node other than %d recorded the %s peer of %s connecting within %v", not, mode, id, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rawUpgrade sends one WebSocket upgrade to addr and returns the HTTP
// status.
func rawUpgrade(addr, mode, tok string) (int, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "GET /tunnel?local-proxy-mode=%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: aws.iot.securetunneling-3.0\r\n"+
		"access-token: %s\r\n\r\n", mode, addr, tok)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestClusterSingleUseTokenAtTwoNodes is scenario 5: one single-use
// access token (no client token) presented to two nodes at the same
// instant, 25 times: exactly one 101 each time, the other 401.
func TestClusterSingleUseTokenAtTwoNodes(t *testing.T) {
	r := newClusterRig(t, 3)
	for round := range 25 {
		tun := r.nodes[2].openTunnel(t, "", "SSH")
		a, b := r.nodes[round%3], r.nodes[(round+1)%3]
		codes := make([]int, 2)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i, d := range []*tunneld{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				code, err := rawUpgrade(strings.TrimPrefix(d.url, "http://"), "destination", tun.DestinationAccessToken)
				if err != nil {
					t.Errorf("round %d: %v", round, err)
				}
				codes[i] = code
			}()
		}
		close(start)
		wg.Wait()
		n101, n401 := 0, 0
		for _, c := range codes {
			switch c {
			case 101:
				n101++
			case 401:
				n401++
			}
		}
		if n101 != 1 || n401 != 1 {
			t.Fatalf("round %d: statuses %v, want exactly one 101 and one 401", round, codes)
		}
	}
}

// TestClusterKillDestinationNode is scenario 2: kill -9 of the node
// holding the destination; the source's node survives, its WebSocket
// stays open, and the destination (our localproxy, through HAProxy)
// reconnects to another node; data flows again. Recovery time measured.
func TestClusterKillDestinationNode(t *testing.T) {
	r := newClusterRig(t, 3)
	r.startHAProxy()
	tun := r.nodes[0].openTunnel(t, "", "ECHO")
	startDestination(t, r.lbWS(), tun.DestinationAccessToken, "ECHO="+echoService(t))
	dn := r.waitHolder(tun.TunnelID, "destination", -1, 30*time.Second)
	sn := (dn + 1) % 3
	src, addrs := startSource(t, r.nodes[sn].wsURL, tun.SourceAccessToken, "ECHO=0", 1)
	c := dialTCP(t, addrs["ECHO"])
	echoRoundTrip(t, c, "before the kill")
	c.Close()
	survivor := r.nodes[sn]
	g0 := survivor.goroutines(t)
	fd0 := survivor.resources(t).FDs

	killed := time.Now()
	sigkill(t, r.nodes[dn])
	// Data again: a new connection through the source echoes.
	var recovered time.Duration
	for {
		if err := echoOnce(addrs["ECHO"], 2*time.Second); err == nil {
			recovered = time.Since(killed)
			break
		}
		if time.Since(killed) > 30*time.Second {
			t.Fatalf("no data through the tunnel 30 s after the destination's node was killed")
		}
	}
	nn := r.waitHolder(tun.TunnelID, "destination", dn, 5*time.Second)
	if src.Exited() || len(regexp.MustCompile(`\]\s+connected mode=source`).FindAllString(src.output(), -1)) != 1 {
		t.Fatalf("the source reconnected or exited: its WebSocket should have stayed open\n%s", src.output())
	}
	t.Logf("kill -9 of node %d (destination) -> data again in %v; destination now on node %d; source kept its WebSocket on node %d",
		dn+1, recovered.Round(time.Millisecond), nn+1, sn+1)
	// No goroutine or fd growth on the survivor (a new link counts a few).
	deadline := time.Now().Add(10 * time.Second)
	for {
		g, fd := survivor.goroutines(t), survivor.resources(t).FDs
		if g <= g0+12 && fd <= fd0+4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("survivor grew: goroutines %d -> %d, fds %d -> %d", g0, g, fd0, fd)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestClusterCloseRotateThroughThirdNode is scenario 6: CloseTunnel and
// RotateTunnelAccessToken issued on node 3 end the peers on nodes 1 and 2.
func TestClusterCloseRotateThroughThirdNode(t *testing.T) {
	r := newClusterRig(t, 3)
	t.Run("close", func(t *testing.T) {
		tun := r.nodes[0].openTunnel(t, "", "ECHO")
		dst := startDestination(t, r.nodes[0].wsURL, tun.DestinationAccessToken, "ECHO="+echoService(t))
		src, addrs := startSource(t, r.nodes[1].wsURL, tun.SourceAccessToken, "ECHO=0", 1)
		echoRoundTrip(t, dialTCP(t, addrs["ECHO"]), "up")
		if code := r.nodes[2].call(t, "CloseTunnel", map[string]any{"tunnelId": tun.TunnelID}, nil); code != 200 {
			t.Fatalf("CloseTunnel: HTTP %d", code)
		}
		for _, p := range []*proc{dst, src} {
			p.waitLine(`tunnel closed|session closed|closed by the service`, 15*time.Second)
		}
	})
	t.Run("rotate", func(t *testing.T) {
		tun := r.nodes[0].openTunnel(t, "", "ECHO")
		dst := startDestination(t, r.nodes[0].wsURL, tun.DestinationAccessToken, "ECHO="+echoService(t))
		src, addrs := startSource(t, r.nodes[1].wsURL, tun.SourceAccessToken, "ECHO=0", 1)
		echoRoundTrip(t, dialTCP(t, addrs["ECHO"]), "up")
		var out map[string]any
		code := r.nodes[2].call(t, "RotateTunnelAccessToken", map[string]any{"tunnelId": tun.TunnelID, "clientMode": "ALL",
			"destinationConfig": map[string]any{"services": []string{"ECHO"}}}, &out)
		if code != 200 {
			t.Fatalf("RotateTunnelAccessToken: HTTP %d %v", code, out)
		}
		for i, d := range r.nodes[:2] {
			rx := `tunnel_id=` + regexp.QuoteMeta(tun.TunnelID) + `.*access token rotated`
			d.waitLine(rx, 15*time.Second)
			_ = i
		}
		_, _ = dst, src
		waitStates(t, r.nodes[2], tun.TunnelID, "DISCONNECTED", "DISCONNECTED", 15*time.Second)
	})
}

// TestClusterDrain is scenario 9: SIGTERM drains a node: /healthz answers
// 503 at once, HAProxy stops sending it new connections, and after the
// grace period its peers (our localproxy, through HAProxy) reconnect to
// other nodes.
func TestClusterDrain(t *testing.T) {
	r := newClusterRig(t, 3)
	r.startHAProxy()
	tun := r.nodes[0].openTunnel(t, "", "ECHO")
	startDestination(t, r.lbWS(), tun.DestinationAccessToken, "ECHO="+echoService(t))
	dn := r.waitHolder(tun.TunnelID, "destination", -1, 30*time.Second)
	sn := (dn + 1) % 3
	_, addrs := startSource(t, r.nodes[sn].wsURL, tun.SourceAccessToken, "ECHO=0", 1)
	echoRoundTrip(t, dialTCP(t, addrs["ECHO"]), "before the drain")
	draining := r.nodes[dn]
	if err := draining.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get(draining.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 503 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("/healthz of the draining node did not turn 503")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// HAProxy needs two failed checks (1 s) to take it out; then new
	// tunnels through it land elsewhere.
	time.Sleep(1500 * time.Millisecond) // the health check's own detection time, not a readiness wait
	for k := range 4 {
		t2 := r.nodes[sn].openTunnel(t, "", "ECHO")
		startDestination(t, r.lbWS(), t2.DestinationAccessToken, "ECHO="+echoService(t))
		if h := r.waitHolder(t2.TunnelID, "destination", -1, 10*time.Second); h == dn {
			t.Fatalf("new connection %d landed on the draining node", k)
		}
	}
	// After the grace period the destination reconnects elsewhere.
	nn := r.waitHolder(tun.TunnelID, "destination", dn, 20*time.Second)
	for {
		if err := echoOnce(addrs["ECHO"], 2*time.Second); err == nil {
			break
		}
		if time.Now().After(deadline.Add(30 * time.Second)) {
			t.Fatal("no data after the drained destination reconnected")
		}
	}
	t.Logf("drained node %d; its destination reconnected to node %d", dn+1, nn+1)
	draining.waitExit(20 * time.Second)
}

var _ = tcptest.Echo

// TestClusterStatesAfterCrash: DescribeTunnel's states are true
// cluster-wide: after kill -9 of the node holding the destination (whose
// client keeps retrying that dead node), any node reports the destination
// DISCONNECTED within the lease TTL (2 s here) while the source stays
// CONNECTED; after the node restarts with the same ID, still
// DISCONNECTED (its rows were corrected as it registered).
func TestClusterStatesAfterCrash(t *testing.T) {
	r := newClusterRig(t, 3)
	tun := r.nodes[0].openTunnel(t, "", "ECHO")
	startDestination(t, r.nodes[1].wsURL, tun.DestinationAccessToken, "ECHO="+echoService(t))
	startSource(t, r.nodes[0].wsURL, tun.SourceAccessToken, "ECHO=0", 1)
	waitStates(t, r.nodes[2], tun.TunnelID, "CONNECTED", "CONNECTED", 10*time.Second)
	sigkill(t, r.nodes[1])
	killed := time.Now()
	waitStates(t, r.nodes[2], tun.TunnelID, "CONNECTED", "DISCONNECTED", 10*time.Second)
	t.Logf("destination DISCONNECTED %v after kill -9 of its node (lease ttl 2 s)", time.Since(killed).Round(time.Millisecond))
	d := r.restart(1)
	s, ds := describe(t, d, tun.TunnelID)
	if ds != "DISCONNECTED" && !strings.Contains(d.output(), "peer connected") {
		t.Fatalf("after the restart: source %s destination %s", s, ds)
	}
}
