package e2e

import (
	"strings"
	"testing"
)

// TestRealDeviceClient is the proof that tunneld serves the real AWS IoT
// Device Client (../shared/peers/aws-iot-device-client, or
// $SECTUN_DEVICE_CLIENT) unchanged: registered with `tunneld device
// create`, it connects MQTT to 127.0.0.1:443 over TLS with ALPN
// x-amzn-mqtt-ca and its certificate, is notified of each OpenTunnel for
// its thing, connects the destination end on the same port, and carries
// ssh sessions to a private sshd on 127.0.0.1:22 — for our localproxy -y V1,
// the reference local proxy -y V1, and sectun connect --destination-type
// V1. Root only (ports 443 and 22); skipped with a message otherwise.
func TestRealDeviceClient(t *testing.T) {
	r := startDeviceClient(t)
	var tokens []string

	t.Run("our localproxy -y V1", func(t *testing.T) {
		tun := r.openSSH(t)
		tokens = append(tokens, tun.SourceAccessToken, tun.DestinationAccessToken)
		_, port := r.ourSource(t, tun.SourceAccessToken, "-y", "V1")
		r.sshd.sshEcho(t, port, "hello-real-device-client")
		r.sshd.sshEcho(t, port, "second-session") // a new stream on the same tunnel
		r.closeTunnel(t, tun.TunnelID)
	})

	t.Run("reference localproxy -y V1", func(t *testing.T) {
		referenceBinary(t) // skips here, not in the parent, without it
		tun := r.openSSH(t)
		tokens = append(tokens, tun.SourceAccessToken, tun.DestinationAccessToken)
		_, port := r.refSource(t, tun.SourceAccessToken, "-y", "V1")
		r.sshd.sshEcho(t, port, "hello-from-the-reference")
		r.sshd.sshEcho(t, port, "second-session")
		r.closeTunnel(t, tun.TunnelID)
	})

	t.Run("sectun connect --destination-type V1", func(t *testing.T) {
		conn := sectunConnect(t, r.tunneld, []string{"--ca", r.caFile, "--destination-type", "V1"}, "SSH")
		r.sshd.sshEcho(t, conn.ports["SSH"], "hello-via-sectun-connect")
		conn.interrupt(t)
	})

	// Every tunnel came by MQTT notification; tokens stay out of the logs.
	out := r.client.output()
	if n := strings.Count(out, "Received MQTT Tunnel Notification"); n < 2 {
		t.Errorf("the Device Client logged %d notifications, want one per tunnel", n)
	}
	for _, tok := range tokens {
		if strings.Contains(r.output(), tok) {
			t.Error("tunneld logged an access token")
		}
	}
	// The Device Client is still connected and well after three tunnels.
	if r.client.Exited() {
		t.Fatalf("the Device Client exited: %v", r.client.Err())
	}
}
