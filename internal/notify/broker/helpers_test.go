package broker

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/sectun/sectun/internal/notify"
)

const wait = 10 * time.Second // bound of every wait in these tests

// logBuffer collects log output, to check what is (not) logged.
type logBuffer struct {
	mu sync.Mutex
	sb strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sb.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sb.String()
}

// startBroker starts a broker on 127.0.0.1:0 (unless cfg says otherwise)
// and closes it at the end of the test.
func startBroker(t *testing.T, cfg Config) (*Broker, *logBuffer) {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	logs := &logBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, logs
}

// client is a paho MQTT 3.1.1 test client that records what it receives.
type client struct {
	paho.Client
	msgs chan paho.Message
	lost chan error
}

type clientOpts struct {
	url, id, user, pass string
	tls                 *tls.Config
	will                string // will topic, if any
	persistent          bool   // clean session false
	manualAck           bool   // the test acknowledges messages (paho.Message.Ack)
}

// dial connects a client; it returns the CONNECT error instead of failing.
func dial(t *testing.T, o clientOpts) (*client, error) {
	t.Helper()
	c := &client{msgs: make(chan paho.Message, 16), lost: make(chan error, 1)}
	opts := paho.NewClientOptions().
		AddBroker(o.url).
		SetClientID(o.id).
		SetUsername(o.user).
		SetPassword(o.pass).
		SetProtocolVersion(4).
		SetCleanSession(!o.persistent).
		SetAutoReconnect(false).
		SetAutoAckDisabled(o.manualAck).
		SetConnectTimeout(wait).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { c.msgs <- m }).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			select {
			case c.lost <- err:
			default:
			}
		})
	if o.tls != nil {
		opts.SetTLSConfig(o.tls)
	}
	if o.will != "" {
		opts.SetWill(o.will, "bye", 1, false)
	}
	c.Client = paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(wait) {
		t.Fatal("CONNECT timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

func mustDial(t *testing.T, o clientOpts) *client {
	t.Helper()
	c, err := dial(t, o)
	if err != nil {
		t.Fatalf("connect %+v: %v", o.id, err)
	}
	return c
}

// subscribe returns the granted code for filter (0x80 = refused).
func (c *client) subscribe(t *testing.T, filter string) byte {
	t.Helper()
	tok := c.Subscribe(filter, 1, nil)
	if !tok.WaitTimeout(wait) {
		t.Fatal("SUBSCRIBE timed out")
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	return tok.(*paho.SubscribeToken).Result()[filter]
}

func (c *client) next(t *testing.T) paho.Message {
	t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-time.After(wait):
		t.Fatal("no message within", wait)
		return nil
	}
}

// expectOnly checks that the next message c receives is on topic: anything
// delivered before it (e.g. something c must not see) fails the test.
func (c *client) expectOnly(t *testing.T, topic string) paho.Message {
	t.Helper()
	m := c.next(t)
	if m.Topic() != topic {
		t.Fatalf("received a message on %s (%s) before the one on %s", m.Topic(), m.Payload(), topic)
	}
	return m
}

func note(thing string) notify.Notification {
	return notify.Notification{ThingName: thing, Token: "tok-" + thing, Region: "us-east-1", Services: []string{"SSH1"}, TunnelID: "tid-" + thing}
}

func mustNotify(t *testing.T, b *Broker, n notify.Notification) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := b.NotifyTunnel(ctx, n); err != nil {
		t.Fatal(err)
	}
}

func tcpURL(b *Broker) string { return "tcp://" + b.Addr().String() }

func sslURL(addr fmt.Stringer) string { return "ssl://" + addr.String() }
