package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/token"
)

// ClusterOpener opens n stores sharing one new, empty database (n nodes
// of one cluster); the test closes them.
type ClusterOpener func(t *testing.T, n int) []store.ClusterStore

// RunCluster is the conformance suite of store.ClusterStore: node leases
// on the database clock, handshake claims (one acceptance of a single-use
// token presented on several nodes at once), epochs, connection states
// from leases, the outbox under SKIP LOCKED, LISTEN/NOTIFY.
func RunCluster(t *testing.T, open ClusterOpener) {
	tests := []struct {
		name string
		n    int
		fn   func(*testing.T, []store.ClusterStore)
	}{
		{"NodeLease", 1, testNodeLease},
		{"ClaimAndRoute", 2, testClaimAndRoute},
		{"ClaimRefusals", 1, testClaimRefusals},
		{"SingleUseTokenAtOnce", 2, testSingleUseAtOnce},
		{"ClientTokenReclaim", 2, testClientTokenReclaim},
		{"StatesFollowLeases", 2, testStatesFollowLeases},
		{"RestartCorrectsOwnRows", 1, testRestartCorrects},
		{"Outbox", 2, testOutbox},
		{"ListenNotify", 2, testListenNotify},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ss := open(t, tc.n)
			t.Cleanup(func() {
				for _, s := range ss {
					s.Close()
				}
			})
			tc.fn(t, ss)
		})
	}
}

func register(t *testing.T, s store.ClusterStore, id string, ttl time.Duration) int64 {
	t.Helper()
	sha := make([]byte, 32)
	rand.Read(sha)
	inc, err := s.RegisterNode(ctx, store.Node{ID: id, LinkAddr: id + ".example:7000", LinkCertSHA256: sha}, ttl)
	if err != nil {
		t.Fatalf("RegisterNode %s: %v", id, err)
	}
	return inc
}

// waitFor polls cond every 20 ms for at most 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testNodeLease(t *testing.T, ss []store.ClusterStore) {
	s := ss[0]
	inc1 := register(t, s, "n1", time.Minute)
	n, err := s.GetNode(ctx, "n1")
	if err != nil || !n.LeaseValid || n.Incarnation != inc1 || n.LinkAddr != "n1.example:7000" || len(n.LinkCertSHA256) != 32 || n.Draining {
		t.Fatalf("GetNode = %+v, %v", n, err)
	}
	inc2 := register(t, s, "n1", time.Minute)
	if inc2 != inc1+1 {
		t.Fatalf("second RegisterNode: incarnation %d, want %d", inc2, inc1+1)
	}
	if err := s.RenewLease(ctx, "n1", inc1, time.Minute); !errors.Is(err, store.ErrLeaseLost) {
		t.Fatalf("RenewLease of an old incarnation = %v, want ErrLeaseLost", err)
	}
	if err := s.RenewLease(ctx, "n1", inc2, 300*time.Millisecond); err != nil {
		t.Fatalf("RenewLease: %v", err)
	}
	waitFor(t, "the 300 ms lease to expire on the database clock", func() bool {
		n, err := s.GetNode(ctx, "n1")
		return err == nil && !n.LeaseValid
	})
	if err := s.SetDraining(ctx, "n1", true); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.GetNode(ctx, "n1"); !n.Draining {
		t.Fatal("SetDraining(true) not read back")
	}
	if _, err := s.GetNode(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetNode of an unknown node = %v, want ErrNotFound", err)
	}
	if err := s.LeaveNode(ctx, "n1", inc1); !errors.Is(err, store.ErrLeaseLost) {
		t.Fatalf("LeaveNode of an old incarnation = %v", err)
	}
}

func claim(s store.ClusterStore, tok string, m store.Mode, client, node string, inc int64) (store.Claimed, error) {
	c := store.Claim{TokenHash: token.Hash(tok), Mode: m, NodeID: node, Incarnation: inc, Now: time.Now()}
	if client != "" {
		c.ClientTokenHash = token.Hash(client)
	}
	return s.Claim(ctx, c)
}

func testClaimAndRoute(t *testing.T, ss []store.ClusterStore) {
	a, b := ss[0], ss[1]
	incA := register(t, a, "a", time.Minute)
	incB := register(t, b, "b", time.Minute)
	tun, src, dst := NewTunnel("t1", time.Now())
	mustCreate(t, a, tun)
	c1, err := claim(a, dst, store.ModeDestination, "", "a", incA)
	if err != nil {
		t.Fatalf("claim dst on a: %v", err)
	}
	if c1.TunnelID != "t1" || c1.Epoch != 1 || c1.Previous.Epoch != 0 || c1.Other.Epoch != 0 || c1.Other.Connected {
		t.Fatalf("first claim = %+v", c1)
	}
	if fmt.Sprint(c1.Services) != "[SSH RDP]" {
		t.Fatalf("claim services = %v", c1.Services)
	}
	c2, err := claim(b, src, store.ModeSource, "", "b", incB)
	if err != nil {
		t.Fatalf("claim src on b: %v", err)
	}
	if c2.Epoch != 1 || !c2.Other.Connected || c2.Other.Node.ID != "a" || c2.Other.Node.LinkAddr != "a.example:7000" ||
		len(c2.Other.Node.LinkCertSHA256) != 32 || c2.Other.Epoch != 1 || !c2.Other.Node.LeaseValid {
		t.Fatalf("second claim's other end = %+v", c2.Other)
	}
	got := mustGet(t, b, "t1")
	if !got.Source.Connected || !got.Destination.Connected {
		t.Fatalf("Get after both claims: source %v destination %v, want both connected", got.Source.Connected, got.Destination.Connected)
	}
	r, err := a.Route(ctx, "t1", store.ModeSource)
	if err != nil || r.Node.ID != "b" || r.Epoch != 1 || !r.Connected {
		t.Fatalf("Route(source) = %+v, %v", r, err)
	}
	held, err := a.PeersOf(ctx, "a")
	if err != nil || len(held) != 1 || held[0] != (store.HeldPeer{TunnelID: "t1", Mode: store.ModeDestination, Epoch: 1}) {
		t.Fatalf("PeersOf(a) = %+v, %v", held, err)
	}
	if ok, err := b.ReleasePeer(ctx, "t1", store.ModeSource, 2); ok || err != nil {
		t.Fatalf("ReleasePeer with a newer epoch = %v, %v; want no change", ok, err)
	}
	if ok, err := b.ReleasePeer(ctx, "t1", store.ModeSource, 1); !ok || err != nil {
		t.Fatalf("ReleasePeer = %v, %v", ok, err)
	}
	got = mustGet(t, a, "t1")
	if got.Source.Connected || !got.Destination.Connected {
		t.Fatalf("after release: source %v destination %v", got.Source.Connected, got.Destination.Connected)
	}
	ts, _, err := a.List(ctx, store.ListOptions{})
	if err != nil || len(ts) != 1 || ts[0].Source.Connected || !ts[0].Destination.Connected {
		t.Fatalf("List does not show the peer rows' states: %v", err)
	}
}

func testClaimRefusals(t *testing.T, ss []store.ClusterStore) {
	s := ss[0]
	inc := register(t, s, "a", time.Minute)
	tun, src, dst := NewTunnel("t1", time.Now())
	mustCreate(t, s, tun)
	check := func(what string, err error, want string) {
		t.Helper()
		if !errors.Is(err, store.ErrRefused) || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: %v, want ErrRefused saying %q", what, err, want)
		}
	}
	_, err := claim(s, "nonsense-token", store.ModeSource, "", "a", inc)
	check("unknown token", err, "invalid access token")
	_, err = claim(s, src, store.ModeDestination, "", "a", inc)
	check("wrong mode", err, "local-proxy-mode=source")
	if _, err := claim(s, src, store.ModeSource, "ct", "a", inc); err != nil {
		t.Fatal(err)
	}
	_, err = claim(s, src, store.ModeSource, "", "a", inc)
	check("bound token without client token", err, "bound to a client token")
	_, err = claim(s, src, store.ModeSource, "other", "a", inc)
	check("bound token, other client token", err, "different client token")
	if _, err := claim(s, dst, store.ModeDestination, "", "a", inc); err != nil {
		t.Fatal(err)
	}
	_, err = claim(s, dst, store.ModeDestination, "", "a", inc)
	check("single-use token again", err, "already used without a client token")
	if _, err := s.Update(ctx, "t1", func(t *store.Tunnel) error { t.Status = store.StatusClosed; t.ClosedAt = time.Now(); return nil }); err != nil {
		t.Fatal(err)
	}
	_, err = claim(s, src, store.ModeSource, "ct", "a", inc)
	check("closed tunnel", err, "tunnel is closed")
	tun2, src2, _ := NewTunnel("t2", time.Now().Add(-time.Hour))
	tun2.ExpiresAt = time.Now().Add(-time.Minute)
	mustCreate(t, s, tun2)
	_, err = claim(s, src2, store.ModeSource, "", "a", inc)
	check("expired tunnel", err, "lifetime has expired")
	if got := mustGet(t, s, "t2"); got.Source.Consumed {
		t.Fatal("a refused claim consumed the token")
	}
}

// testSingleUseAtOnce presents one single-use token to two nodes (two
// stores, two connection pools) at the same instant, many times: exactly
// one claim is accepted each time.
func testSingleUseAtOnce(t *testing.T, ss []store.ClusterStore) {
	incs := []int64{register(t, ss[0], "a", time.Minute), register(t, ss[1], "b", time.Minute)}
	const rounds, perNode = 40, 3
	for r := range rounds {
		id := fmt.Sprintf("t%03d", r)
		tun, _, dst := NewTunnel(id, time.Now())
		mustCreate(t, ss[0], tun)
		var ok, refused atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range 2 * perNode {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				node := []string{"a", "b"}[i%2]
				_, err := claim(ss[i%2], dst, store.ModeDestination, "", node, incs[i%2])
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, store.ErrRefused):
					refused.Add(1)
				default:
					t.Errorf("round %d: claim: %v", r, err)
				}
			}()
		}
		close(start)
		wg.Wait()
		if ok.Load() != 1 || refused.Load() != 2*perNode-1 {
			t.Fatalf("round %d: %d accepted, %d refused; want exactly 1 accepted", r, ok.Load(), refused.Load())
		}
		if rt, _ := ss[1].Route(ctx, id, store.ModeDestination); rt.Epoch != 1 {
			t.Fatalf("round %d: epoch %d after one acceptance, want 1", r, rt.Epoch)
		}
	}
}

func testClientTokenReclaim(t *testing.T, ss []store.ClusterStore) {
	a, b := ss[0], ss[1]
	incA := register(t, a, "a", time.Minute)
	incB := register(t, b, "b", time.Minute)
	tun, src, _ := NewTunnel("t1", time.Now())
	mustCreate(t, a, tun)
	if _, err := claim(a, src, store.ModeSource, "ct", "a", incA); err != nil {
		t.Fatal(err)
	}
	c, err := claim(b, src, store.ModeSource, "ct", "b", incB)
	if err != nil {
		t.Fatalf("reconnect with the client token on another node: %v", err)
	}
	if c.Epoch != 2 || !c.Previous.Connected || c.Previous.Node.ID != "a" || c.Previous.Epoch != 1 {
		t.Fatalf("replacing claim = epoch %d previous %+v; want epoch 2 replacing a's epoch 1", c.Epoch, c.Previous)
	}
	// The replaced node's late disconnect must not mark the new one gone.
	if ok, _ := a.ReleasePeer(ctx, "t1", store.ModeSource, 1); ok {
		t.Fatal("ReleasePeer of the replaced epoch changed the row")
	}
	if got := mustGet(t, a, "t1"); !got.Source.Connected {
		t.Fatal("source shows disconnected after a stale release")
	}
}

func testStatesFollowLeases(t *testing.T, ss []store.ClusterStore) {
	a, b := ss[0], ss[1]
	incA := register(t, a, "a", 400*time.Millisecond)
	incB := register(t, b, "b", time.Minute)
	tun, src, dst := NewTunnel("t1", time.Now())
	mustCreate(t, a, tun)
	if _, err := claim(a, src, store.ModeSource, "", "a", incA); err != nil {
		t.Fatal(err)
	}
	if _, err := claim(b, dst, store.ModeDestination, "", "b", incB); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, b, "t1"); !got.Source.Connected {
		t.Fatal("source not connected while its node's lease is valid")
	}
	// Node a stops renewing (crashed): its end turns DISCONNECTED by
	// itself, b's stays CONNECTED.
	waitFor(t, "a's end to show DISCONNECTED once a's lease expired", func() bool {
		got := mustGet(t, b, "t1")
		return !got.Source.Connected && got.Destination.Connected
	})
	r, _ := b.Route(ctx, "t1", store.ModeSource)
	if r.Connected || r.Node.LeaseValid {
		t.Fatalf("Route of a dead node's end = %+v", r)
	}
	n, err := b.ExpireDeadPeers(ctx)
	if err != nil || n != 1 {
		t.Fatalf("ExpireDeadPeers = %d, %v; want 1", n, err)
	}
	if held, _ := b.PeersOf(ctx, "a"); len(held) != 0 {
		t.Fatalf("dead node still holds %v", held)
	}
}

func testRestartCorrects(t *testing.T, ss []store.ClusterStore) {
	s := ss[0]
	inc := register(t, s, "a", time.Minute)
	tun, src, dst := NewTunnel("t1", time.Now())
	mustCreate(t, s, tun)
	claim(s, src, store.ModeSource, "x", "a", inc)
	claim(s, dst, store.ModeDestination, "y", "a", inc)
	// Killed and restarted within its lease: registering again corrects
	// its rows at once.
	register(t, s, "a", time.Minute)
	got := mustGet(t, s, "t1")
	if got.Source.Connected || got.Destination.Connected {
		t.Fatalf("after the node re-registered: source %v destination %v, want both disconnected", got.Source.Connected, got.Destination.Connected)
	}
}

func testOutbox(t *testing.T, ss []store.ClusterStore) {
	a, b := ss[0], ss[1]
	tun, _, _ := NewTunnel("t1", time.Now())
	id, err := a.CreateWithOutbox(ctx, tun, []byte("notify t1"))
	if err != nil {
		t.Fatal(err)
	}
	mustGet(t, a, "t1")
	// A failed Create writes no message.
	if _, err := a.CreateWithOutbox(ctx, tun, []byte("dup")); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate CreateWithOutbox = %v", err)
	}
	// A young message is left to its writer.
	if n, _ := b.DrainOutbox(ctx, time.Hour, 10, func(store.OutboxMessage) error { return nil }); n != 0 {
		t.Fatalf("drained %d messages younger than minAge", n)
	}
	if n, err := b.DrainOutbox(ctx, 0, 10, func(store.OutboxMessage) error { return errors.New("broker down") }); n != 0 || err == nil {
		t.Fatalf("failed publish: %d, %v", n, err)
	}
	var got []string
	if n, err := b.DrainOutbox(ctx, 0, 10, func(m store.OutboxMessage) error {
		if m.ID != id {
			t.Errorf("message ID %d, want %d", m.ID, id)
		}
		got = append(got, string(m.Payload))
		return nil
	}); n != 1 || err != nil || fmt.Sprint(got) != "[notify t1]" {
		t.Fatalf("drain = %d, %v, %q", n, err, got)
	}
	// Two nodes draining at once publish each message exactly once.
	const msgs = 60
	for i := range msgs {
		if _, err := a.AddOutbox(ctx, fmt.Appendf(nil, "m%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for _, s := range []store.ClusterStore{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n, err := s.DrainOutbox(ctx, 0, 5, func(m store.OutboxMessage) error {
					mu.Lock()
					seen[string(m.Payload)]++
					mu.Unlock()
					time.Sleep(time.Millisecond)
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
				if n == 0 {
					return
				}
			}
		}()
	}
	wg.Wait()
	if len(seen) != msgs {
		t.Fatalf("%d distinct messages published, want %d", len(seen), msgs)
	}
	for k, v := range seen {
		if v != 1 {
			t.Fatalf("message %s published %d times", k, v)
		}
	}
	id2, _ := a.AddOutbox(ctx, []byte("x"))
	if err := a.DeleteOutbox(ctx, id2); err != nil {
		t.Fatal(err)
	}
	if n, _ := b.DrainOutbox(ctx, 0, 10, func(store.OutboxMessage) error { return nil }); n != 0 {
		t.Fatal("a deleted message was drained")
	}
}

func testListenNotify(t *testing.T, ss []store.ClusterStore) {
	var b [4]byte
	rand.Read(b[:])
	ch := "sectun_test_" + hex.EncodeToString(b[:])
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan struct{}, 4)
	got := make(chan string, 4)
	done := make(chan error, 1)
	go func() {
		done <- ss[0].Listen(lctx, ch, func() { ready <- struct{}{} }, func(p string) { got <- p })
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("Listen never became ready")
	}
	if err := ss[1].Notify(ctx, ch, "close t1"); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if p != "close t1" {
			t.Fatalf("payload %q", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("notification not received")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Listen did not return after its context ended")
	}
}
