package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// startPlainMosquitto starts a Mosquitto accepting anonymous clients on
// 127.0.0.1 (plain TCP) and returns its tcp:// URL.
func startPlainMosquitto(t *testing.T) string {
	t.Helper()
	const bin = "/usr/sbin/mosquitto"
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("mosquitto not installed (%v)", err)
	}
	dir := t.TempDir()
	m := &mosquittoBroker{t: t, conf: filepath.Join(dir, "mosquitto.conf"), port: freePort(t)}
	conf := fmt.Sprintf("user root\nlog_dest stderr\nlog_type all\npersistence false\nlistener %d 127.0.0.1\nallow_anonymous true\n", m.port)
	if err := os.WriteFile(m.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	m.start()
	return fmt.Sprintf("tcp://127.0.0.1:%d", m.port)
}

// TestClusterOutboxSurvivesNodeLoss is scenario 8: node 1 commits
// OpenTunnel (the notification is in the outbox, in the same transaction)
// but cannot publish it (its broker address is unreachable) and is killed
// with SIGKILL; node 2's outbox drainer publishes it and the device
// (tunnel-agent on a real Mosquitto) starts its session.
func TestClusterOutboxSurvivesNodeLoss(t *testing.T) {
	broker := startPlainMosquitto(t)
	dead := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t))
	r := newClusterRigWith(t, 2, func(i int) []string {
		if i == 0 {
			return []string{"--mqtt-broker", dead}
		}
		return []string{"--mqtt-broker", broker}
	})
	ag := startAgent(t, "--thing", agentThing, "--broker", broker, "--tunnel-endpoint", r.nodes[1].wsURL,
		"--map", "ECHO="+echoService(t))
	tun := r.nodes[0].openTunnel(t, agentThing, "ECHO")
	sigkill(t, r.nodes[0])
	killed := time.Now()
	ag.waitLine(`msg="tunnel session started"`, agentWait)
	t.Logf("device notified %v after the node that opened the tunnel was killed unpublished (outbox drained by node 2)", time.Since(killed).Round(time.Millisecond))
	r.nodes[1].waitLine(`published notifications left in the outbox`, 10*time.Second)
	_, addrs := startSource(t, r.nodes[1].wsURL, tun.SourceAccessToken, "ECHO=0", 1)
	echoRoundTrip(t, dialTCP(t, addrs["ECHO"]), "notified through the outbox")
}
