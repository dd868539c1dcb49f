package broker

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/sectun/sectun/internal/notify"
)

// rawConn opens a TCP connection that never sends CONNECT.
func rawConn(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedSoon reports whether the server closed c within d.
func closedSoon(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

func users(names ...string) []User {
	var us []User
	for _, n := range names {
		us = append(us, User{Name: n, Password: "pw-" + n})
	}
	return us
}

// MaxConns counts every connection from accept, CONNECT or not: over it a
// new one is closed at once, and a slot frees when one closes.
func TestLimitMaxConns(t *testing.T) {
	b, logs := startBroker(t, Config{MaxConns: 4, MaxConnsPerAddr: -1, MaxConnsPerIdentity: -1, Users: users("dev-1")})
	var held []net.Conn
	for range 2 {
		held = append(held, rawConn(t, b.Addr().String()))
	}
	mustDial(t, clientOpts{url: tcpURL(b), id: "dev-1@a", user: "dev-1", pass: "pw-dev-1"})
	mustDial(t, clientOpts{url: tcpURL(b), id: "dev-2"})
	waitFor(t, "4 connections", func() bool { return b.Stats().Conns == 4 })
	if _, err := dial(t, clientOpts{url: tcpURL(b), id: "dev-1@b", user: "dev-1", pass: "pw-dev-1"}); err == nil {
		t.Fatal("a fifth connection was served")
	}
	if !closedSoon(rawConn(t, b.Addr().String()), 2*time.Second) {
		t.Fatal("a fifth raw connection was kept")
	}
	held[0].Close()
	waitFor(t, "a free slot", func() bool { return b.Stats().Conns == 3 })
	mustDial(t, clientOpts{url: tcpURL(b), id: "dev-1@b", user: "dev-1", pass: "pw-dev-1"})
	st := b.Stats()
	if st.Refused[ReasonMaxConns] != 2 || st.MaxConns != 4 {
		t.Fatalf("stats %+v", st)
	}
	if !strings.Contains(logs.String(), "reason=max_conns") {
		t.Errorf("refusal not logged:\n%s", logs.String())
	}
}

// MaxConnsPerAddr bounds the connections of one address that proved
// nothing (before CONNECT, or anonymous), all of loopback counting as one:
// authenticated devices behind it still connect.
func TestLimitConnsPerAddr(t *testing.T) {
	b, _ := startBroker(t, Config{MaxConnsPerAddr: 3, MaxConnsPerIdentity: -1, Users: users("dev-9")})
	// A password client is counted per address only until CONNECT.
	for _, id := range []string{"dev-9@a", "dev-9@b"} {
		mustDial(t, clientOpts{url: tcpURL(b), id: id, user: "dev-9", pass: "pw-dev-9"})
	}
	mustDial(t, clientOpts{url: tcpURL(b), id: "dev-1"})
	mustDial(t, clientOpts{url: tcpURL(b), id: "dev-2"})
	rawConn(t, b.Addr().String())
	waitFor(t, "5 connections", func() bool { return b.Stats().Conns == 5 })
	if _, err := dial(t, clientOpts{url: tcpURL(b), id: "dev-3"}); err == nil {
		t.Fatal("a fourth anonymous client was served")
	}
	// Another loopback address is the same host.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: wait}
	c2, err := d.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if !closedSoon(c2, 2*time.Second) {
		t.Fatal("127.0.0.2 counted apart from 127.0.0.1")
	}
	if n := b.Stats().Refused[ReasonConnsPerAddr]; n != 2 {
		t.Fatalf("refused per address: %d, want 2", n)
	}
}

// MaxConnsPerIdentity: one certificate, user, or the anonymous clients of
// one address, hold at most that many connections (CONNACK "server
// unavailable"); a client taking over its own live connection replaces it.
func TestLimitConnsPerIdentity(t *testing.T) {
	b, _ := startBroker(t, Config{MaxConnsPerIdentity: 2, Users: users("dev-1", "dev-2")})
	login := func(id, user string) clientOpts {
		return clientOpts{url: tcpURL(b), id: id, user: user, pass: "pw-" + user}
	}
	mustDial(t, login("dev-1@a", "dev-1"))
	mustDial(t, login("dev-1@b", "dev-1"))
	if _, err := dial(t, login("dev-1@c", "dev-1")); !errors.Is(err, packets.ErrorRefusedServerUnavailable) {
		t.Fatalf("a third connection of dev-1: %v, want server unavailable", err)
	}
	mustDial(t, login("dev-1@a", "dev-1")) // takes over its own: not one more
	mustDial(t, login("dev-2", "dev-2"))   // another identity
	// Anonymous clients of one address are one identity.
	mustDial(t, clientOpts{url: tcpURL(b), id: "x-1"})
	mustDial(t, clientOpts{url: tcpURL(b), id: "x-2"})
	if _, err := dial(t, clientOpts{url: tcpURL(b), id: "x-3"}); !errors.Is(err, packets.ErrorRefusedServerUnavailable) {
		t.Fatalf("a third anonymous loopback client: %v, want server unavailable", err)
	}
	if n := b.Stats().Refused[ReasonConnsPerIdentity]; n != 2 {
		t.Fatalf("refused per identity: %d, want 2", n)
	}
}

// MaxSessions bounds the sessions held, kept ones of disconnected clients
// included; resuming one is never refused. MaxSessionsPerIdentity stops a
// client that changes its client ID from filling the broker.
func TestLimitSessions(t *testing.T) {
	b, _ := startBroker(t, Config{MaxSessions: 3, MaxSessionsPerIdentity: 2, Users: users("dev-1", "dev-2", "dev-3")})
	login := func(id, user string) clientOpts {
		return clientOpts{url: tcpURL(b), id: id, user: user, pass: "pw-" + user, persistent: true}
	}
	for _, o := range []clientOpts{login("dev-1@a", "dev-1"), login("dev-1@b", "dev-1")} {
		mustDial(t, o).Disconnect(50)
	}
	waitFor(t, "2 kept sessions", func() bool { return b.Stats().OfflineSessions == 2 })
	if _, err := dial(t, login("dev-1@c", "dev-1")); !errors.Is(err, packets.ErrorRefusedServerUnavailable) {
		t.Fatalf("a third session of dev-1: %v, want server unavailable", err)
	}
	mustDial(t, login("dev-2", "dev-2"))
	if _, err := dial(t, login("dev-3", "dev-3")); !errors.Is(err, packets.ErrorRefusedServerUnavailable) {
		t.Fatalf("a fourth session: %v, want server unavailable", err)
	}
	mustDial(t, login("dev-1@a", "dev-1")) // resumed
	st := b.Stats()
	if st.Refused[ReasonSessionsPerIdentity] != 1 || st.Refused[ReasonMaxSessions] != 1 || st.Sessions != 3 {
		t.Fatalf("stats %+v", st)
	}
	// A clean session ends with its connection: the session limits do not
	// refuse it (an admin or a device can still connect when they are
	// full); the connection limits bound it.
	clean := login("dev-3", "dev-3")
	clean.persistent = false
	mustDial(t, clean)
	clean.id = "dev-1@d"
	clean.user, clean.pass = "dev-1", "pw-dev-1"
	mustDial(t, clean)
}

// A disconnected session holds at most MaxQueuedPerSession messages, and
// all sessions together at most MaxQueued; the rest are dropped, counted.
func TestLimitQueued(t *testing.T) {
	b, _ := startBroker(t, Config{MaxQueuedPerSession: 3, MaxQueued: 5, MaxConnsPerIdentity: -1})
	for _, thing := range []string{"dev-1", "dev-2"} {
		c := mustDial(t, clientOpts{url: tcpURL(b), id: thing, persistent: true})
		c.subscribe(t, "$aws/things/"+thing+"/tunnels/notify")
		c.Disconnect(50)
	}
	waitFor(t, "2 kept sessions", func() bool { return b.Stats().OfflineSessions == 2 })
	for i := range 5 {
		mustNotify(t, b, notifyWith("dev-1", fmt.Sprint("one-", i)))
	}
	for i := range 5 {
		mustNotify(t, b, notifyWith("dev-2", fmt.Sprint("two-", i)))
	}
	st := b.Stats()
	if st.Queued != 5 || st.Dropped[DropSessionQueue] != 2 || st.Dropped[DropQueue] != 3 {
		t.Fatalf("queued %d, dropped %v; want 5, 2 session_queue_full, 3 queue_full", st.Queued, st.Dropped)
	}
	c := mustDial(t, clientOpts{url: tcpURL(b), id: "dev-1", persistent: true})
	got := map[string]bool{}
	for range 3 {
		got[string(c.next(t).Payload())] = true
	}
	for i := range 3 {
		if !got[string(mustMarshal(t, notifyWith("dev-1", fmt.Sprint("one-", i))))] {
			t.Fatalf("the first three notifications were not the ones kept: %v", got)
		}
	}
	waitFor(t, "acknowledged", func() bool { return b.Stats().Queued == 2 })
}

// An expired session goes entirely: mochi v2.7.9 left its subscriptions
// in the topic tree and its queued messages counted.
func TestExpiredSessionFreed(t *testing.T) {
	b, _ := startBroker(t, Config{SessionExpiry: time.Second})
	c := mustDial(t, clientOpts{url: tcpURL(b), id: "dev-1", persistent: true})
	c.subscribe(t, "$aws/things/dev-1/tunnels/notify")
	c.Disconnect(50)
	waitFor(t, "a kept session", func() bool { return b.Stats().OfflineSessions == 1 })
	mustNotify(t, b, note("dev-1"))
	if q := b.Stats().Queued; q != 1 {
		t.Fatalf("queued %d", q)
	}
	deadline := time.Now().Add(wait)
	for b.Stats().Sessions != 0 || b.Stats().Queued != 0 || atomic.LoadInt64(&b.srv.Info.Subscriptions) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after expiry: %+v, %d subscriptions", b.Stats(), atomic.LoadInt64(&b.srv.Info.Subscriptions))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if subs := b.srv.Topics.Subscribers("$aws/things/dev-1/tunnels/notify"); len(subs.Subscriptions) != 0 {
		t.Fatalf("expired session still subscribed: %v", subs.Subscriptions)
	}
}

func mustMarshal(t *testing.T, n notify.Notification) []byte {
	t.Helper()
	b, err := n.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
