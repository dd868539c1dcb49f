package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/certs"
	"github.com/sectun/sectun/internal/server/devicetest"
	"github.com/sectun/sectun/tunnel"
)

// newDeviceServer is a TLS tunneld with the embedded broker, MQTT on its
// TLS port by ALPN (the default), and a device identity for thing.
func newDeviceServer(t *testing.T, things ...string) (*testServer, map[string]*DeviceFiles) {
	t.Helper()
	ts := newTestServer(t, func(c *Config) {
		c.Plaintext = false
		c.MQTT = MQTTConfig{Listen: "127.0.0.1:0"}
	})
	if !ts.MQTTOnTLSPort() || ts.DeviceCAPath() == "" {
		t.Fatal("MQTT is not served on the TLS port by default")
	}
	files := map[string]*DeviceFiles{}
	for _, thing := range things {
		f, err := CreateDevice(DeviceRequest{DataDir: ts.cfg.DataDir, Thing: thing, OutDir: filepath.Join(t.TempDir(), thing)})
		if err != nil {
			t.Fatal(err)
		}
		files[thing] = f
	}
	return ts, files
}

func (ts *testServer) openFor(t *testing.T, thing string, services ...string) opened {
	t.Helper()
	var o opened
	in := map[string]any{"destinationConfig": map[string]any{"thingName": thing, "services": services}}
	if code := ts.call(t, "OpenTunnel", in, &o); code != 200 {
		t.Fatalf("OpenTunnel: HTTP %d", code)
	}
	return o
}

func deviceMQTT(t *testing.T, ts *testServer, f *DeviceFiles) *devicetest.MQTTClient {
	t.Helper()
	dc, err := devicetest.ConnectMQTT(devicetest.MQTTConfig{
		Addr: ts.Addr().String(), ServerName: "localhost",
		RootCAFile: f.RootCAFile, CertFile: f.CertFile, KeyFile: f.KeyFile, Thing: f.Thing,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dc.Close)
	return dc
}

// echoServer is the device's "SSH" service: it echoes.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String()
}

// bulkRoundTrip sends n random bytes through the source's service and
// checks the echo.
func bulkRoundTrip(t *testing.T, src *tunnel.Session, service string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := src.Dial(ctx, service)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	want := make([]byte, n)
	rand.Read(want)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(want)
		werr <- err
	}()
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("echo differs from what was sent")
	}
}

// TestDeviceClientOnTLSPort is the whole AWS IoT Device Client path on
// tunneld's single TLS port: MQTT by ALPN with a certificate issued by
// tunneld device create, the notification, a V1-only destination, a V1
// source, the duplicate-notification second connection, and HTTPS clients
// never asked for a certificate.
func TestDeviceClientOnTLSPort(t *testing.T) {
	ts, files := newDeviceServer(t, "dev-1")
	f := files["dev-1"]
	addr := ts.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	dc := deviceMQTT(t, ts, f)
	if err := dc.SubscribeNotify(); err != nil {
		t.Fatal(err)
	}
	// The certificate, not the username or client ID, names the thing:
	// another thing's topic is refused and the connection stays.
	if _, err := dc.Subscribe("$aws/things/dev-2/tunnels/notify"); !errors.Is(err, devicetest.ErrRefused) {
		t.Fatalf("subscription to another thing's topic: %v", err)
	}
	if !dc.Connected() {
		t.Fatal("refused subscription disconnected the client")
	}

	o := ts.openFor(t, "dev-1", "SSH")
	n, err := dc.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if port, err := n.Check(); err != nil || port != 22 {
		t.Fatalf("the Device Client would not act on %s: port %d, %v", n.Raw, port, err)
	}
	if n.ClientAccessToken != o.DestinationAccessToken || n.Region != "us-east-1" {
		t.Fatalf("notification %s", n.Raw)
	}

	// The device's tunnel, V1 only, trusting only root-ca.pem, no client
	// certificate, on the same port.
	devTLS, err := devicetest.DeviceTLS(f.RootCAFile, "", "", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	target := echoServer(t)
	dst, err := devicetest.ConnectDestination(ctx, devicetest.DestinationConfig{
		Endpoint: addr, TLS: devTLS, Token: n.ClientAccessToken, Target: target,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if got := strings.Join(dst.Services(), ","); got != "SSH" {
		t.Fatalf("SERVICE_IDS %q", got)
	}

	src, err := tunnel.Connect(ctx, tunnel.Config{
		Mode: tunnel.ModeSource, AccessToken: o.SourceAccessToken, Endpoint: ts.wsURL, TLS: ts.tls,
		PeerVersion: 1, Proxy: func(*url.URL) (*url.URL, error) { return nil, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bulkRoundTrip(t, src, "SSH", 300<<10) // several 32 KiB chunks each way
	bulkRoundTrip(t, src, "SSH", 10)      // a second stream replaces the first

	// A second identical notification makes the Device Client connect
	// again with the same token and another client token: refused with
	// 401, the first connection untouched.
	_, err = devicetest.ConnectDestination(ctx, devicetest.DestinationConfig{
		Endpoint: addr, TLS: devTLS, Token: n.ClientAccessToken, Target: target,
	})
	var he *tunnel.HandshakeError
	if !errors.As(err, &he) || he.StatusCode != http.StatusUnauthorized {
		t.Fatalf("second destination with another client token: %v, want HTTP 401", err)
	}
	bulkRoundTrip(t, src, "SSH", 64<<10)
	select {
	case <-dst.Done():
		t.Fatalf("first destination ended: %v", dst.Err())
	default:
	}
	if got := dst.Streams(); got != 3 {
		t.Errorf("destination saw %d streams, want 3", got)
	}
	if st := ts.describe(t, o.TunnelID)["destinationConnectionState"].(map[string]any)["status"]; st != "CONNECTED" {
		t.Errorf("destination state %v", st)
	}

	// HTTPS on the same port: no client certificate asked for.
	var asked atomic.Bool
	hc := ts.httpClient()
	hc.Transport.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: ts.tls.RootCAs,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			asked.Store(true)
			return &tls.Certificate{}, nil
		}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(ts.URL() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || asked.Load() {
		t.Fatalf("healthz: HTTP %d, client certificate requested: %v", resp.StatusCode, asked.Load())
	}
}

// TestDeviceMQTTRefusals: on the TLS port, MQTT needs a certificate from
// the device CA (or --mqtt-client-ca); a valid one cannot take another
// thing's client ID.
func TestDeviceMQTTRefusals(t *testing.T) {
	extraCA, err := certs.NewCA("existing device PKI")
	if err != nil {
		t.Fatal(err)
	}
	extraFile := filepath.Join(t.TempDir(), "extra-ca.pem")
	os.WriteFile(extraFile, extraCA.CertPEM, 0o644)
	ts := newTestServer(t, func(c *Config) {
		c.Plaintext = false
		c.MQTT = MQTTConfig{Listen: "127.0.0.1:0", ClientCAFile: extraFile}
	})
	dir := t.TempDir()
	f, err := CreateDevice(DeviceRequest{DataDir: ts.cfg.DataDir, Thing: "dev-1", OutDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	writePair := func(name string, ca *certs.CA, thing string) (string, string) {
		iss, err := ca.IssueClient(thing, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c, k := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
		os.WriteFile(c, iss.CertPEM, 0o644)
		os.WriteFile(k, iss.KeyPEM, 0o600)
		return c, k
	}
	unknownCA, err := certs.NewCA("nobody's CA")
	if err != nil {
		t.Fatal(err)
	}
	uc, uk := writePair("unknown", unknownCA, "dev-1")
	ec, ek := writePair("extra", extraCA, "dev-9")

	tests := []struct {
		name, cert, key, clientID string
		ok                        bool
	}{
		{"device CA", f.CertFile, f.KeyFile, "dev-1", true},
		{"--mqtt-client-ca", ec, ek, "dev-9", true},
		{"no certificate", "", "", "dev-1", false},
		{"unknown CA", uc, uk, "dev-1", false},
		{"another thing's client ID", f.CertFile, f.KeyFile, "dev-2", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := devicetest.ConnectMQTT(devicetest.MQTTConfig{
				Addr: ts.Addr().String(), ServerName: "127.0.0.1",
				RootCAFile: f.RootCAFile, CertFile: tc.cert, KeyFile: tc.key, Thing: tc.clientID,
				Timeout: 5 * time.Second,
			})
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("connected")
			}
		})
	}
}

// TestDeviceReconnect: the Device Client restarting (clean session false,
// so the broker resumes its session) subscribes again and gets the next
// notification once.
func TestDeviceReconnect(t *testing.T) {
	ts, files := newDeviceServer(t, "dev-1")
	f := files["dev-1"]
	dc := deviceMQTT(t, ts, f)
	if err := dc.SubscribeNotify(); err != nil {
		t.Fatal(err)
	}
	dc.Close()

	dc2 := deviceMQTT(t, ts, f)
	if err := dc2.SubscribeNotify(); err != nil {
		t.Fatal(err)
	}
	o := ts.openFor(t, "dev-1", "SSH")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := dc2.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n.ClientAccessToken != o.DestinationAccessToken {
		t.Fatalf("notification %s", n.Raw)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if n, err := dc2.Next(short); err == nil {
		t.Fatalf("notification delivered twice: %s", n.Raw)
	}
}

// TestMQTTALPNOff: --mqtt-alpn=false serves HTTPS only; a client offering
// x-amzn-mqtt-ca gets no MQTT (the TLS handshake fails: no shared
// protocol is negotiated, or the HTTP server sees garbage).
func TestMQTTALPNOff(t *testing.T) {
	ts := newTestServer(t, func(c *Config) {
		c.Plaintext = false
		c.MQTT = MQTTConfig{Listen: "127.0.0.1:0", NoALPN: true}
	})
	if ts.MQTTOnTLSPort() || ts.DeviceCAPath() != "" {
		t.Fatal("MQTT on the TLS port although NoALPN")
	}
	cfg := ts.tls.Clone()
	cfg.NextProtos = []string{MQTTALPN}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ts.Addr().String(), cfg)
	if err == nil {
		np := c.ConnectionState().NegotiatedProtocol
		c.Close()
		if np == MQTTALPN {
			t.Fatal("x-amzn-mqtt-ca negotiated with NoALPN")
		}
	}
}

func TestCreateDevice(t *testing.T) {
	data := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	// A data directory that is not tunneld's (mistyped, missing) is
	// refused: a CA made there would be trusted by no tunneld.
	for _, dir := range []string{filepath.Join(data, "missing"), data} {
		if _, err := CreateDevice(DeviceRequest{DataDir: dir, Thing: "pump-7", OutDir: out}); err == nil || !strings.Contains(err.Error(), "--init-data-dir") {
			t.Fatalf("CreateDevice on %s (not a data directory): %v; want a refusal naming --init-data-dir", dir, err)
		}
	}
	if _, err := os.Stat(filepath.Join(data, "devices")); err == nil {
		t.Fatal("a refused CreateDevice made a device CA")
	}
	f, err := CreateDevice(DeviceRequest{DataDir: data, InitDataDir: true, Thing: "pump-7", OutDir: out, Endpoint: "tunnels.example.com", DeviceDir: "/etc/aws-iot-device-client"})
	if err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]os.FileMode{f.CertFile: 0o644, f.KeyFile: 0o600, f.RootCAFile: 0o644, f.ConfigFile: 0o640, out: 0o700 | os.ModeDir} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != mode {
			t.Errorf("%s: mode %v, want %v", path, st.Mode(), mode)
		}
	}
	cfg := string(f.Config)
	for _, want := range []string{
		`"endpoint": "tunnels.example.com"`,
		`"cert": "/etc/aws-iot-device-client/pump-7.cert.pem"`,
		`"key": "/etc/aws-iot-device-client/pump-7.private.key"`,
		`"root-ca": "/etc/aws-iot-device-client/root-ca.pem"`,
		`"thing-name": "pump-7"`,
		"\"tunneling\": {\n    \"enabled\": true,\n    \"endpoint\": \"tunnels.example.com\"",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("configuration lacks %s:\n%s", want, cfg)
		}
	}
	// The certificate verifies against the device CA, CN = thing.
	pair, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(f.DeviceCAFile)
	pool, _ := certs.PoolFromPEM(caPEM)
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil || leaf.Subject.CommonName != "pump-7" {
		t.Fatalf("certificate: CN %q, %v", leaf.Subject.CommonName, err)
	}
	// root-ca.pem is the development CA that signs tunneld's certificate.
	devCA, _ := os.ReadFile(filepath.Join(data, "tls", "ca.pem"))
	root, _ := os.ReadFile(f.RootCAFile)
	if !bytes.Equal(devCA, root) {
		t.Error("root-ca.pem is not the development CA")
	}
	if len(f.Warnings) == 0 {
		t.Error("no warning that the self-signed certificate does not cover the endpoint")
	}
	if f.DeviceConfigFile != "/etc/aws-iot-device-client/pump-7.device-client.json" || !strings.HasPrefix(f.DeviceCASubject, "CN=sectun device CA") || len(f.DeviceCAFingerprint) != 95 {
		t.Errorf("device config %q, CA %q %q", f.DeviceConfigFile, f.DeviceCASubject, f.DeviceCAFingerprint)
	}

	// Existing files are kept unless forced; the same CA signs again.
	if _, err := CreateDevice(DeviceRequest{DataDir: data, Thing: "pump-7", OutDir: out}); !errors.Is(err, ErrDeviceExists) {
		t.Fatalf("second create: %v", err)
	}
	f2, err := CreateDevice(DeviceRequest{DataDir: data, Thing: "pump-7", OutDir: out, Force: true})
	if err != nil || f2.DeviceCAFile != f.DeviceCAFile {
		t.Fatal(f2, err)
	}

	for _, bad := range []DeviceRequest{
		{DataDir: data, Thing: "a/b", OutDir: out},
		{DataDir: data, Thing: "", OutDir: out},
		{DataDir: data, Thing: "x", OutDir: ""},
		{DataDir: data, Thing: "x", OutDir: out, Endpoint: "https://host:443"},
		{DataDir: data, Thing: "x", OutDir: out, RootCAFile: filepath.Join(data, "missing.pem")},
	} {
		if _, err := CreateDevice(bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// TestBrokerTLSListenerTrustsDeviceCA: --mqtt-tls-listen (the broker's own
// MQTT-over-TLS port) accepts the same device certificates.
func TestBrokerTLSListenerTrustsDeviceCA(t *testing.T) {
	ts := newTestServer(t, func(c *Config) {
		c.Plaintext = false
		c.MQTT = MQTTConfig{Listen: "127.0.0.1:0", TLSListen: "127.0.0.1:0"}
	})
	f, err := CreateDevice(DeviceRequest{DataDir: ts.cfg.DataDir, Thing: "dev-1", OutDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	a := ts.notifier.broker.TLSAddr()
	if a == nil {
		t.Fatal("no broker TLS listener")
	}
	dc, err := devicetest.ConnectMQTT(devicetest.MQTTConfig{
		Addr: a.String(), ServerName: "localhost",
		RootCAFile: f.RootCAFile, CertFile: f.CertFile, KeyFile: f.KeyFile, Thing: "dev-1",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	if err := dc.SubscribeNotify(); err != nil {
		t.Fatal(err)
	}
	if _, err := dc.Subscribe("$aws/things/dev-2/tunnels/notify"); !errors.Is(err, devicetest.ErrRefused) {
		t.Fatalf("another thing's topic: %v", err)
	}
}
