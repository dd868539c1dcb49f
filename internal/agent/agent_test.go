package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/notify"
	"github.com/sectun/sectun/internal/notify/broker"
	"github.com/sectun/sectun/internal/token"
	"github.com/sectun/sectun/tunnel"
)

const thing = "dev-1"

// fixture is a tunneling service, an embedded broker, two local services
// and an agent subscribed to thing's notifications.
type fixture struct {
	svc    *service
	broker string // tcp://127.0.0.1:port
	pub    *publisher
	agent  *runningAgent
	cur    int // events consumed so far
}

func newFixture(t *testing.T, mod func(*Config)) *fixture {
	t.Helper()
	f := &fixture{svc: newService(t)}
	b := embeddedBroker(t, "127.0.0.1:0")
	f.broker = "tcp://" + b.Addr().String()
	f.pub = newPublisher(t, f.broker)
	cfg := Config{
		ThingName:      thing,
		BrokerURL:      f.broker,
		TunnelEndpoint: f.svc.url,
		Services: map[string]string{
			"SSH":  greeter(t, "ssh-server"),
			"HTTP": greeter(t, "http-server"),
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	f.agent = startAgent(t, cfg)
	f.agent.ev.wait(t, &f.cur, "Subscribed", isSubscribed)
	return f
}

func (f *fixture) notify(t *testing.T, dst string, services ...string) {
	t.Helper()
	f.pub.publish(t, notify.NotifyTopic("", thing), notification(thing, dst, services...))
}

// startTunnel opens a tunnel, notifies the agent and waits for its
// session; it returns the tunnel id and a source session.
func (f *fixture) startTunnel(t *testing.T, services ...string) (string, string, *tunnel.Session) {
	t.Helper()
	id, src, dst := f.svc.open(services...)
	f.notify(t, dst, services...)
	ev := f.agent.ev.wait(t, &f.cur, "SessionStarted", isStarted).(SessionStarted)
	if ev.Session != token.Short(dst) {
		t.Fatalf("session %s started, want %s", ev.Session, token.Short(dst))
	}
	return id, dst, f.svc.source(t, src)
}

func TestNotificationStartsSession(t *testing.T) {
	f := newFixture(t, nil)
	_, _, src := f.startTunnel(t, "SSH", "HTTP")
	// Several connections per service, in parallel, on both services.
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				checkService(t, src, "SSH", "ssh-server")
			} else {
				checkService(t, src, "HTTP", "http-server")
			}
		}()
	}
	wg.Wait()
	if n := len(f.agent.Sessions()); n != 1 {
		t.Fatalf("%d sessions, want 1", n)
	}
}

func TestSeveralTunnels(t *testing.T) {
	f := newFixture(t, nil)
	_, _, a := f.startTunnel(t, "SSH")
	_, _, b := f.startTunnel(t, "HTTP")
	_, _, c := f.startTunnel(t) // V1-style: no service IDs, served by SSH
	checkService(t, a, "SSH", "ssh-server")
	checkService(t, b, "HTTP", "http-server")
	checkService(t, c, "", "ssh-server")
	if n := len(f.agent.Sessions()); n != 3 {
		t.Fatalf("%d sessions, want 3", n)
	}
}

func TestDuplicateNotification(t *testing.T) {
	f := newFixture(t, nil)
	_, dst, src := f.startTunnel(t, "SSH")
	f.notify(t, dst, "SSH")
	f.notify(t, dst, "SSH")
	for range 2 {
		ev := f.agent.ev.wait(t, &f.cur, "Ignored(duplicate)", isIgnored(ErrDuplicate)).(Ignored)
		if ev.Session != token.Short(dst) {
			t.Fatalf("duplicate for session %s, want %s", ev.Session, token.Short(dst))
		}
	}
	checkService(t, src, "SSH", "ssh-server")
	for _, ev := range f.agent.ev.snapshot() {
		if _, ok := ev.(SessionEnded); ok {
			t.Fatalf("a session ended: %+v", ev)
		}
	}
	if n := len(f.agent.Sessions()); n != 1 {
		t.Fatalf("%d sessions, want 1", n)
	}
}

func TestBadNotificationsIgnored(t *testing.T) {
	f := newFixture(t, nil)
	_, _, src := f.startTunnel(t, "SSH")
	topic := notify.NotifyTopic("", thing)
	cases := []struct {
		name    string
		payload string
		want    error
	}{
		{"not JSON", `{"clientAccessToken":`, notify.ErrInvalidDocument},
		{"not an object", `["x"]`, notify.ErrInvalidDocument},
		{"source mode", `{"clientAccessToken":"abc","clientMode":"source","region":"us-east-1","services":["SSH"]}`, notify.ErrInvalidDocument},
		{"empty token", `{"clientAccessToken":"","clientMode":"destination","region":"us-east-1","services":["SSH"]}`, notify.ErrInvalidDocument},
		{"no region", `{"clientAccessToken":"abc","clientMode":"destination","services":["SSH"]}`, notify.ErrInvalidDocument},
		{"unmapped service", `{"clientAccessToken":"abc","clientMode":"destination","region":"us-east-1","services":["SSH","RDP"]}`, ErrUnmappedService},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f.pub.publish(t, topic, []byte(tc.payload))
			ev := f.agent.ev.wait(t, &f.cur, "Ignored", func(Event) bool { return true })
			ig, ok := ev.(Ignored)
			if !ok || !errors.Is(ig.Err, tc.want) {
				t.Fatalf("event %#v, want Ignored wrapping %v", ev, tc.want)
			}
			if tc.name == "unmapped service" && ig.Session != token.Short("abc") {
				t.Fatalf("session %q, want the token's short id", ig.Session)
			}
		})
	}
	// The running tunnel is untouched.
	checkService(t, src, "SSH", "ssh-server")
	if n := len(f.agent.Sessions()); n != 1 {
		t.Fatalf("%d sessions, want 1", n)
	}
}

func TestTunnelCloseEndsSession(t *testing.T) {
	f := newFixture(t, nil)
	id, dst, src := f.startTunnel(t, "SSH")
	checkService(t, src, "SSH", "ssh-server")
	f.svc.close(id)
	ev := f.agent.ev.wait(t, &f.cur, "SessionEnded", isEnded).(SessionEnded)
	if ev.Session != token.Short(dst) || !ev.Started || !errors.Is(ev.Err, tunnel.ErrTunnelClosed) {
		t.Fatalf("SessionEnded %+v, want session %s ended with ErrTunnelClosed", ev, token.Short(dst))
	}
	if n := len(f.agent.Sessions()); n != 0 {
		t.Fatalf("%d sessions left, want 0", n)
	}
}

func TestRotationReplacesSession(t *testing.T) {
	f := newFixture(t, nil)
	id, oldDst, src := f.startTunnel(t, "SSH")
	checkService(t, src, "SSH", "ssh-server")
	newDst := f.svc.rotate(id)
	f.notify(t, newDst, "SSH")
	var ended, started bool
	for !ended || !started {
		ev := f.agent.ev.wait(t, &f.cur, "SessionEnded or SessionStarted", func(ev Event) bool { return isEnded(ev) || isStarted(ev) })
		switch ev := ev.(type) {
		case SessionEnded:
			if ev.Session != token.Short(oldDst) || !errors.Is(ev.Err, tunnel.ErrTunnelClosed) {
				t.Fatalf("SessionEnded %+v, want the old session ended with ErrTunnelClosed", ev)
			}
			ended = true
		case SessionStarted:
			if ev.Session != token.Short(newDst) {
				t.Fatalf("SessionStarted %+v, want the new token's", ev)
			}
			started = true
		}
	}
	checkService(t, src, "SSH", "ssh-server")
	if s := f.agent.Sessions(); len(s) != 1 || s[0].ID != token.Short(newDst) {
		t.Fatalf("sessions %+v, want only the new one", s)
	}
}

func TestMaxTunnels(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.MaxTunnels = 1 })
	id, _, src := f.startTunnel(t, "SSH")
	_, _, dst2 := f.svc.open("SSH")
	f.notify(t, dst2, "SSH")
	f.agent.ev.wait(t, &f.cur, "Ignored(too many)", isIgnored(ErrTooManyTunnels))
	checkService(t, src, "SSH", "ssh-server")
	// Once the first tunnel is gone there is room again.
	f.svc.close(id)
	f.agent.ev.wait(t, &f.cur, "SessionEnded", isEnded)
	f.startTunnel(t, "HTTP")
}

func TestBrokerRestartResubscribes(t *testing.T) {
	svc := newService(t)
	b := embeddedBroker(t, "127.0.0.1:0")
	addr := b.Addr().String()
	ra := startAgent(t, Config{
		ThingName: thing, BrokerURL: "tcp://" + addr, TunnelEndpoint: svc.url,
		Services:             map[string]string{"SSH": greeter(t, "ssh-server")},
		MaxReconnectInterval: time.Second,
	})
	cur := 0
	ra.ev.wait(t, &cur, "Subscribed", isSubscribed)
	// A tunnel started before the restart survives it: the broker is not
	// on the data path.
	id, src, dst := svc.open("SSH")
	pub := newPublisher(t, "tcp://"+addr)
	pub.publish(t, notify.NotifyTopic("", thing), notification(thing, dst, "SSH"))
	ra.ev.wait(t, &cur, "SessionStarted", isStarted)
	pub.c.Disconnect(0)

	b.Close() // loses every session and subscription: it is in memory
	ra.ev.wait(t, &cur, "BrokerLost", func(ev Event) bool { _, ok := ev.(BrokerLost); return ok })
	b2 := embeddedBroker(t, addr)
	ev := ra.ev.wait(t, &cur, "Subscribed", isSubscribed).(Subscribed)
	if !ev.Reconnect {
		t.Fatalf("%+v: want Reconnect", ev)
	}
	_ = b2
	checkService(t, svc.source(t, src), "SSH", "ssh-server")

	_, src2, dst2 := svc.open("SSH")
	pub2 := newPublisher(t, "tcp://"+addr)
	pub2.publish(t, notify.NotifyTopic("", thing), notification(thing, dst2, "SSH"))
	st := ra.ev.wait(t, &cur, "SessionStarted", isStarted).(SessionStarted)
	if st.Session != token.Short(dst2) {
		t.Fatalf("started %s, want %s", st.Session, token.Short(dst2))
	}
	checkService(t, svc.source(t, src2), "SSH", "ssh-server")
	_ = id
}

func TestQueuedWhileOffline(t *testing.T) {
	// A persistent session: a notification published while the agent is
	// disconnected is delivered when it comes back.
	svc := newService(t)
	b := embeddedBroker(t, "127.0.0.1:0")
	url := "tcp://" + b.Addr().String()
	cfg := Config{ThingName: thing, BrokerURL: url, TunnelEndpoint: svc.url,
		Services: map[string]string{"SSH": greeter(t, "ssh-server")}}
	ra := startAgent(t, cfg)
	cur := 0
	ra.ev.wait(t, &cur, "Subscribed", isSubscribed)
	ra.stop(t)

	_, src, dst := svc.open("SSH")
	// NotifyTunnel, as tunneld does: it has queued the message when it
	// returns. (A network publisher gets its PUBACK from mochi before the
	// fan-out, which can race with the session takeover below.)
	if err := b.NotifyTunnel(testCtx(t), notify.Notification{ThingName: thing, Token: dst, Region: "us-east-1", Services: []string{"SSH"}}); err != nil {
		t.Fatal(err)
	}

	ra2 := startAgent(t, cfg)
	cur = 0
	st := ra2.ev.wait(t, &cur, "SessionStarted", isStarted).(SessionStarted)
	if st.Session != token.Short(dst) {
		t.Fatalf("started %s, want %s", st.Session, token.Short(dst))
	}
	checkService(t, svc.source(t, src), "SSH", "ssh-server")
}

func TestStopClosesSessions(t *testing.T) {
	f := newFixture(t, nil)
	_, _, a := f.startTunnel(t, "SSH")
	_, _, b := f.startTunnel(t, "HTTP")
	checkService(t, a, "SSH", "ssh-server")
	checkService(t, b, "HTTP", "http-server")
	if d := f.agent.stop(t); d > 3*time.Second {
		t.Errorf("stop took %v", d)
	}
	ends := 0
	for _, ev := range f.agent.ev.snapshot() {
		if e, ok := ev.(SessionEnded); ok {
			ends++
			if !errors.Is(e.Err, tunnel.ErrSessionClosed) {
				t.Errorf("%+v: want ErrSessionClosed", e)
			}
		}
	}
	if ends != 2 {
		t.Fatalf("%d sessions ended, want 2", ends)
	}
	if n := len(f.agent.Sessions()); n != 0 {
		t.Fatalf("%d sessions left", n)
	}
}

func TestSubscriptionRefused(t *testing.T) {
	// The embedded broker lets anonymous client "dev-1" subscribe only to
	// dev-1's topics: an agent for dev-2 using that client ID is refused.
	b := embeddedBroker(t, "127.0.0.1:0")
	ra := startAgent(t, Config{ThingName: "dev-2", ClientID: "dev-1", BrokerURL: "tcp://" + b.Addr().String(),
		TunnelEndpoint: "ws://127.0.0.1:1"})
	cur := 0
	ev := ra.ev.wait(t, &cur, "BrokerLost", func(ev Event) bool { _, ok := ev.(BrokerLost); return ok }).(BrokerLost)
	if got := ev.Err.Error(); !strings.Contains(got, "refused the subscription") {
		t.Fatalf("error %q does not explain the refusal", got)
	}
}

func TestBrokerUnreachableThenUp(t *testing.T) {
	// The agent starts before its broker and keeps trying.
	addrHolder := embeddedBroker(t, "127.0.0.1:0")
	addr := addrHolder.Addr().String()
	addrHolder.Close()
	ra := startAgent(t, Config{ThingName: thing, BrokerURL: "tcp://" + addr, TunnelEndpoint: "ws://127.0.0.1:1",
		MaxReconnectInterval: 500 * time.Millisecond})
	cur := 0
	ra.ev.wait(t, &cur, "BrokerLost", func(ev Event) bool { _, ok := ev.(BrokerLost); return ok })
	embeddedBroker(t, addr)
	ra.ev.wait(t, &cur, "Subscribed", isSubscribed)
}

func TestRunTwice(t *testing.T) {
	f := newFixture(t, nil)
	if err := f.agent.Run(testCtx(t)); !errors.Is(err, ErrAlreadyRun) {
		t.Fatalf("second Run: %v", err)
	}
}

func TestRunToken(t *testing.T) {
	svc := newService(t)
	id, src, dst := svc.open("SSH", "HTTP")
	ev := &events{wake: make(chan struct{}, 1)}
	done := make(chan error, 1)
	go func() {
		done <- RunToken(testCtx(t), Config{
			TunnelEndpoint: svc.url,
			Services:       map[string]string{"SSH": greeter(t, "ssh-server"), "HTTP": greeter(t, "http-server")},
			Logger:         testLogger(t), OnEvent: ev.add,
		}, dst)
	}()
	cur := 0
	ev.wait(t, &cur, "SessionStarted", isStarted)
	s := svc.source(t, src)
	checkService(t, s, "SSH", "ssh-server")
	checkService(t, s, "HTTP", "http-server")
	svc.close(id)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RunToken after close: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("RunToken still running after the tunnel closed")
	}
}

func TestRunTokenErrors(t *testing.T) {
	svc := newService(t)
	_, _, dst := svc.open("RDP")
	cases := []struct {
		name  string
		cfg   Config
		token string
		want  error
	}{
		{"no endpoint", Config{}, "x", ErrInvalidConfig},
		{"no token", Config{TunnelEndpoint: svc.url}, "", ErrInvalidConfig},
		{"rejected token", Config{TunnelEndpoint: svc.url}, "not-a-token", tunnel.ErrTokenRejected},
		{"unmapped service", Config{TunnelEndpoint: svc.url}, dst, ErrUnmappedService},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := RunToken(testCtx(t), tc.cfg, tc.token)
			if !errors.Is(err, tc.want) {
				t.Fatalf("RunToken: %v, want %v", err, tc.want)
			}
		})
	}
}

func TestLocalServiceDown(t *testing.T) {
	// A service whose local port refuses connections: its tunnel
	// connections are rejected (the source reads EOF), the other service
	// of the same tunnel keeps working.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	f := newFixture(t, func(c *Config) {
		c.Services["VNC"] = dead
		c.DialRetries = -1
	})
	_, _, src := f.startTunnel(t, "SSH", "VNC")
	ctx := testCtx(t)
	c, err := src.Dial(ctx, "VNC")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(testTimeout))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes from a dead service", n)
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("connection to a dead service was not rejected")
	}
	checkService(t, src, "SSH", "ssh-server")
}

func TestBrokerPassword(t *testing.T) {
	b, err := broker.New(broker.Config{
		Addr:        "127.0.0.1:0",
		Users:       []broker.User{{Name: thing, Password: "device-password"}},
		NoAnonymous: true,
		Logger:      testLogger(t).With("component", "broker"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	url := "tcp://" + b.Addr().String()

	bad := startAgent(t, Config{ThingName: thing, BrokerURL: url, Username: thing, Password: "wrong", TunnelEndpoint: "ws://127.0.0.1:1"})
	cur := 0
	ev := bad.ev.wait(t, &cur, "BrokerLost", func(ev Event) bool { _, ok := ev.(BrokerLost); return ok }).(BrokerLost)
	if msg := ev.Err.Error(); !strings.Contains(msg, "check the username and password") || strings.Contains(msg, "wrong") {
		t.Fatalf("refused CONNECT reported as %q", msg)
	}
	bad.stop(t)

	good := startAgent(t, Config{ThingName: thing, BrokerURL: url, Username: thing, Password: "device-password", TunnelEndpoint: "ws://127.0.0.1:1"})
	cur = 0
	good.ev.wait(t, &cur, "Subscribed", isSubscribed)
}

// TestRunTokenSchemeHint: a wss:// endpoint that speaks no TLS fails at
// once, and the error names tunnel-agent's option, not the library's
// Config field only.
func TestRunTokenSchemeHint(t *testing.T) {
	svc := newService(t)
	_, _, dst := svc.open("SSH")
	err := RunToken(testCtx(t), Config{
		TunnelEndpoint: "wss://" + strings.TrimPrefix(svc.url, "ws://"),
		Services:       map[string]string{"SSH": "127.0.0.1:1"},
		Logger:         testLogger(t),
	}, dst)
	if !errors.Is(err, tunnel.ErrTLSNotSpoken) || !strings.Contains(err.Error(), "--tunnel-endpoint (tunnelEndpoint) as ws://HOST:PORT") {
		t.Fatalf("RunToken: %v", err)
	}
	if h := TunnelHint(fmt.Errorf("x: %w", tunnel.ErrCertificateUntrusted)); !strings.Contains(h, "--tunnel-ca") {
		t.Fatalf("CA hint %q", h)
	}
}
