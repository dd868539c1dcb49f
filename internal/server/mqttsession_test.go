package server

import (
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/sectun/sectun/internal/server/devicetest"
)

// anonMQTT connects an anonymous MQTT 3.1.1 client with a persistent
// session to the embedded broker's loopback listener, as any local
// process can.
func anonMQTT(ts *testServer, clientID string) (paho.Client, error) {
	c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + ts.notifier.broker.Addr().String()).
		SetClientID(clientID).SetProtocolVersion(4).SetCleanSession(false).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second).
		SetDefaultPublishHandler(func(paho.Client, paho.Message) {}))
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, errors.New("anonymous CONNECT timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	return c, nil
}

// Item 12 of issue 17: an anonymous loopback client cannot take over the
// session of a device that connected with its certificate over ALPN on
// the TLS port (the AWS IoT Device Client's way), neither live (it would
// disconnect the device) nor offline (it would receive the destination
// token queued for it).
func TestAnonymousCannotTakeDeviceSession(t *testing.T) {
	ts, files := newDeviceServer(t, "dev-1")
	f := files["dev-1"]
	dc := deviceMQTT(t, ts, f)
	if err := dc.SubscribeNotify(); err != nil {
		t.Fatal(err)
	}
	if _, err := anonMQTT(ts, "dev-1"); !errors.Is(err, packets.ErrorRefusedIDRejected) {
		t.Fatalf("anonymous client with the device's client ID: %v, want CONNACK identifier rejected", err)
	}
	if !dc.Connected() {
		t.Fatal("the anonymous client disconnected the device")
	}
	dc.Close()
	waitUntil(t, "the device's session kept offline", 5*time.Second, func() bool {
		return ts.notifier.broker.Stats().OfflineSessions == 1
	})
	o := ts.openFor(t, "dev-1", "SSH")
	if _, err := anonMQTT(ts, "dev-1"); !errors.Is(err, packets.ErrorRefusedIDRejected) {
		t.Fatalf("anonymous client resuming the device's offline session: %v, want CONNACK identifier rejected", err)
	}
	// The device comes back (a paho client with the device's files and a
	// default handler: the queued message may come before any SUBSCRIBE).
	got := make(chan []byte, 4)
	tlsCfg, err := devicetest.DeviceTLS(f.RootCAFile, f.CertFile, f.KeyFile, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg.NextProtos = []string{devicetest.ALPN}
	dev := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + ts.Addr().String()).SetTLSConfig(tlsCfg).
		SetClientID("dev-1").SetProtocolVersion(4).SetCleanSession(false).SetAutoReconnect(false).
		SetConnectTimeout(5 * time.Second).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { got <- m.Payload() }))
	if tok := dev.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("the device reconnecting: %v", tok.Error())
	}
	defer dev.Disconnect(100)
	select {
	case b := <-got:
		var n devicetest.Notification
		if err := json.Unmarshal(b, &n); err != nil || n.ClientAccessToken != o.DestinationAccessToken {
			t.Fatalf("notification %s (%v)", b, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the device did not get its queued notification")
	}
	if got := ts.notifier.broker.Stats().Refused["session_owner"]; got != 2 {
		t.Errorf("refused for the session owner: %d, want 2", got)
	}
}

// lockedBuffer is an io.Writer the test can read while the server writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The banner says plainly that anonymous loopback MQTT clients are
// accepted, and what that means; not with --mqtt-no-anonymous.
func TestBannerAnonymousMQTT(t *testing.T) {
	for _, noAnon := range []bool{false, true} {
		var banner lockedBuffer
		ts := newTestServer(t, func(c *Config) {
			c.MQTT = MQTTConfig{Listen: "127.0.0.1:0", NoAnonymous: noAnon}
			c.Banner = &banner
		})
		waitUntil(t, "the banner", 5*time.Second, func() bool { return strings.Contains(banner.String(), "ssh -p 5555") })
		want := "anonymous MQTT clients are accepted on " + ts.notifier.broker.Addr().String() + " (loopback): any local process can act as any thing"
		if got := strings.Contains(banner.String(), want); got == noAnon {
			t.Errorf("NoAnonymous %v: banner has the anonymous warning: %v\n%s", noAnon, got, banner.String())
		}
	}
}
