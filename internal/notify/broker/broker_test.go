package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/notify"
	"github.com/sectun/sectun/internal/notify/internal/testpki"
)

func TestNotifyDelivered(t *testing.T) {
	b, logs := startBroker(t, Config{})
	dev := mustDial(t, clientOpts{url: tcpURL(b), id: "dev-1"})
	topic := "$aws/things/dev-1/tunnels/notify"
	if code := dev.subscribe(t, topic); code != 1 {
		t.Fatalf("SUBACK %#x, want QoS 1 granted", code)
	}
	n := notify.Notification{ThingName: "dev-1", Token: "secret-token-value", Region: "us-east-1", Services: []string{"SSH1", "HTTP1"}}
	mustNotify(t, b, n)
	m := dev.next(t)
	want := `{"clientAccessToken":"secret-token-value","clientMode":"destination","region":"us-east-1","services":["SSH1","HTTP1"]}`
	if m.Topic() != topic || string(m.Payload()) != want || m.Qos() != 1 || m.Retained() {
		t.Fatalf("got topic %s qos %d retained %v payload %s\nwant topic %s qos 1 payload %s", m.Topic(), m.Qos(), m.Retained(), m.Payload(), topic, want)
	}
	// Nobody listens for dev-2: logged, not an error.
	mustNotify(t, b, note("dev-2"))
	if !strings.Contains(logs.String(), "no device subscribed") {
		t.Error("missing log for a notification nobody receives")
	}
	if strings.Contains(logs.String(), "secret-token-value") || strings.Contains(logs.String(), "tok-dev-2") {
		t.Fatal("a token appears in the logs")
	}
}

func TestTopicPrefix(t *testing.T) {
	b, _ := startBroker(t, Config{TopicPrefix: "sectun"})
	dev := mustDial(t, clientOpts{url: tcpURL(b), id: "dev-1"})
	if code := dev.subscribe(t, "$aws/things/dev-1/tunnels/notify"); code != 0x80 {
		t.Fatalf("SUBACK %#x for the $aws topic under prefix sectun, want 0x80", code)
	}
	if code := dev.subscribe(t, "sectun/things/dev-1/tunnels/notify"); code != 1 {
		t.Fatalf("SUBACK %#x, want 1", code)
	}
	mustNotify(t, b, note("dev-1"))
	dev.expectOnly(t, "sectun/things/dev-1/tunnels/notify")
}

func TestSubscribeACL(t *testing.T) {
	b, _ := startBroker(t, Config{})
	a := mustDial(t, clientOpts{url: tcpURL(b), id: "dev-a"})
	for _, f := range []string{
		"$aws/things/dev-b/tunnels/notify",
		"$aws/things/+/tunnels/notify",
		"$aws/things/#",
		"#",
		"$SYS/#",
		"$aws/things/dev-a", // not below the thing's own level
	} {
		if code := a.subscribe(t, f); code != 0x80 {
			t.Errorf("dev-a subscribe %q: SUBACK %#x, want 0x80", f, code)
		}
	}
	for _, f := range []string{"$aws/things/dev-a/tunnels/notify", "$aws/things/dev-a/tunnels/#", "$aws/things/dev-a/#"} {
		if code := a.subscribe(t, f); code != 1 {
			t.Errorf("dev-a subscribe %q: SUBACK %#x, want 1", f, code)
		}
	}
	bb := mustDial(t, clientOpts{url: tcpURL(b), id: "dev-b"})
	bb.subscribe(t, "$aws/things/dev-b/tunnels/notify")
	mustNotify(t, b, note("dev-b"))
	bb.expectOnly(t, "$aws/things/dev-b/tunnels/notify")
	// dev-a would have received dev-b's notification before its own.
	mustNotify(t, b, note("dev-a"))
	m := a.expectOnly(t, "$aws/things/dev-a/tunnels/notify")
	if !strings.Contains(string(m.Payload()), "tok-dev-a") {
		t.Fatalf("payload %s", m.Payload())
	}
}

func TestPublishACL(t *testing.T) {
	b, _ := startBroker(t, Config{})
	url := tcpURL(b)
	watcher := mustDial(t, clientOpts{url: url, id: "dev-a@watch"})
	watcher.subscribe(t, "$aws/things/dev-a/#")

	a := mustDial(t, clientOpts{url: url, id: "dev-a"})
	// Allowed: the thing's own topics outside tunnels/.
	if tok := a.Publish("$aws/things/dev-a/status", 1, false, "up"); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("publish to own status topic: %v", tok.Error())
	}
	watcher.expectOnly(t, "$aws/things/dev-a/status")
	// Refused at QoS 0: silently dropped.
	a.Publish("$aws/things/dev-a/tunnels/notify", 0, false, `{"clientAccessToken":"forged"}`).WaitTimeout(wait)
	a.Publish("$aws/things/dev-b/tunnels/notify", 0, false, `{"clientAccessToken":"forged"}`).WaitTimeout(wait)
	// Refused at QoS 1: an MQTT 3.1.1 client is disconnected.
	a.Publish("$aws/things/dev-a/tunnels/notify", 1, false, `{"clientAccessToken":"forged"}`)
	select {
	case <-a.lost:
	case <-time.After(wait):
		t.Fatal("client not disconnected after a forbidden QoS 1 publish")
	}
	// Nothing forged reached the watcher: the next message is the real one.
	mustNotify(t, b, note("dev-a"))
	m := watcher.expectOnly(t, "$aws/things/dev-a/tunnels/notify")
	if strings.Contains(string(m.Payload()), "forged") {
		t.Fatal("forged notification delivered")
	}
}

func TestRetainedIgnored(t *testing.T) {
	b, _ := startBroker(t, Config{Users: []User{{Name: "ops", Password: "pw", Admin: true}}})
	admin := mustDial(t, clientOpts{url: tcpURL(b), id: "ops", user: "ops", pass: "pw"})
	admin.subscribe(t, "$aws/things/dev-1/tunnels/notify")
	tok := admin.Publish("$aws/things/dev-1/tunnels/notify", 1, true, "retained?")
	if !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	// mochi acknowledges a publish before it routes it: wait for it to come
	// back, or dev could subscribe in time to get it live.
	admin.expectOnly(t, "$aws/things/dev-1/tunnels/notify")
	dev := mustDial(t, clientOpts{url: tcpURL(b), id: "dev-1"})
	dev.subscribe(t, "$aws/things/dev-1/tunnels/notify")
	mustNotify(t, b, note("dev-1"))
	if m := dev.next(t); string(m.Payload()) == "retained?" {
		t.Fatal("a retained message was replayed to a new subscriber")
	}
}

func TestAdmin(t *testing.T) {
	b, _ := startBroker(t, Config{Users: []User{{Name: "ops", Password: "pw", Admin: true}}})
	admin := mustDial(t, clientOpts{url: tcpURL(b), id: "anything", user: "ops", pass: "pw"})
	if code := admin.subscribe(t, "$aws/things/+/tunnels/notify"); code != 1 {
		t.Fatalf("admin SUBACK %#x", code)
	}
	mustNotify(t, b, note("dev-9"))
	admin.expectOnly(t, "$aws/things/dev-9/tunnels/notify")

	dev := mustDial(t, clientOpts{url: tcpURL(b), id: "dev-9"})
	dev.subscribe(t, "$aws/things/dev-9/tunnels/notify")
	if tok := admin.Publish("$aws/things/dev-9/tunnels/notify", 1, false, "from-admin"); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if m := dev.expectOnly(t, "$aws/things/dev-9/tunnels/notify"); string(m.Payload()) != "from-admin" {
		t.Fatalf("payload %s", m.Payload())
	}
}

func TestConnectAuth(t *testing.T) {
	users := []User{{Name: "dev-1", Password: "pw1"}, {Name: "ops", Password: "pw-ops", Admin: true}}
	open, _ := startBroker(t, Config{Users: users})
	closed, _ := startBroker(t, Config{Users: users, NoAnonymous: true})
	tests := []struct {
		name   string
		b      *Broker
		o      clientOpts
		wantOK bool
	}{
		{"password", closed, clientOpts{id: "dev-1", user: "dev-1", pass: "pw1"}, true},
		{"password, suffixed client ID", closed, clientOpts{id: "dev-1@agent", user: "dev-1", pass: "pw1"}, true},
		{"password, empty client ID", closed, clientOpts{id: "", user: "dev-1", pass: "pw1"}, true},
		{"wrong password", closed, clientOpts{id: "dev-1", user: "dev-1", pass: "pw2"}, false},
		{"empty password", closed, clientOpts{id: "dev-1", user: "dev-1"}, false},
		{"unknown user", closed, clientOpts{id: "dev-7", user: "dev-7", pass: "pw1"}, false},
		{"another thing's client ID", closed, clientOpts{id: "dev-2", user: "dev-1", pass: "pw1"}, false},
		{"client ID prefix without @", closed, clientOpts{id: "dev-1x", user: "dev-1", pass: "pw1"}, false},
		{"admin any client ID", closed, clientOpts{id: "whatever", user: "ops", pass: "pw-ops"}, true},
		{"anonymous refused by config", closed, clientOpts{id: "dev-1"}, false},
		{"anonymous on loopback", open, clientOpts{id: "dev-1"}, true},
		{"anonymous, invalid thing as client ID", open, clientOpts{id: "a/b"}, false},
		{"anonymous, reserved inline ID", open, clientOpts{id: "inline"}, false},
		{"wrong password on an open broker", open, clientOpts{id: "dev-1", user: "dev-1", pass: "nope"}, false},
		{"will on own topic", open, clientOpts{id: "dev-1", will: "$aws/things/dev-1/status"}, true},
		{"will on notify topic", open, clientOpts{id: "dev-1", will: "$aws/things/dev-1/tunnels/notify"}, false},
		{"will on another thing", open, clientOpts{id: "dev-1", will: "$aws/things/dev-2/status"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.o.url = tcpURL(tt.b)
			c, err := dial(t, tt.o)
			if tt.wantOK != (err == nil) {
				t.Fatalf("connect: err = %v, want ok=%v", err, tt.wantOK)
			}
			if c != nil {
				c.Disconnect(100)
			}
		})
	}
}

func TestAnonymousPolicy(t *testing.T) {
	tests := []struct {
		addr        string
		noAnonymous bool
		want        bool
	}{
		{"127.0.0.1:1883", false, true},
		{"127.0.0.1:1883", true, false},
		{"127.9.8.7:1", false, true},
		{"[::1]:1883", false, true},
		{"localhost:1883", false, true},
		{"0.0.0.0:1883", false, false},
		{"[::]:1883", false, false},
		{":1883", false, false},
		{"192.168.1.10:1883", false, false},
		{"10.0.0.1:8883", false, false},
		{"[2001:db8::1]:1883", false, false},
		{"example.com:1883", false, false},
		{"handed-over", false, false},
	}
	for _, tt := range tests {
		if got := anonymousAllowed(tt.addr, tt.noAnonymous); got != tt.want {
			t.Errorf("anonymousAllowed(%q, %v) = %v, want %v", tt.addr, tt.noAnonymous, got, tt.want)
		}
	}
}

func TestAllowed(t *testing.T) {
	dev := identity{name: "dev-a"}
	admin := identity{name: "ops", admin: true}
	tests := []struct {
		id    identity
		topic string
		write bool
		want  bool
	}{
		{dev, "$aws/things/dev-a/tunnels/notify", false, true},
		{dev, "$aws/things/dev-a/tunnels/#", false, true},
		{dev, "$aws/things/dev-a/#", false, true},
		{dev, "$aws/things/dev-a/+/notify", false, true},
		{dev, "$aws/things/dev-a", false, false},
		{dev, "$aws/things/dev-ab/tunnels/notify", false, false},
		{dev, "$aws/things/dev-b/tunnels/notify", false, false},
		{dev, "$aws/things/+/tunnels/notify", false, false},
		{dev, "$aws/#", false, false},
		{dev, "#", false, false},
		{dev, "+/things/dev-a/tunnels/notify", false, false},
		{dev, "$aws/things/dev-a/tunnels/notify", true, false},
		{dev, "$aws/things/dev-a/tunnels/other", true, false},
		{dev, "$aws/things/dev-a/status", true, true},
		{dev, "$aws/things/dev-b/status", true, false},
		{admin, "#", false, true},
		{admin, "$aws/things/dev-a/tunnels/notify", true, true},
		{identity{name: "a/b"}, "$aws/things/a/b/x", false, false},
	}
	for _, tt := range tests {
		if got := allowed(tt.id, "$aws", tt.topic, tt.write); got != tt.want {
			t.Errorf("allowed(%+v, %q, write=%v) = %v, want %v", tt.id, tt.topic, tt.write, got, tt.want)
		}
	}
}

func TestMutualTLS(t *testing.T) {
	ca := testpki.New(t, "devices")
	srv := ca.Server("broker")
	b, _ := startBroker(t, Config{
		DisableTCP:        true,
		TLSAddr:           "127.0.0.1:0",
		CertFile:          srv.CertFile,
		KeyFile:           srv.KeyFile,
		ClientCAFile:      ca.CertFile,
		RequireClientCert: true,
		AdminCertNames:    []string{"ops-cert"},
	})
	if b.Addr() != nil {
		t.Fatal("plain listener open despite DisableTCP")
	}
	url := sslURL(b.TLSAddr())
	clientTLS := func(c testpki.Cert) *tls.Config {
		return &tls.Config{RootCAs: ca.Pool, Certificates: []tls.Certificate{c.TLS}}
	}

	dev := mustDial(t, clientOpts{url: url, id: "dev-tls", user: "?SDK=Go&Version=1", tls: clientTLS(ca.Client("dev-tls", nil))})
	if code := dev.subscribe(t, "$aws/things/other/tunnels/notify"); code != 0x80 {
		t.Fatalf("certificate dev-tls subscribed to another thing: SUBACK %#x", code)
	}
	if code := dev.subscribe(t, "$aws/things/dev-tls/tunnels/notify"); code != 1 {
		t.Fatalf("SUBACK %#x", code)
	}
	mustNotify(t, b, note("dev-tls"))
	dev.expectOnly(t, "$aws/things/dev-tls/tunnels/notify")

	// Identity from a SAN when the CommonName is empty.
	san := mustDial(t, clientOpts{url: url, id: "dev-san", tls: clientTLS(ca.Client("", []string{"dev-san"}))})
	if code := san.subscribe(t, "$aws/things/dev-san/tunnels/notify"); code != 1 {
		t.Fatalf("SAN identity: SUBACK %#x", code)
	}
	// An admin certificate.
	ops := mustDial(t, clientOpts{url: url, id: "x", tls: clientTLS(ca.Client("ops-cert", nil))})
	if code := ops.subscribe(t, "$aws/things/+/tunnels/notify"); code != 1 {
		t.Fatalf("admin certificate: SUBACK %#x", code)
	}

	refused := []struct {
		name string
		o    clientOpts
	}{
		{"client ID of another thing", clientOpts{id: "dev-other", tls: clientTLS(ca.Client("dev-tls", nil))}},
		{"certificate name not a thing name", clientOpts{id: "x", tls: clientTLS(ca.Client("not a thing", nil))}},
		{"no client certificate", clientOpts{id: "dev-tls", tls: &tls.Config{RootCAs: ca.Pool}}},
		{"certificate from another CA", clientOpts{id: "dev-tls", tls: clientTLS(testpki.New(t, "evil").Client("dev-tls", nil))}},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			tt.o.url = url
			if c, err := dial(t, tt.o); err == nil {
				c.Disconnect(100)
				t.Fatal("connection accepted")
			}
		})
	}
}

func TestTLSPasswordWithoutCert(t *testing.T) {
	ca := testpki.New(t, "devices")
	srv := ca.Server("broker")
	b, _ := startBroker(t, Config{
		TLSAddr: "127.0.0.1:0", CertFile: srv.CertFile, KeyFile: srv.KeyFile, ClientCAFile: ca.CertFile,
		Users: []User{{Name: "dev-pw", Password: "pw"}}, NoAnonymous: true,
	})
	tc := &tls.Config{RootCAs: ca.Pool}
	mustDial(t, clientOpts{url: sslURL(b.TLSAddr()), id: "dev-pw", user: "dev-pw", pass: "pw", tls: tc})
	if _, err := dial(t, clientOpts{url: sslURL(b.TLSAddr()), id: "dev-pw", tls: tc}); err == nil {
		t.Fatal("anonymous TLS client accepted with NoAnonymous")
	}
}

// TestServeConn is the single-port shape: the test owns the TLS listener,
// picks MQTT by ALPN and hands the connection to the broker.
func TestServeConn(t *testing.T) {
	ca := testpki.New(t, "devices")
	srv := ca.Server("tunneld")
	b, _ := startBroker(t, Config{DisableTCP: true})
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{srv.TLS},
		ClientCAs:    ca.Pool,
		ClientAuth:   tls.VerifyClientCertIfGiven,
		NextProtos:   []string{"x-amzn-mqtt-ca", "http/1.1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	acceptDone := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-acceptDone })
	go func() {
		defer close(acceptDone)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			if err := tc.HandshakeContext(ctx); err != nil || tc.ConnectionState().NegotiatedProtocol != "x-amzn-mqtt-ca" {
				cancel()
				c.Close()
				continue
			}
			if err := b.ServeConn(ctx, tc); err != nil {
				t.Errorf("ServeConn: %v", err)
			}
			cancel()
		}
	}()

	url := sslURL(ln.Addr())
	alpn := []string{"x-amzn-mqtt-ca"}
	dev := mustDial(t, clientOpts{url: url, id: "dev-1", tls: &tls.Config{
		RootCAs: ca.Pool, Certificates: []tls.Certificate{ca.Client("dev-1", nil).TLS}, NextProtos: alpn}})
	if code := dev.subscribe(t, "$aws/things/dev-2/tunnels/notify"); code != 0x80 {
		t.Fatalf("SUBACK %#x for another thing", code)
	}
	dev.subscribe(t, "$aws/things/dev-1/tunnels/notify")
	mustNotify(t, b, note("dev-1"))
	dev.expectOnly(t, "$aws/things/dev-1/tunnels/notify")

	// Handed-over connections are never anonymous, even from loopback.
	if c, err := dial(t, clientOpts{url: url, id: "dev-1", tls: &tls.Config{RootCAs: ca.Pool, NextProtos: alpn}}); err == nil {
		c.Disconnect(100)
		t.Fatal("anonymous client accepted through ServeConn")
	}
}

func TestServeConnStates(t *testing.T) {
	b, err := New(Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	c1, c2 := net.Pipe()
	defer c2.Close()
	if err := b.ServeConn(t.Context(), c1); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("before Start: %v", err)
	}
	if err := b.NotifyTunnel(t.Context(), note("d")); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("NotifyTunnel before Start: %v", err)
	}
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(t.Context()); !errors.Is(err, ErrStarted) {
		t.Fatalf("second Start: %v", err)
	}
	if err := b.NotifyTunnel(t.Context(), notify.Notification{ThingName: "a/b", Token: "t", Region: "r"}); !errors.Is(err, notify.ErrInvalidNotification) {
		t.Fatalf("invalid notification: %v", err)
	}
	b.Close()
	b.Close()
	c3, c4 := net.Pipe()
	defer c4.Close()
	if err := b.ServeConn(t.Context(), c3); !errors.Is(err, notify.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	if _, err := c4.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("conn not closed after a failed ServeConn: %v", err)
	}
	if err := b.NotifyTunnel(t.Context(), note("d")); !errors.Is(err, notify.ErrClosed) {
		t.Fatalf("NotifyTunnel after Close: %v", err)
	}
}

func TestStartContextCloses(t *testing.T) {
	b, err := New(Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	addr := b.Addr().String()
	cancel()
	select {
	case <-b.Done():
	case <-time.After(wait):
		t.Fatal("broker still open after its Start context ended")
	}
	if err := b.NotifyTunnel(context.Background(), note("d")); !errors.Is(err, notify.ErrClosed) {
		t.Fatalf("NotifyTunnel after the context ended: %v", err)
	}
	b.Close()
	if c, err := net.DialTimeout("tcp", addr, wait); err == nil {
		c.Close()
		t.Fatal("listener still accepting")
	}
}

func TestStartAddrInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	b, err := New(Config{Addr: ln.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(t.Context()); err == nil || !strings.Contains(err.Error(), "MQTT listener") {
		t.Fatalf("Start on a used address: %v", err)
	}
	b.Close()
}

// A connection that never sends CONNECT is closed after ConnectTimeout,
// and does not hold up Close.
func TestConnectTimeoutAndPromptClose(t *testing.T) {
	b, _ := startBroker(t, Config{ConnectTimeout: 200 * time.Millisecond})
	idle, err := net.DialTimeout("tcp", b.Addr().String(), wait)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	idle.SetReadDeadline(time.Now().Add(wait))
	if _, err := idle.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("idle connection: read %v, want EOF from the broker", err)
	}

	b2, err := New(Config{Addr: "127.0.0.1:0", ConnectTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := b2.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	idle2, err := net.DialTimeout("tcp", b2.Addr().String(), wait)
	if err != nil {
		t.Fatal(err)
	}
	defer idle2.Close()
	mustDial(t, clientOpts{url: tcpURL(b2), id: "dev-1"}) // one real client too
	start := time.Now()
	b2.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Close took %v with an idle pre-CONNECT connection", d)
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"bad prefix", Config{TopicPrefix: "a/#"}, "topic prefix"},
		{"device user not a thing", Config{Users: []User{{Name: "a b", Password: "x"}}}, "not a valid thing name"},
		{"empty password", Config{Users: []User{{Name: "dev", Password: ""}}}, "empty password"},
		{"duplicate user", Config{Users: []User{{Name: "dev", Password: "x"}, {Name: "dev", Password: "y"}}}, "twice"},
		{"tls files without addr", Config{CertFile: "c.pem"}, "without a TLS listener"},
		{"tls addr without cert", Config{TLSAddr: "127.0.0.1:0"}, "certificate file"},
		{"require without CA", Config{TLSAddr: "127.0.0.1:0", CertFile: "x", KeyFile: "y", RequireClientCert: true}, "TLS certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New() = %v, want error containing %q", err, tt.want)
			}
		})
	}
}

// A device with a persistent session gets, on reconnecting, the
// notification published while it was away.
func TestPersistentSessionQueues(t *testing.T) {
	b, _ := startBroker(t, Config{})
	topic := "$aws/things/dev-p/tunnels/notify"
	c1 := mustDial(t, clientOpts{url: tcpURL(b), id: "dev-p", persistent: true})
	c1.subscribe(t, topic)
	c1.Disconnect(100)
	mustNotify(t, b, note("dev-p"))
	c2 := mustDial(t, clientOpts{url: tcpURL(b), id: "dev-p", persistent: true})
	m := c2.expectOnly(t, topic)
	if m.Qos() != 1 {
		t.Fatalf("qos %d", m.Qos())
	}
}
