package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"

	"github.com/sectun/sectun/internal/notify"
	"github.com/sectun/sectun/internal/notify/broker"
	"github.com/sectun/sectun/internal/relaytest"
	"github.com/sectun/sectun/internal/server/relay"
	"github.com/sectun/sectun/internal/tcptest"
	"github.com/sectun/sectun/tunnel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testTimeout bounds every wait: generous for a loaded machine, yet a hang
// fails rather than stalls.
const testTimeout = 15 * time.Second

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// testLogger logs to the test's output; SECTUN_TEST_DEBUG=1 adds debug.
func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelInfo
	if os.Getenv("SECTUN_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: level}))
}

// ---- tunneling service: the real relay with an in-memory authorizer ----

// service is the real /tunnel relay with tunneld's token rules, which
// supports close and rotation like tunneld.
type service struct {
	*relaytest.Service
	t     *testing.T
	relay *relay.Relay
	url   string // ws://127.0.0.1:port
}

func newService(t *testing.T) *service {
	t.Helper()
	s := relaytest.NewService(t, relay.Config{Logger: testLogger(t).With("component", "relay")})
	return &service{Service: s, t: t, relay: s.Relay, url: s.URL}
}

// open adds a tunnel; it returns its id and both tokens.
func (s *service) open(services ...string) (id, src, dst string) { return s.Open(services...) }

// rotate revokes the tunnel's destination token, disconnects its
// destination, and returns a new destination token.
func (s *service) rotate(id string) string { return s.Rotate(id) }

func (s *service) close(id string) { s.CloseTunnel(id) }

// source connects a source session with src.
func (s *service) source(t *testing.T, src string) *tunnel.Session {
	t.Helper()
	sess, err := tunnel.Connect(testCtx(t), tunnel.Config{
		Mode: tunnel.ModeSource, AccessToken: src, Endpoint: s.url,
		Logger: testLogger(t).With("side", "source"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess
}

// ---- local services ----

// greeter is a local TCP service that writes "<name>\n" and then echoes
// lines, so a test can tell which service a connection reached.
func greeter(t *testing.T, name string) string {
	t.Helper()
	return tcptest.NewServer(t, func(c net.Conn) {
		fmt.Fprintf(c, "%s\n", name)
		io.Copy(c, c)
	}).Addr()
}

// checkService dials service through the source session and checks that
// it reaches the greeter called want, and that data echoes.
func checkService(t *testing.T, src *tunnel.Session, service, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	c, err := src.Dial(ctx, service)
	if err != nil {
		t.Fatalf("dial %s: %v", service, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testTimeout))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("%s: reading the greeting: %v", service, err)
	}
	if got := strings.TrimSpace(line); got != want {
		t.Fatalf("%s reached %q, want %q", service, got, want)
	}
	msg := fmt.Sprintf("hello %s %d\n", service, time.Now().UnixNano())
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got, err := br.ReadString('\n')
	if err != nil || got != msg {
		t.Fatalf("%s: echo %q, %v; want %q", service, got, err, msg)
	}
}

// ---- MQTT ----

const (
	adminUser = "admin"
	adminPass = "admin-password"
)

// embeddedBroker starts tunneld's embedded broker on addr ("127.0.0.1:0"
// for a fresh port) with an admin account for raw publishes.
func embeddedBroker(t *testing.T, addr string) *broker.Broker {
	t.Helper()
	var b *broker.Broker
	var err error
	// A restarted broker reuses its predecessor's port; the old socket may
	// linger for a moment.
	for try := 0; try < 50; try++ {
		b, err = broker.New(broker.Config{
			Addr:   addr,
			Users:  []broker.User{{Name: adminUser, Password: adminPass, Admin: true}},
			Logger: testLogger(t).With("component", "broker"),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err = b.Start(context.Background()); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// publisher is an admin MQTT client publishing raw payloads.
type publisher struct{ c mqtt.Client }

func newPublisher(t *testing.T, brokerURL string) *publisher {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(brokerURL).
		SetClientID("test-publisher").SetUsername(adminUser).SetPassword(adminPass).
		SetProtocolVersion(4).SetAutoReconnect(false))
	tok := c.Connect()
	if !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
		t.Fatalf("publisher connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return &publisher{c: c}
}

func (p *publisher) publish(t *testing.T, topic string, payload []byte) {
	t.Helper()
	tok := p.c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
}

func notification(thing, dst string, services ...string) []byte {
	b, err := notify.Notification{ThingName: thing, Token: dst, Region: "us-east-1", Services: services}.Marshal()
	if err != nil {
		panic(err)
	}
	return b
}

// ---- the agent under test ----

// events records an agent's events for tests to wait on.
type events struct {
	mu   sync.Mutex
	all  []Event
	wake chan struct{}
}

func (e *events) add(ev Event) {
	e.mu.Lock()
	e.all = append(e.all, ev)
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// wait returns the first event from index *from on matching pred, and
// advances *from past it. It fails the test after testTimeout.
func (e *events) wait(t *testing.T, from *int, what string, pred func(Event) bool) Event {
	t.Helper()
	deadline := time.NewTimer(testTimeout)
	defer deadline.Stop()
	for {
		e.mu.Lock()
		for i := *from; i < len(e.all); i++ {
			if pred(e.all[i]) {
				*from = i + 1
				ev := e.all[i]
				e.mu.Unlock()
				return ev
			}
		}
		e.mu.Unlock()
		select {
		case <-e.wake:
		case <-deadline.C:
			t.Fatalf("no %s event within %v; events: %v", what, testTimeout, e.snapshot())
		}
	}
}

func (e *events) snapshot() []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Event(nil), e.all...)
}

func isSubscribed(ev Event) bool { _, ok := ev.(Subscribed); return ok }
func isStarted(ev Event) bool    { _, ok := ev.(SessionStarted); return ok }
func isEnded(ev Event) bool      { _, ok := ev.(SessionEnded); return ok }
func isIgnored(target error) func(Event) bool {
	return func(ev Event) bool {
		ig, ok := ev.(Ignored)
		return ok && errors.Is(ig.Err, target)
	}
}

// runningAgent is an Agent started by a test.
type runningAgent struct {
	*Agent
	ev     *events
	cancel context.CancelFunc
	done   chan error
}

// startAgent runs an agent; cfg.OnEvent is set by the helper. The agent is
// stopped at cleanup.
func startAgent(t *testing.T, cfg Config) *runningAgent {
	t.Helper()
	ev := &events{wake: make(chan struct{}, 1)}
	cfg.OnEvent = ev.add
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t).With("component", "agent")
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ra := &runningAgent{Agent: a, ev: ev, cancel: cancel, done: make(chan error, 1)}
	go func() { ra.done <- a.Run(ctx) }()
	t.Cleanup(func() { ra.stop(t) })
	return ra
}

// stop cancels Run and waits for it (idempotent).
func (ra *runningAgent) stop(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	ra.cancel()
	select {
	case err, ok := <-ra.done:
		if ok {
			close(ra.done)
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	case <-time.After(testTimeout):
		t.Fatalf("Run did not return within %v of cancel", testTimeout)
	}
	return time.Since(start)
}
