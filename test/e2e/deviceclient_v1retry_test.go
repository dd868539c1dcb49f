package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestRealDeviceClientWithoutY: our source WITHOUT -y carries ssh
// sessions through the real AWS IoT Device Client (issue 17 item 18). The
// Device Client connects with subprotocol 3.0 but answers only in V1
// framing, so the source's first connection gets no reply; after the V1
// retry delay (4 s) the source starts it again in V1 framing, the Device
// Client answers, and the session stays in V1. Root only (ports 443 and
// 22, as startDeviceClient); skipped with a message otherwise.
func TestRealDeviceClientWithoutY(t *testing.T) {
	r := startDeviceClient(t)
	tun := r.openSSH(t)
	p, port := r.ourSource(t, tun.SourceAccessToken) // no -y
	start := time.Now()
	r.sshd.sshEcho(t, port, "no-y-first-session")
	first := time.Since(start)
	p.waitLine(`switched to V1`, agentWait)
	start = time.Now()
	r.sshd.sshEcho(t, port, "no-y-second-session") // V1 from the start
	second := time.Since(start)
	t.Logf("first ssh session (V3, then the V1 retry) took %v, the second (V1) %v", first.Round(time.Millisecond), second.Round(time.Millisecond))
	if second >= 4*time.Second {
		t.Errorf("the second session took %v: it waited for a retry again", second)
	}
	if out := p.output(); strings.Contains(out, "if the destination runs an older local proxy") {
		t.Errorf("the source gave the version hint although the retry worked:\n%s", out)
	}
	r.closeTunnel(t, tun.TunnelID)
	if r.client.Exited() {
		t.Fatalf("the Device Client exited: %v", r.client.Err())
	}
}
