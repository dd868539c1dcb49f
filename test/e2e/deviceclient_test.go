package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/server/devicetest"
	"github.com/sectun/sectun/internal/token"
	"github.com/sectun/sectun/tunnel"
)

// The proof that the AWS IoT Device Client works is TestRealDeviceClient
// (deviceclient_real_test.go), with the real binary on ports 443 and 22.
// TestDeviceClient runs the real tunneld, `tunneld device create`, sectun
// connect and localproxy against an emulated Device Client
// (internal/server/devicetest: MQTT 3.1.1 by ALPN x-amzn-mqtt-ca with the
// issued certificate, a V1-only destination) and a real sshd, all on
// tunneld's one TLS port. It stays for what the real binary cannot show:
// a device subscribing to another thing's topic is refused; a second
// connection with an already used destination token gets HTTP 401 while
// the first tunnel goes on; the device's tunnel ends with ErrTunnelClosed
// on CloseTunnel; HTTPS clients on the port are never asked for a
// certificate. It needs neither root nor ../shared, so it also runs on a
// user's clone, on any port.

// deviceClientConfig is what the test reads back from the Device Client
// configuration written by tunneld device create.
type deviceClientConfig struct {
	Endpoint  string `json:"endpoint"`
	Cert      string `json:"cert"`
	Key       string `json:"key"`
	RootCA    string `json:"root-ca"`
	ThingName string `json:"thing-name"`
	Tunneling struct {
		Enabled  bool   `json:"enabled"`
		Endpoint string `json:"endpoint"`
	} `json:"tunneling"`
}

// emulatedDevice acts on notifications as the Device Client does: each
// accepted one opens a V1 destination to target.
type emulatedDevice struct {
	mqtt   *devicetest.MQTTClient
	dests  chan *devicetest.Destination
	errs   chan error
	mu     sync.Mutex
	tokens []string // notified tokens, in order
}

func startEmulatedDevice(t *testing.T, conf deviceClientConfig, port, target string) *emulatedDevice {
	t.Helper()
	addr := net.JoinHostPort("127.0.0.1", port) // the Device Client: conf.Endpoint:443
	dc, err := devicetest.ConnectMQTT(devicetest.MQTTConfig{
		Addr: addr, ServerName: conf.Endpoint,
		RootCAFile: conf.RootCA, CertFile: conf.Cert, KeyFile: conf.Key, Thing: conf.ThingName,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := dc.SubscribeNotify(); err != nil {
		dc.Close()
		t.Fatal(err)
	}
	devTLS, err := devicetest.DeviceTLS(conf.RootCA, "", "", conf.Tunneling.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	e := &emulatedDevice{mqtt: dc, dests: make(chan *devicetest.Destination, 8), errs: make(chan error, 8)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			n, err := dc.Next(ctx)
			if err != nil {
				return
			}
			if _, err := n.Check(); err != nil {
				e.errs <- err
				continue
			}
			e.mu.Lock()
			e.tokens = append(e.tokens, n.ClientAccessToken)
			e.mu.Unlock()
			dst, err := devicetest.ConnectDestination(ctx, devicetest.DestinationConfig{
				Endpoint: addr, TLS: devTLS, Token: n.ClientAccessToken, Target: target,
			})
			if err != nil {
				e.errs <- err
				continue
			}
			e.dests <- dst
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		dc.Close()
		close(e.dests)
		for d := range e.dests {
			d.Close()
		}
	})
	return e
}

// next returns the next destination session the device started.
func (e *emulatedDevice) next(t *testing.T) *devicetest.Destination {
	t.Helper()
	select {
	case d := <-e.dests:
		t.Cleanup(func() { d.Close() })
		return d
	case err := <-e.errs:
		t.Fatalf("device: %v", err)
	case <-time.After(agentWait):
		t.Fatal("the device started no tunnel")
	}
	return nil
}

func (e *emulatedDevice) lastToken() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.tokens[len(e.tokens)-1]
}

// TestDeviceClient: a device registered with `tunneld device create`
// reaches MQTT and /tunnel on tunneld's one TLS port like the AWS IoT
// Device Client; `sectun connect --destination-type V1` and `localproxy
// -y V1` carry ssh to the device's sshd through its V1-only tunnel.
func TestDeviceClient(t *testing.T) {
	sshd := startSSHD(t)
	d, caFile := startTunneldTLS(t, "--mqtt-listen", "127.0.0.1:0")
	d.waitLine(`AWS IoT Device Client: MQTT on this port \(ALPN x-amzn-mqtt-ca\)`, agentWait)
	hostport := strings.TrimPrefix(d.url, "https://")
	_, port, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatal(err)
	}

	// Register the thing, offline on the data directory.
	out := filepath.Join(t.TempDir(), "device")
	create := exec.Command(bin("tunneld"), "device", "create", "--data-dir", d.dataDir, "--thing", agentThing, "--out", out, "--endpoint", "localhost")
	created, err := create.CombinedOutput()
	if err != nil {
		t.Fatalf("tunneld device create: %v\n%s", err, created)
	}
	if !strings.Contains(string(created), `"thing-name": "`+agentThing+`"`) {
		t.Fatalf("tunneld device create printed no configuration:\n%s", created)
	}
	b, err := os.ReadFile(filepath.Join(out, agentThing+".device-client.json"))
	if err != nil {
		t.Fatal(err)
	}
	var conf deviceClientConfig
	if err := json.Unmarshal(b, &conf); err != nil {
		t.Fatal(err)
	}
	if conf.Endpoint != "localhost" || conf.ThingName != agentThing || !conf.Tunneling.Enabled || conf.Tunneling.Endpoint != "localhost" {
		t.Fatalf("configuration %s", b)
	}
	if st, err := os.Stat(conf.Key); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}

	dev := startEmulatedDevice(t, conf, port, "127.0.0.1:"+strconv.Itoa(sshd.port))
	if _, err := dev.mqtt.Subscribe("$aws/things/dev-2/tunnels/notify"); !errors.Is(err, devicetest.ErrRefused) {
		t.Fatalf("subscription to another thing's topic: %v", err)
	}

	// The operator: one command, V1 for the Device Client.
	// sectun waits for the device, so the device's side is watched from
	// another goroutine.
	var dst *devicetest.Destination
	var devErr error
	started := make(chan struct{})
	go func() {
		defer close(started)
		select {
		case dst = <-dev.dests:
		case devErr = <-dev.errs:
		case <-time.After(agentWait):
			devErr = errors.New("the device started no tunnel")
		}
	}()
	conn := sectunConnect(t, d, []string{"--ca", caFile, "--destination-type", "V1"}, "SSH")
	<-started
	if dst == nil {
		t.Fatalf("device: %v", devErr)
	}
	t.Cleanup(func() { dst.Close() })
	sshd.sshEcho(t, conn.ports["SSH"], "hello-device-client")

	// A second identical notification: the Device Client connects again
	// with the same token and a new client token; tunneld refuses it (401)
	// and the first tunnel goes on.
	tlsCfg, err := devicetest.DeviceTLS(conf.RootCA, "", "", conf.Tunneling.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), agentWait)
	defer cancel()
	_, err = devicetest.ConnectDestination(ctx, devicetest.DestinationConfig{
		Endpoint: net.JoinHostPort("127.0.0.1", port), TLS: tlsCfg, Token: dev.lastToken(), Target: "127.0.0.1:1",
	})
	var he *tunnel.HandshakeError
	if !errors.As(err, &he) || he.StatusCode != http.StatusUnauthorized {
		t.Fatalf("second connection with the same token: %v, want HTTP 401", err)
	}
	sshd.sshEcho(t, conn.ports["SSH"], "still-connected")
	if err := dst.Err(); err != nil {
		t.Fatalf("the device's tunnel: %v", err)
	}
	if strings.Contains(d.output(), dev.lastToken()) {
		t.Error("tunneld logged an access token")
	}

	// Ctrl-C closes the tunnel; the device's tunnel ends.
	conn.interrupt(t)
	select {
	case <-dst.Done():
		if err := dst.Err(); !errors.Is(err, tunnel.ErrTunnelClosed) {
			t.Fatalf("device tunnel ended with %v, want the tunnel closed", err)
		}
	case <-time.After(agentWait):
		t.Fatal("the device's tunnel is still up after CloseTunnel")
	}

	// The reference-style source: localproxy -y V1 against a tunnel opened
	// with the API.
	tun := d.openTunnel(t, agentThing, "SSH")
	dst2 := dev.next(t)
	if short := token.Short(dev.lastToken()); short != token.Short(tun.DestinationAccessToken) {
		t.Fatalf("notified token %s, opened %s", short, token.Short(tun.DestinationAccessToken))
	}
	caDir := t.TempDir()
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(caDir, "ca.pem"), caPEM, 0o644)
	_, addrs := startSource(t, hostport, tun.SourceAccessToken, "0", 1, "-y", "V1", "-c", caDir)
	var local string
	for _, a := range addrs {
		local = a
	}
	_, lport, _ := net.SplitHostPort(local)
	sshd.sshEcho(t, lport, "via-localproxy")
	sshd.sshEcho(t, lport, "second-connection") // a new STREAM_START, still V1
	if got := dst2.Streams(); got < 2 {
		t.Errorf("device saw %d streams, want 2 or more", got)
	}
	if err := dst2.Err(); err != nil {
		t.Fatalf("the device's tunnel: %v", err)
	}

	// HTTPS clients on the same port are never asked for a certificate.
	var asked atomic.Bool
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: tlsCfg.RootCAs,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			asked.Store(true)
			return &tls.Certificate{}, nil
		}}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: agentWait}).Get(d.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || asked.Load() {
		t.Fatalf("healthz: HTTP %d, certificate requested: %v", resp.StatusCode, asked.Load())
	}
}
