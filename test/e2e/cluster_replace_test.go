package e2e

import (
	"errors"
	"io"
	"net"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestClusterReplacementAcrossNodes is scenario 4: the source (with a
// client token) is on node 1, the destination on node 2; the same token
// and client token connect on node 3. The old connection is closed with
// 1008 "replaced", the destination's active stream is reset, and the new
// source carries data.
func TestClusterReplacementAcrossNodes(t *testing.T) {
	r := newClusterRig(t, 3)
	tun := r.nodes[0].openTunnel(t, "", "ECHO")
	const ct = "client-token-of-the-scenario-four-0123456789"
	startDestination(t, r.nodes[1].wsURL, tun.DestinationAccessToken, "ECHO="+echoService(t))
	old, addrs := startSource(t, r.nodes[0].wsURL, tun.SourceAccessToken, "ECHO=0", 1, "-i", ct)
	c := dialTCP(t, addrs["ECHO"])
	echoRoundTrip(t, c, "an active stream on the old source")

	_, addrs2 := startSource(t, r.nodes[2].wsURL, tun.SourceAccessToken, "ECHO=127.0.0.1:0", 1, "-i", ct)
	// Node 1 closes the old WebSocket with 1008 "replaced...".
	r.nodes[0].waitLine(`tunnel_id=`+regexp.QuoteMeta(tun.TunnelID)+`.*reason="replaced by a new connection"`, 15*time.Second)
	old.waitLine(`replaced`, 15*time.Second)
	// The stream through the old source is gone (the destination got
	// STREAM_RESET for it, the old source closed its side).
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the old source's stream is still open after the replacement")
		}
	}
	echoRoundTrip(t, dialTCP(t, addrs2["ECHO"]), "the new source on node 3")
	if !strings.Contains(r.nodes[1].output(), "streams=1") {
		t.Logf("node 2 log does not show the reset count (informational)")
	}
}

// TestClusterPostgresRestart is scenario 7: PostgreSQL stopped under
// traffic: the tunnel across two nodes keeps relaying, a new handshake
// gets 503, and after PostgreSQL is back handshakes succeed again by
// themselves.
func TestClusterPostgresRestart(t *testing.T) {
	r := newClusterRig(t, 2)
	tun := r.nodes[0].openTunnel(t, "", "ECHO")
	tun2 := r.nodes[0].openTunnel(t, "", "ECHO")
	startDestination(t, r.nodes[0].wsURL, tun.DestinationAccessToken, "ECHO="+echoService(t))
	_, addrs := startSource(t, r.nodes[1].wsURL, tun.SourceAccessToken, "ECHO=0", 1)
	c := dialTCP(t, addrs["ECHO"])
	echoRoundTrip(t, c, "before")

	r.pg.Stop()
	for i := range 20 {
		echoRoundTrip(t, c, "while the database is down "+strings.Repeat("x", i))
	}
	if err := echoOnce(addrs["ECHO"], 10*time.Second); err != nil {
		t.Fatalf("a new connection through the existing tunnel failed with the database down: %v", err)
	}
	code, err := rawUpgrade(strings.TrimPrefix(r.nodes[1].url, "http://"), "destination", tun2.DestinationAccessToken)
	if err != nil || code != 503 {
		t.Fatalf("handshake with the database down: %d, %v; want 503", code, err)
	}
	r.pg.Restart()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, err = rawUpgrade(strings.TrimPrefix(r.nodes[1].url, "http://"), "destination", tun2.DestinationAccessToken)
		if code == 101 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("handshake after PostgreSQL came back: %d, %v", code, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	echoRoundTrip(t, c, "after")
}

// TestClusterFrozenNode is scenario 3: the destination's node is frozen
// with SIGSTOP. The source's node ends the silent link (three pings) and
// the source gets STREAM_RESET, keeping its WebSocket; the destination
// (through HAProxy) reconnects to another node, which takes the end over
// with a newer epoch. After SIGCONT the thawed node fences itself: the
// tunnel keeps working through the new node and the stale node's old end
// is gone (closed, or its client already left).
func TestClusterFrozenNode(t *testing.T) {
	r := newClusterRig(t, 3)
	r.startHAProxy()
	tun := r.nodes[0].openTunnel(t, "", "ECHO")
	startDestination(t, r.lbWS(), tun.DestinationAccessToken, "ECHO="+echoService(t), "--settings-json", proxySettings(t, 500, 200))
	dn := r.waitHolder(tun.TunnelID, "destination", -1, 30*time.Second)
	sn := (dn + 1) % 3
	src, addrs := startSource(t, r.nodes[sn].wsURL, tun.SourceAccessToken, "ECHO=0", 1)
	echoRoundTrip(t, dialTCP(t, addrs["ECHO"]), "before the freeze")
	frozen := r.nodes[dn]
	if err := frozen.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	thawed := false
	defer func() {
		if !thawed {
			frozen.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	for {
		if err := echoOnce(addrs["ECHO"], 2*time.Second); err == nil {
			break
		}
		if time.Since(stopped) > 60*time.Second {
			t.Fatal("no data 60 s after the destination's node was frozen")
		}
	}
	t.Logf("SIGSTOP of node %d -> data again through another node in %v", dn+1, time.Since(stopped).Round(time.Millisecond))
	frozen.cmd.Process.Signal(syscall.SIGCONT)
	thawed = true
	// The thawed node resyncs; the tunnel keeps working through the new
	// node, several times over the next seconds.
	for i := range 10 {
		if err := echoOnce(addrs["ECHO"], 5*time.Second); err != nil {
			t.Fatalf("echo %d after SIGCONT: %v", i, err)
		}
		time.Sleep(200 * time.Millisecond) // spread the checks over the thawed node's resync
	}
	if src.Exited() || len(regexp.MustCompile(`\]\s+connected mode=source`).FindAllString(src.output(), -1)) != 1 {
		t.Fatalf("the source reconnected or exited:\n%s", src.output())
	}
}

// TestClusterAPIWithPostgresDown: with PostgreSQL stopped, management API
// calls answer 503 ServiceUnavailable with a message (the AWS SDKs and
// CLI retry 5xx), not 500 InternalFailure; after PostgreSQL is back they
// answer 200 again.
func TestClusterAPIWithPostgresDown(t *testing.T) {
	r := newClusterRig(t, 1)
	d := r.nodes[0]
	tun := d.openTunnel(t, "", "ECHO")
	r.pg.Stop()
	type apiErr struct {
		Type    string `json:"__type"`
		Message string `json:"message"`
	}
	for _, c := range []struct {
		op string
		in map[string]any
	}{
		{"DescribeTunnel", map[string]any{"tunnelId": tun.TunnelID}},
		{"ListTunnels", map[string]any{}},
	} {
		var e apiErr
		start := time.Now()
		code := d.call(t, c.op, c.in, &e)
		t.Logf("%s with PostgreSQL down: HTTP %d %s %q in %v", c.op, code, e.Type, e.Message, time.Since(start).Round(time.Millisecond))
		if code != 503 || e.Type != "ServiceUnavailable" || !strings.Contains(e.Message, "retry later") {
			t.Errorf("%s with PostgreSQL down: HTTP %d %+v, want 503 ServiceUnavailable with a message", c.op, code, e)
		}
	}
	r.pg.Restart()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var out map[string]any
		if code := d.call(t, "ListTunnels", map[string]any{}, &out); code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("ListTunnels never answered 200 after PostgreSQL came back")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
