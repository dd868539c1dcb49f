package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/sectun/sectun/internal/server/devicetest"
	"github.com/sectun/sectun/tunnel"
)

// Item 11 of issue 17: MQTT clients cannot exhaust tunneld. Each MQTT
// limit is saturated with real clients in turn (a flood of connections to
// the loopback listener, one device certificate opening many sessions over
// ALPN, and enough devices to fill every main-listener slot outside the
// reserve) while a tunnel through the relay keeps passing bytes, the API
// answers and a new tunnel can be opened and used.
func TestMQTTLimitsKeepTunnelWorking(t *testing.T) {
	const maxConns, reserve, perIdentity = 48, 16, 8
	ts := newTestServer(t, func(c *Config) {
		c.Plaintext = false
		c.MaxConns = maxConns
		c.MQTT = MQTTConfig{Listen: "127.0.0.1:0", ReserveConns: reserve, MaxConnsPerIdentity: perIdentity}
	})
	b := ts.notifier.broker
	o := ts.open(t, "SSH")
	dst, err := ts.session(t, tunnel.ModeDestination, o.DestinationAccessToken, "")
	if err != nil {
		t.Fatal(err)
	}
	echoDestination(dst)
	src, err := ts.session(t, tunnel.ModeSource, o.SourceAccessToken, "")
	if err != nil {
		t.Fatal(err)
	}
	stillWorks := func(phase string) {
		t.Helper()
		roundTrip(t, src, "SSH", "through the tunnel while "+phase)
		ts.describe(t, o.TunnelID) // the API answers
		if code, _ := get(t, ts, "/healthz"); code != 200 {
			t.Fatalf("%s: /healthz %d", phase, code)
		}
	}
	stillWorks("nothing else happens")

	// A. 200 connections to the loopback MQTT listener that never send
	// CONNECT: the address holds MaxConnsPerAddr of them, the rest are
	// closed at once.
	var flood []net.Conn
	for range 200 {
		c, err := net.DialTimeout("tcp", b.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		flood = append(flood, c)
	}
	waitUntil(t, "the per-address limit refusing the rest", 5*time.Second, func() bool {
		st := b.Stats()
		return st.Conns == st.MaxConnsPerAddr && st.Refused["conns_per_addr"] == int64(200-st.MaxConnsPerAddr)
	})
	stillWorks("the loopback MQTT listener is flooded")
	for _, c := range flood {
		c.Close()
	}
	waitUntil(t, "the flood gone", 5*time.Second, func() bool { return b.Stats().Conns == 0 })

	// B. One device certificate over ALPN asks for 20 sessions.
	dataDir := ts.cfg.DataDir
	dev := func(thing string) *DeviceFiles {
		f, err := CreateDevice(DeviceRequest{DataDir: dataDir, Thing: thing, OutDir: filepath.Join(t.TempDir(), thing)})
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	connect := func(f *DeviceFiles, clientID string) (*devicetest.MQTTClient, error) {
		c, err := devicetest.ConnectMQTT(devicetest.MQTTConfig{
			Addr: ts.Addr().String(), ServerName: "localhost",
			RootCAFile: f.RootCAFile, CertFile: f.CertFile, KeyFile: f.KeyFile, Thing: clientID, Timeout: 5 * time.Second,
		})
		if err == nil {
			t.Cleanup(c.Close)
		}
		return c, err
	}
	one := dev("dev-1")
	accepted := 0
	for i := range 20 {
		_, err := connect(one, fmt.Sprintf("dev-1@%d", i))
		switch {
		case err == nil:
			accepted++
		case !errors.Is(err, packets.ErrorRefusedServerUnavailable):
			t.Fatalf("session %d of one certificate: %v, want refused with server unavailable", i, err)
		}
	}
	if accepted != perIdentity {
		t.Fatalf("one certificate holds %d connections, want %d", accepted, perIdentity)
	}
	stillWorks("one certificate is at its connection limit")

	// C. Devices fill every main-listener slot MQTT may take: the reserve
	// stays for HTTPS, the API and /tunnel.
	slots := maxConns - reserve
	held := perIdentity
	var refusedDevice bool
	for i := 0; !refusedDevice; i++ {
		if i > slots {
			t.Fatalf("%d MQTT connections on the TLS port, the limit is %d", held, slots)
		}
		_, err := connect(dev(fmt.Sprintf("dev-c%d", i)), fmt.Sprintf("dev-c%d", i))
		if err != nil {
			refusedDevice = true
			continue
		}
		held++
	}
	if held != slots || ts.mqttBudget.held.Load() != int64(slots) {
		t.Fatalf("MQTT holds %d main-listener slots (budget says %d), want %d", held, ts.mqttBudget.held.Load(), slots)
	}
	stillWorks("MQTT holds every slot outside the reserve")
	o2 := ts.open(t, "SSH")
	dst2, err := ts.session(t, tunnel.ModeDestination, o2.DestinationAccessToken, "")
	if err != nil {
		t.Fatalf("a new tunnel's destination: %v", err)
	}
	echoDestination(dst2)
	src2, err := ts.session(t, tunnel.ModeSource, o2.SourceAccessToken, "")
	if err != nil {
		t.Fatalf("a new tunnel's source: %v", err)
	}
	roundTrip(t, src2, "SSH", "through a tunnel opened while MQTT is at its limit")

	// The metrics say so.
	_, body := get(t, ts, "/metrics")
	for _, want := range []string{
		fmt.Sprintf("tunneld_conns_mqtt %d", slots),
		fmt.Sprintf("tunneld_conns_mqtt_limit %d", slots),
		fmt.Sprintf("tunneld_conns_reserve %d", reserve),
		`tunneld_mqtt_refused_total{reason="conns_per_addr"} 136`,
		`tunneld_mqtt_refused_total{reason="conns_per_identity"} 12`,
		`tunneld_mqtt_refused_total{reason="reserve"} 1`,
		fmt.Sprintf(`tunneld_mqtt_limit{limit="conns_per_identity"} %d`, perIdentity),
		"tunneld_mqtt_connections_limit ",
		"tunneld_mqtt_sessions_limit 20000",
		"tunneld_mqtt_queued_messages_limit 20000",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", metricLines(body, "tunneld_mqtt_", "tunneld_conns_"))
	}
}

func metricLines(s string, prefixes ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) {
				out = append(out, l)
			}
		}
	}
	return strings.Join(out, "\n")
}

// The MQTT connection bound and the reserve follow RLIMIT_NOFILE.
func TestSizeMQTT(t *testing.T) {
	tests := []struct {
		name                  string
		cfg                   MQTTConfig
		maxConns, nofile      int
		mqttConns, reserve    int
		slots                 int64
		warnsMaxConnsTooLarge bool
	}{
		// 20,000 descriptors (this machine's limit, the flood):
		// 16,384 main-listener slots, 2,048 of them reserved; MQTT gets
		// what the descriptors leave after the reserve.
		{"nofile 20000", MQTTConfig{}, 16384, 20000, 20000 - fdOverhead - 2048, 2048, 16384 - 2048, false},
		// 1024 descriptors: --max-conns is larger than they allow.
		{"nofile 1024", MQTTConfig{}, 16384, 1024, 1024 - fdOverhead - 112, 112, 16384 - 112, true},
		// Plenty: MQTT at most DefaultMaxSessions.
		{"nofile 1M", MQTTConfig{}, 16384, 1 << 20, 20000, 2048, 16384 - 2048, false},
		{"unknown limit", MQTTConfig{}, 16384, 0, 10000, 2048, 16384 - 2048, false},
		{"explicit", MQTTConfig{MaxConns: 500, ReserveConns: 100}, 1000, 20000, 500, 100, 900, false},
		{"no reserve, no cap", MQTTConfig{ReserveConns: -1}, -1, 20000, 20000 - fdOverhead, 0, -1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			logs := &lockedBuffer{}
			b := sizeMQTT(&tc.cfg, tc.maxConns, tc.nofile, slog.New(slog.NewTextHandler(logs, nil)))
			if b.mqttConns != tc.mqttConns || b.reserve != tc.reserve || b.slots != tc.slots {
				t.Fatalf("mqtt conns %d, reserve %d, slots %d; want %d, %d, %d", b.mqttConns, b.reserve, b.slots, tc.mqttConns, tc.reserve, tc.slots)
			}
			if !strings.Contains(logs.String(), fmt.Sprintf("rlimit_nofile=%d mqtt_max_conns=%d", tc.nofile, tc.mqttConns)) {
				t.Errorf("choice not logged: %s", logs.String())
			}
			if got := strings.Contains(logs.String(), "exceeds the file descriptor limit"); got != tc.warnsMaxConnsTooLarge {
				t.Errorf("warning about --max-conns: %v\n%s", got, logs.String())
			}
		})
	}
}
