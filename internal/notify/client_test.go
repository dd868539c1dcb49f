package notify_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/sectun/sectun/internal/notify"
	"github.com/sectun/sectun/internal/notify/broker"
	"github.com/sectun/sectun/internal/notify/internal/testpki"
	"github.com/sectun/sectun/internal/wsconn"
)

const wait = 10 * time.Second // bound of every wait in these tests

type subscriber struct {
	paho.Client
	msgs chan paho.Message
}

type subOpts struct {
	url, id, user, pass string
	tls                 *tls.Config
	persistent          bool // clean session false, auto-reconnect
}

// subscribe connects a paho client and subscribes it at QoS 1 to topic.
func subscribe(t *testing.T, o subOpts, topic string) *subscriber {
	t.Helper()
	s := &subscriber{msgs: make(chan paho.Message, 16)}
	opts := paho.NewClientOptions().AddBroker(o.url).SetClientID(o.id).
		SetUsername(o.user).SetPassword(o.pass).SetProtocolVersion(4).
		SetCleanSession(!o.persistent).SetAutoReconnect(o.persistent).
		SetMaxReconnectInterval(500 * time.Millisecond).
		SetConnectTimeout(wait).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { s.msgs <- m })
	if o.tls != nil {
		opts.SetTLSConfig(o.tls)
	}
	s.Client = paho.NewClient(opts)
	if tok := s.Connect(); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	t.Cleanup(func() { s.Disconnect(100) })
	tok := s.Subscribe(topic, 1, nil)
	if !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	if code := tok.(*paho.SubscribeToken).Result()[topic]; code != 1 {
		t.Fatalf("SUBACK %#x for %s", code, topic)
	}
	return s
}

func (s *subscriber) next(t *testing.T) paho.Message {
	t.Helper()
	select {
	case m := <-s.msgs:
		return m
	case <-time.After(wait):
		t.Fatal("no message within", wait)
		return nil
	}
}

func newClientPublisher(t *testing.T, cfg notify.ClientConfig) (*notify.ClientPublisher, *syncLog) {
	t.Helper()
	logs := &syncLog{}
	cfg.Logger = logs.logger()
	p, err := notify.NewClientPublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, logs
}

func waitConnected(t *testing.T, p *notify.ClientPublisher) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := p.WaitConnected(ctx); err != nil {
		t.Fatalf("publisher not connected: %v", err)
	}
}

func checkDelivered(t *testing.T, p notify.Publisher, s *subscriber, n notify.Notification) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := p.NotifyTunnel(ctx, n); err != nil {
		t.Fatal(err)
	}
	m := s.next(t)
	want, _ := n.Marshal()
	if m.Topic() != notify.NotifyTopic("", n.ThingName) || string(m.Payload()) != string(want) || m.Qos() != 1 {
		t.Fatalf("got %s qos %d %s, want %s qos 1 %s", m.Topic(), m.Qos(), m.Payload(), notify.NotifyTopic("", n.ThingName), want)
	}
}

func TestClientPublisherMosquitto(t *testing.T) {
	mq := startMosquitto(t, func(port int) string {
		return fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\n", port)
	})
	url := fmt.Sprintf("tcp://127.0.0.1:%d", mq.Port)
	sub := subscribe(t, subOpts{url: url, id: "dev-1"}, "$aws/things/dev-1/tunnels/notify")
	p, logs := newClientPublisher(t, notify.ClientConfig{URL: url, ClientID: "tunneld-test"})
	waitConnected(t, p)
	n := notify.Notification{ThingName: "dev-1", Token: "the-destination-token", Region: "eu-west-1", Services: []string{"SSH1"}}
	checkDelivered(t, p, sub, n)
	checkDelivered(t, p, sub, notify.Notification{ThingName: "dev-1", Token: "t2", Region: "eu-west-1"})
	if strings.Contains(logs.String(), "the-destination-token") {
		t.Fatal("token in logs")
	}
}

func TestClientPublisherMosquittoTLS(t *testing.T) {
	ca := testpki.New(t, "mqtt")
	srv := ca.Server("mosquitto")
	mq := startMosquitto(t, func(port int) string {
		return fmt.Sprintf("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\nuse_identity_as_username true\nallow_anonymous false\n",
			port, ca.CertFile, srv.CertFile, srv.KeyFile)
	})
	devCert := ca.Client("dev-1", nil)
	sub := subscribe(t, subOpts{url: fmt.Sprintf("ssl://127.0.0.1:%d", mq.Port), id: "dev-1",
		tls: &tls.Config{RootCAs: ca.Pool, Certificates: []tls.Certificate{devCert.TLS}}}, "$aws/things/dev-1/tunnels/notify")
	pubCert := ca.Client("tunneld", nil)
	for _, scheme := range []string{"ssl", "tls", "mqtts"} {
		t.Run(scheme, func(t *testing.T) {
			p, _ := newClientPublisher(t, notify.ClientConfig{
				URL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, mq.Port), CAFile: ca.CertFile, CertFile: pubCert.CertFile, KeyFile: pubCert.KeyFile,
			})
			waitConnected(t, p)
			checkDelivered(t, p, sub, notify.Notification{ThingName: "dev-1", Token: "tok-" + scheme, Region: "r", Services: []string{"SSH1"}})
		})
	}
	t.Run("no client certificate", func(t *testing.T) {
		p, logs := newClientPublisher(t, notify.ClientConfig{URL: fmt.Sprintf("ssl://127.0.0.1:%d", mq.Port), CAFile: ca.CertFile})
		logs.waitFor(t, "cannot connect")
		if p.Connected() {
			t.Fatal("connected without a client certificate")
		}
		if err := p.NotifyTunnel(context.Background(), notify.Notification{ThingName: "dev-1", Token: "t", Region: "r"}); !errors.Is(err, notify.ErrNotConnected) {
			t.Fatalf("NotifyTunnel while not connected: %v", err)
		}
	})
}

func TestClientPublisherMosquittoPassword(t *testing.T) {
	pw, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		t.Skip("mosquitto_passwd not installed")
	}
	file := filepath.Join(t.TempDir(), "passwd")
	if out, err := exec.Command(pw, "-b", "-c", file, "tunneld", "s3cret").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd: %v\n%s", err, out)
	}
	if out, err := exec.Command(pw, "-b", file, "dev-1", "devpw").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd: %v\n%s", err, out)
	}
	mq := startMosquitto(t, func(port int) string {
		return fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous false\npassword_file %s\n", port, file)
	})
	url := fmt.Sprintf("mqtt://127.0.0.1:%d", mq.Port)
	sub := subscribe(t, subOpts{url: url, id: "dev-1", user: "dev-1", pass: "devpw"}, "$aws/things/dev-1/tunnels/notify")

	bad, logs := newClientPublisher(t, notify.ClientConfig{URL: url, Username: "tunneld", Password: "wrong"})
	logs.waitFor(t, "cannot connect")
	if bad.Connected() {
		t.Fatal("connected with a wrong password")
	}
	if strings.Contains(logs.String(), "wrong") {
		t.Fatal("password in logs")
	}
	bad.Close()

	p, _ := newClientPublisher(t, notify.ClientConfig{URL: url, Username: "tunneld", Password: "s3cret"})
	waitConnected(t, p)
	checkDelivered(t, p, sub, notify.Notification{ThingName: "dev-1", Token: "t", Region: "r"})
}

// The broker goes away; a notification published meanwhile through
// Retrying is delivered once the broker is back.
func TestRetryingBrokerRestart(t *testing.T) {
	dir := t.TempDir()
	mq := startMosquitto(t, func(port int) string {
		// Persistence keeps the device's session (and its subscription)
		// across the restart, as a real broker would.
		return fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\n", port, dir)
	})
	url := fmt.Sprintf("tcp://127.0.0.1:%d", mq.Port)
	sub := subscribe(t, subOpts{url: url, id: "dev-1", persistent: true}, "$aws/things/dev-1/tunnels/notify")

	failed, delivered := make(chan struct{}), make(chan struct{})
	var failOnce, deliverOnce sync.Once
	logs := &syncLog{}
	h := &signalHandler{Handler: slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}), fn: func(msg string) {
		switch msg {
		case "notify: publish failed, will retry":
			failOnce.Do(func() { close(failed) })
		case "notify: notification delivered after retries":
			deliverOnce.Do(func() { close(delivered) })
		}
	}}
	p, err := notify.NewClientPublisher(notify.ClientConfig{URL: url, MaxReconnectInterval: time.Second, Logger: slog.New(h)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	r := notify.NewRetrying(p, notify.RetryConfig{MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond, AttemptTimeout: 2 * time.Second, Logger: slog.New(h)})
	defer r.Close()
	waitConnected(t, p)
	checkDelivered(t, r, sub, notify.Notification{ThingName: "dev-1", Token: "before", Region: "r"})

	mq.Stop()
	n := notify.Notification{ThingName: "dev-1", Token: "during-outage", Region: "r", Services: []string{"SSH1"}}
	if err := r.NotifyTunnel(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	select {
	case <-failed:
	case <-time.After(wait):
		t.Fatalf("no failed attempt while the broker was down:\n%s", logs.String())
	}
	if r.Pending() != 1 {
		t.Fatalf("Pending() = %d while the broker is down", r.Pending())
	}
	mq.Restart()
	m := sub.next(t)
	want, _ := n.Marshal()
	if string(m.Payload()) != string(want) || m.Qos() != 1 {
		t.Fatalf("after restart got qos %d %s, want %s", m.Qos(), m.Payload(), want)
	}
	select {
	case <-delivered: // the PUBACK may come after the subscriber's copy
	case <-time.After(wait):
		t.Fatalf("no delivery logged:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "during-outage") {
		t.Fatalf("logs:\n%s", logs.String())
	}
}

// signalHandler calls fn with the message of every record it handles.
type signalHandler struct {
	slog.Handler
	fn func(msg string)
}

func (h *signalHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	h.fn(r.Message)
	return err
}

func (h *signalHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return &signalHandler{Handler: h.Handler.WithAttrs(a), fn: h.fn}
}

func (h *signalHandler) WithGroup(g string) slog.Handler {
	return &signalHandler{Handler: h.Handler.WithGroup(g), fn: h.fn}
}

// TestClientPublisherWebSocket publishes over ws:// into the embedded
// broker: an HTTP server upgrades the request and hands the WebSocket, as
// a net.Conn, to Broker.ServeConn. (Debian's Mosquitto here cannot open a
// WebSocket listener on a loopback address.)
func TestClientPublisherWebSocket(t *testing.T) {
	b, err := broker.New(broker.Config{Addr: "127.0.0.1:0", Users: []broker.User{{Name: "tunneld", Password: "pw", Admin: true}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{ReadHeaderTimeout: wait, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/mqtt" {
			http.NotFound(w, r)
			return
		}
		ws, err := wsconn.Accept(w, r, wsconn.AcceptOptions{Subprotocol: "mqtt"})
		if err != nil {
			return
		}
		b.ServeConn(r.Context(), &wsNetConn{Conn: ws})
	})}
	served := make(chan struct{})
	go func() { defer close(served); hs.Serve(ln) }()
	defer func() { hs.Close(); <-served }()

	sub := subscribe(t, subOpts{url: "tcp://" + b.Addr().String(), id: "dev-ws"}, "$aws/things/dev-ws/tunnels/notify")
	p, _ := newClientPublisher(t, notify.ClientConfig{URL: "ws://" + ln.Addr().String() + "/mqtt", Username: "tunneld", Password: "pw"})
	waitConnected(t, p)
	checkDelivered(t, p, sub, notify.Notification{ThingName: "dev-ws", Token: "ws-token", Region: "r", Services: []string{"SSH1"}})
	p.Close() // before the broker, so that its disconnect is clean
}

// wsNetConn adapts a wsconn.Conn (binary messages as a byte stream) to
// net.Conn: each Write is one binary message.
type wsNetConn struct {
	*wsconn.Conn
}

func (c *wsNetConn) Write(p []byte) (int, error) {
	if err := c.WriteMessage(context.Background(), p); err != nil {
		return 0, err
	}
	return len(p), nil
}
func (c *wsNetConn) Close() error                       { return c.Conn.Close(wsconn.CloseNormal, "") }
func (c *wsNetConn) LocalAddr() net.Addr                { return c.NetConn().LocalAddr() }
func (c *wsNetConn) RemoteAddr() net.Addr               { return c.NetConn().RemoteAddr() }
func (c *wsNetConn) SetDeadline(t time.Time) error      { return c.NetConn().SetDeadline(t) }
func (c *wsNetConn) SetReadDeadline(t time.Time) error  { return c.NetConn().SetReadDeadline(t) }
func (c *wsNetConn) SetWriteDeadline(t time.Time) error { return c.NetConn().SetWriteDeadline(t) }

func TestClientPublisherNotConnected(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	p, _ := newClientPublisher(t, notify.ClientConfig{URL: "tcp://" + addr})
	start := time.Now()
	err = p.NotifyTunnel(context.Background(), notify.Notification{ThingName: "d", Token: "t", Region: "r"})
	if !errors.Is(err, notify.ErrNotConnected) || time.Since(start) > time.Second {
		t.Fatalf("NotifyTunnel without a broker: %v after %v", err, time.Since(start))
	}
	if err := p.NotifyTunnel(context.Background(), notify.Notification{ThingName: "d/x", Token: "t", Region: "r"}); !errors.Is(err, notify.ErrInvalidNotification) {
		t.Fatalf("invalid notification: %v", err)
	}
	start = time.Now()
	p.Close()
	p.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Close took %v", d)
	}
	if err := p.NotifyTunnel(context.Background(), notify.Notification{ThingName: "d", Token: "t", Region: "r"}); !errors.Is(err, notify.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	if err := p.WaitConnected(context.Background()); !errors.Is(err, notify.ErrClosed) {
		t.Fatalf("WaitConnected after Close: %v", err)
	}
}

func TestClientConfigErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "x.pem")
	os.WriteFile(notPEM, []byte("not pem"), 0o600)
	tests := []struct {
		name string
		cfg  notify.ClientConfig
		want string
	}{
		{"empty URL", notify.ClientConfig{}, "scheme"},
		{"bad scheme", notify.ClientConfig{URL: "http://h:1"}, "scheme"},
		{"no host", notify.ClientConfig{URL: "tcp://"}, "no host"},
		{"credentials in URL", notify.ClientConfig{URL: "tcp://u:p@h:1"}, "not in the URL"},
		{"TLS files on plain URL", notify.ClientConfig{URL: "tcp://h", CAFile: "ca.pem"}, "not TLS"},
		{"missing CA file", notify.ClientConfig{URL: "ssl://h", CAFile: filepath.Join(dir, "none.pem")}, "CA file"},
		{"CA file not PEM", notify.ClientConfig{URL: "ssl://h", CAFile: notPEM}, "no PEM"},
		{"cert without key", notify.ClientConfig{URL: "ssl://h", CertFile: notPEM}, "both"},
		{"bad prefix", notify.ClientConfig{URL: "tcp://h", TopicPrefix: "a/+"}, "topic prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := notify.NewClientPublisher(tt.cfg)
			if err == nil {
				p.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewClientPublisher() = %v, want error containing %q", err, tt.want)
			}
			if strings.Contains(err.Error(), ":p@") {
				t.Fatalf("error shows the URL password: %v", err)
			}
		})
	}
}
