package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/token"
)

// Run runs the conformance suite. open must return a new, empty store each
// time it is called; it may register cleanups with t (they run after Run
// has closed the store).
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"CreateGet", testCreateGet},
		{"TimesRoundTrip", testTimesRoundTrip},
		{"CreateDuplicate", testCreateDuplicate},
		{"CreateInvalid", testCreateInvalid},
		{"NotFound", testNotFound},
		{"FindByToken", testFindByToken},
		{"FindByTokenAfterRotation", testFindByTokenAfterRotation},
		{"TokenHashUnique", testTokenHashUnique},
		{"UpdateErrorAborts", testUpdateErrorAborts},
		{"UpdateChangeID", testUpdateChangeID},
		{"UpdateReturnsStored", testUpdateReturnsStored},
		{"ConcurrentUpdates", testConcurrentUpdates},
		{"PeerRoundTrip", testPeerRoundTrip},
		{"NilVsEmpty", testNilVsEmpty},
		{"Delete", testDelete},
		{"ListEmpty", testListEmpty},
		{"ListPaging", testListPaging},
		{"ListFilter", testListFilter},
		{"ListStableUnderInserts", testListStableUnderInserts},
		{"ListBadCursor", testListBadCursor},
		{"CountOpen", testCountOpen},
		{"ResetConnections", testResetConnections},
		{"OpenExpiringBefore", testOpenExpiringBefore},
		{"DeleteClosedBefore", testDeleteClosedBefore},
		{"CanceledContext", testCanceledContext},
		{"CloseIdempotent", testCloseIdempotent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tt.fn(t, s)
		})
	}
}

// base is the creation time of test tunnels: not UTC, with nanoseconds, so
// round trips are checked for both.
var base = time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.FixedZone("IST", 5*3600+1800))

// newTunnel returns a complete open tunnel with fresh token hashes.
func newTunnel(id string, created time.Time) *store.Tunnel {
	tun, _, _ := NewTunnel(id, created)
	return tun
}

// NewTunnel returns a complete open tunnel created at created, with fresh
// access tokens: it stores their hashes and returns the plaintext source
// and destination tokens, for backend tests that check where they must
// not appear.
func NewTunnel(id string, created time.Time) (tun *store.Tunnel, srcToken, dstToken string) {
	srcToken, src := token.New()
	dstToken, dst := token.New()
	return &store.Tunnel{
		ID:              id,
		ARN:             "arn:aws:iot:us-east-1:123456789012:tunnel/" + id,
		Description:     "tunnel " + id + " \u00e9\u6f22 'quoted' \"double\"",
		Status:          store.StatusOpen,
		ThingName:       "thing-" + id,
		Services:        []string{"SSH", "RDP"},
		LifetimeMinutes: 720,
		Tags:            []store.Tag{{Key: "env", Value: "test"}, {Key: "owner", Value: ""}},
		CreatedAt:       created,
		UpdatedAt:       created,
		ExpiresAt:       created.Add(720 * time.Minute),
		Source:          store.Peer{TokenHash: src, UpdatedAt: created},
		Destination:     store.Peer{TokenHash: dst, UpdatedAt: created},
	}, srcToken, dstToken
}

var ctx = context.Background()

// timeCmp: equal within the promised millisecond, and both in UTC when the
// first (the stored one, by convention of want/got order below) is.
var timeCmp = cmp.Comparer(func(a, b time.Time) bool {
	d := a.Sub(b)
	return a.IsZero() == b.IsZero() && d > -time.Millisecond && d < time.Millisecond
})

// expect returns what reading t back must give (up to timeCmp): a deep
// copy with empty slices and hashes as nil.
func expect(t *store.Tunnel) *store.Tunnel {
	c := *t
	c.Services = nilIfEmpty(slices.Clone(t.Services))
	c.Tags = nilIfEmpty(slices.Clone(t.Tags))
	for _, p := range []*store.Peer{&c.Source, &c.Destination} {
		p.TokenHash = nilIfEmpty(slices.Clone(p.TokenHash))
		p.ClientTokenHash = nilIfEmpty(slices.Clone(p.ClientTokenHash))
	}
	return &c
}

func nilIfEmpty[S ~[]E, E any](s S) S {
	if len(s) == 0 {
		return nil
	}
	return s
}

// checkTunnel fails unless got matches expect(want) and all its times are
// UTC.
func checkTunnel(t *testing.T, what string, want, got *store.Tunnel) {
	t.Helper()
	if got == nil {
		t.Fatalf("%s: nil tunnel", what)
	}
	if d := cmp.Diff(expect(want), got, timeCmp); d != "" {
		t.Errorf("%s: tunnel mismatch (-want +got):\n%s", what, d)
	}
	for name, tm := range map[string]time.Time{
		"CreatedAt": got.CreatedAt, "UpdatedAt": got.UpdatedAt, "ExpiresAt": got.ExpiresAt,
		"ClosedAt": got.ClosedAt, "Source.UpdatedAt": got.Source.UpdatedAt,
		"Destination.UpdatedAt": got.Destination.UpdatedAt,
	} {
		if tm.Location() != time.UTC {
			t.Errorf("%s: %s = %v is in %v, want UTC", what, name, tm, tm.Location())
		}
	}
}

func mustCreate(t *testing.T, s store.Store, tun *store.Tunnel) {
	t.Helper()
	if err := s.Create(ctx, tun); err != nil {
		t.Fatalf("Create(%s): %v", tun.ID, err)
	}
}

func mustGet(t *testing.T, s store.Store, id string) *store.Tunnel {
	t.Helper()
	got, err := s.Get(ctx, id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return got
}

func testCreateGet(t *testing.T, s store.Store) {
	in := newTunnel("t1", base)
	in.Source.ClientTokenHash = token.Hash("client-token-source-0123456789abcdef")
	in.Source.Consumed = true
	in.Destination.Connected = true
	in.Destination.UpdatedAt = base.Add(time.Minute)
	want := expect(in)
	mustCreate(t, s, in)
	// The store must not keep the caller's slices.
	in.Services[0] = "CHANGED"
	in.Source.TokenHash[0] ^= 0xff
	got := mustGet(t, s, "t1")
	checkTunnel(t, "Get", want, got)
	// Nor hand out shared ones.
	got.Tags[0].Key = "CHANGED"
	got.Destination.TokenHash[0] ^= 0xff
	checkTunnel(t, "second Get", want, mustGet(t, s, "t1"))
}

func testTimesRoundTrip(t *testing.T, s store.Store) {
	tests := []struct {
		name string
		at   time.Time
	}{
		{"nanoseconds non-UTC", base},
		{"milliseconds UTC", time.Date(2030, 1, 2, 3, 4, 5, 678000000, time.UTC)},
		{"microseconds", time.Date(2024, 2, 29, 23, 59, 59, 999999000, time.UTC)},
		{"unix epoch", time.Unix(0, 0)},
		{"before epoch", time.Date(1969, 12, 31, 23, 59, 59, 999500000, time.UTC)},
		{"far future", time.Date(9999, 12, 31, 23, 59, 59, 999000000, time.FixedZone("X", -7*3600))},
		{"local", time.Date(2025, 6, 1, 12, 0, 0, 1000000, time.Local)},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := newTunnel(fmt.Sprintf("time-%d", i), tt.at)
			in.UpdatedAt = tt.at.Add(time.Millisecond)
			in.ExpiresAt = tt.at.Add(time.Hour)
			in.ClosedAt = tt.at.Add(2 * time.Millisecond)
			in.Status = store.StatusClosed
			in.Source.UpdatedAt = tt.at.Add(3 * time.Millisecond)
			in.Destination.UpdatedAt = time.Time{} // zero stays zero
			mustCreate(t, s, in)
			got := mustGet(t, s, in.ID)
			checkTunnel(t, "Get", in, got)
			// Millisecond-precise inputs must come back exactly.
			if ms := in.CreatedAt.Truncate(time.Millisecond); in.CreatedAt.Equal(ms) && !got.CreatedAt.Equal(ms) {
				t.Errorf("CreatedAt = %v, want exactly %v", got.CreatedAt, ms)
			}
			if !got.Destination.UpdatedAt.IsZero() {
				t.Errorf("zero Destination.UpdatedAt came back as %v", got.Destination.UpdatedAt)
			}
		})
	}
	// A zero ClosedAt (open tunnel) stays zero.
	in := newTunnel("time-open", base)
	mustCreate(t, s, in)
	if got := mustGet(t, s, in.ID); !got.ClosedAt.IsZero() {
		t.Errorf("open tunnel's ClosedAt = %v, want zero", got.ClosedAt)
	}
}

func testCreateDuplicate(t *testing.T, s store.Store) {
	first := newTunnel("dup", base)
	mustCreate(t, s, first)
	second := newTunnel("dup", base.Add(time.Hour))
	second.Description = "second"
	if err := s.Create(ctx, second); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second Create = %v, want ErrExists", err)
	}
	checkTunnel(t, "Get after duplicate", first, mustGet(t, s, "dup"))
	// Nothing of the refused tunnel is findable.
	if _, _, err := s.FindByToken(ctx, second.Source.TokenHash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("FindByToken(refused tunnel's hash) = %v, want ErrNotFound", err)
	}
}

func testCreateInvalid(t *testing.T, s store.Store) {
	tests := []struct {
		name   string
		modify func(*store.Tunnel)
	}{
		{"empty ID", func(tun *store.Tunnel) { tun.ID = "" }},
		{"unknown status", func(tun *store.Tunnel) { tun.Status = "PENDING" }},
		{"empty status", func(tun *store.Tunnel) { tun.Status = "" }},
		// 43 bytes: what a plaintext access token would be.
		{"plaintext source token", func(tun *store.Tunnel) { tun.Source.TokenHash = []byte(strings.Repeat("A", 43)) }},
		{"short destination hash", func(tun *store.Tunnel) { tun.Destination.TokenHash = []byte{1, 2, 3} }},
		{"long client token hash", func(tun *store.Tunnel) { tun.Source.ClientTokenHash = make([]byte, 33) }},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tun := newTunnel(fmt.Sprintf("invalid-%d", i), base)
			tt.modify(tun)
			if err := s.Create(ctx, tun); !errors.Is(err, store.ErrInvalidTunnel) {
				t.Fatalf("Create = %v, want ErrInvalidTunnel", err)
			}
			if tun.ID != "" {
				if _, err := s.Get(ctx, tun.ID); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("Get after refused Create = %v, want ErrNotFound", err)
				}
			}
		})
	}
	// The same checks apply to what an Update function leaves.
	mustCreate(t, s, newTunnel("valid", base))
	_, err := s.Update(ctx, "valid", func(tun *store.Tunnel) error {
		tun.Source.TokenHash = []byte("plaintext-token")
		return nil
	})
	if !errors.Is(err, store.ErrInvalidTunnel) {
		t.Errorf("Update writing a 15-byte hash = %v, want ErrInvalidTunnel", err)
	}
}

func testNotFound(t *testing.T, s store.Store) {
	mustCreate(t, s, newTunnel("present", base))
	if _, err := s.Get(ctx, "absent"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get = %v, want ErrNotFound", err)
	}
	called := false
	if _, err := s.Update(ctx, "absent", func(*store.Tunnel) error { called = true; return nil }); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Update = %v, want ErrNotFound", err)
	}
	if called {
		t.Error("Update called fn for an absent tunnel")
	}
	if err := s.Delete(ctx, "absent"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Delete = %v, want ErrNotFound", err)
	}
	_, unknown := token.New()
	for name, h := range map[string][]byte{"unknown": unknown, "nil": nil, "empty": {}} {
		if tun, mode, err := s.FindByToken(ctx, h); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("FindByToken(%s) = %v, %q, %v; want ErrNotFound", name, tun, mode, err)
		}
	}
}

func testFindByToken(t *testing.T, s store.Store) {
	var tuns []*store.Tunnel
	for i := range 5 {
		tun := newTunnel(fmt.Sprintf("find-%d", i), base.Add(time.Duration(i)*time.Second))
		tun.Source.ClientTokenHash = token.Hash(fmt.Sprintf("client-%d", i))
		mustCreate(t, s, tun)
		tuns = append(tuns, tun)
	}
	// A closed tunnel is still found: the caller decides what that means.
	if _, err := s.Update(ctx, "find-3", func(tun *store.Tunnel) error {
		tun.Status, tun.ClosedAt = store.StatusClosed, base.Add(time.Hour)
		tuns[3].Status, tuns[3].ClosedAt = tun.Status, tun.ClosedAt
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, tun := range tuns {
		for _, tc := range []struct {
			mode store.Mode
			hash []byte
		}{{store.ModeSource, tun.Source.TokenHash}, {store.ModeDestination, tun.Destination.TokenHash}} {
			got, mode, err := s.FindByToken(ctx, tc.hash)
			if err != nil {
				t.Fatalf("FindByToken(%s %s): %v", tun.ID, tc.mode, err)
			}
			if mode != tc.mode {
				t.Errorf("FindByToken(%s %s) mode = %q", tun.ID, tc.mode, mode)
			}
			checkTunnel(t, "FindByToken "+tun.ID, tun, got)
		}
	}
	// Client token hashes are not access tokens.
	if _, _, err := s.FindByToken(ctx, tuns[0].Source.ClientTokenHash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("FindByToken(client token hash) = %v, want ErrNotFound", err)
	}
}

func testFindByTokenAfterRotation(t *testing.T, s store.Store) {
	tun := newTunnel("rot", base)
	mustCreate(t, s, tun)
	oldSrc, oldDst := tun.Source.TokenHash, tun.Destination.TokenHash
	_, newSrc := token.New()
	_, newDst := token.New()

	// Rotate the source only.
	if _, err := s.Update(ctx, "rot", func(t *store.Tunnel) error {
		t.Source.TokenHash, t.Source.ClientTokenHash, t.Source.Consumed = newSrc, nil, false
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.FindByToken(ctx, oldSrc); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("old source hash after rotation: %v, want ErrNotFound", err)
	}
	if got, mode, err := s.FindByToken(ctx, newSrc); err != nil || mode != store.ModeSource || got.ID != "rot" {
		t.Errorf("new source hash: %v %q %v", got, mode, err)
	}
	if _, mode, err := s.FindByToken(ctx, oldDst); err != nil || mode != store.ModeDestination {
		t.Errorf("unrotated destination hash: %q %v", mode, err)
	}

	// Rotate both.
	if _, err := s.Update(ctx, "rot", func(t *store.Tunnel) error {
		t.Destination.TokenHash = newDst
		_, t.Source.TokenHash = token.New()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for name, h := range map[string][]byte{"old source": oldSrc, "second source": newSrc, "old destination": oldDst} {
		if _, _, err := s.FindByToken(ctx, h); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s hash after rotating both: %v, want ErrNotFound", name, err)
		}
	}
	if _, mode, err := s.FindByToken(ctx, newDst); err != nil || mode != store.ModeDestination {
		t.Errorf("new destination hash: %q %v", mode, err)
	}
}

func testTokenHashUnique(t *testing.T, s store.Store) {
	a, b := newTunnel("a", base), newTunnel("b", base)
	mustCreate(t, s, a)
	b.Destination.TokenHash = a.Source.TokenHash
	if err := s.Create(ctx, b); !errors.Is(err, store.ErrExists) {
		t.Fatalf("Create reusing a's source hash as destination = %v, want ErrExists", err)
	}
	b = newTunnel("b", base)
	mustCreate(t, s, b)
	_, err := s.Update(ctx, "b", func(t *store.Tunnel) error {
		t.Source.TokenHash = a.Source.TokenHash
		return nil
	})
	if !errors.Is(err, store.ErrExists) {
		t.Fatalf("Update reusing a's source hash = %v, want ErrExists", err)
	}
	checkTunnel(t, "b after refused Update", b, mustGet(t, s, "b"))
	if got, _, err := s.FindByToken(ctx, a.Source.TokenHash); err != nil || got.ID != "a" {
		t.Errorf("FindByToken(a's hash) = %v, %v; want a", got, err)
	}
}

func testUpdateErrorAborts(t *testing.T, s store.Store) {
	tun := newTunnel("abort", base)
	mustCreate(t, s, tun)
	errStop := errors.New("stop")
	got, err := s.Update(ctx, "abort", func(t *store.Tunnel) error {
		t.Description = "changed"
		t.Status = store.StatusClosed
		t.ClosedAt = base.Add(time.Hour)
		_, t.Source.TokenHash = token.New()
		t.Destination.Connected = true
		t.Tags = append(t.Tags, store.Tag{Key: "x", Value: "y"})
		return fmt.Errorf("wrapped: %w", errStop)
	})
	if !errors.Is(err, errStop) {
		t.Fatalf("Update = %v, want the function's error", err)
	}
	if got != nil {
		t.Errorf("Update returned tunnel %+v with an error", got)
	}
	checkTunnel(t, "Get after aborted Update", tun, mustGet(t, s, "abort"))
	if _, mode, err := s.FindByToken(ctx, tun.Source.TokenHash); err != nil || mode != store.ModeSource {
		t.Errorf("original source hash after aborted Update: %q %v", mode, err)
	}
}

func testUpdateChangeID(t *testing.T, s store.Store) {
	tun := newTunnel("orig", base)
	mustCreate(t, s, tun)
	if _, err := s.Update(ctx, "orig", func(t *store.Tunnel) error { t.ID = "other"; return nil }); !errors.Is(err, store.ErrInvalidTunnel) {
		t.Fatalf("Update changing the ID = %v, want ErrInvalidTunnel", err)
	}
	checkTunnel(t, "Get", tun, mustGet(t, s, "orig"))
	if _, err := s.Get(ctx, "other"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get(other) = %v, want ErrNotFound", err)
	}
}

func testUpdateReturnsStored(t *testing.T, s store.Store) {
	tun := newTunnel("ret", base)
	mustCreate(t, s, tun)
	var seen *store.Tunnel
	got, err := s.Update(ctx, "ret", func(t *store.Tunnel) error {
		seen = expect(t)
		t.Description = "updated"
		t.Services = []string{} // empty: comes back nil
		t.Tags = []store.Tag{}  // likewise
		t.UpdatedAt = base.Add(time.Minute + 123456789)
		t.Source.ClientTokenHash = []byte{} // likewise
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// fn saw exactly what Get would have returned.
	checkTunnel(t, "tunnel passed to fn", tun, seen)
	stored := mustGet(t, s, "ret")
	if d := cmp.Diff(stored, got); d != "" {
		t.Errorf("Update's result differs from the stored tunnel (-stored +returned):\n%s", d)
	}
	if got.Services != nil || got.Tags != nil || got.Source.ClientTokenHash != nil {
		t.Errorf("empty slices not normalized to nil: %+v", got)
	}
	if got.Description != "updated" {
		t.Errorf("Description = %q", got.Description)
	}
}

func testConcurrentUpdates(t *testing.T, s store.Store) {
	tun := newTunnel("race", base)
	tun.Tags = nil
	mustCreate(t, s, tun)
	const n = 20
	var wg sync.WaitGroup
	errc := make(chan error, 2*n)
	for i := range n {
		wg.Go(func() {
			_, err := s.Update(ctx, "race", func(t *store.Tunnel) error {
				t.Tags = append(t.Tags, store.Tag{Key: fmt.Sprintf("k%02d", i), Value: "v"})
				t.LifetimeMinutes++
				return nil
			})
			errc <- err
		})
		// Readers run alongside the writers.
		wg.Go(func() {
			if _, _, err := s.FindByToken(ctx, tun.Destination.TokenHash); err != nil {
				errc <- fmt.Errorf("FindByToken: %w", err)
				return
			}
			_, err := s.Get(ctx, "race")
			errc <- err
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Error(err)
		}
	}
	got := mustGet(t, s, "race")
	if got.LifetimeMinutes != tun.LifetimeMinutes+n {
		t.Errorf("LifetimeMinutes = %d, want %d: updates were lost", got.LifetimeMinutes, tun.LifetimeMinutes+n)
	}
	keys := make([]string, 0, len(got.Tags))
	for _, tag := range got.Tags {
		keys = append(keys, tag.Key)
	}
	slices.Sort(keys)
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("k%02d", i))
	}
	if d := cmp.Diff(want, keys); d != "" {
		t.Errorf("tags after %d concurrent appends (-want +got):\n%s", n, d)
	}
}

func testPeerRoundTrip(t *testing.T, s store.Store) {
	tun := newTunnel("peer", base)
	mustCreate(t, s, tun)
	steps := []struct {
		name string
		set  func(p *store.Peer, i int)
	}{
		{"bind client token", func(p *store.Peer, i int) {
			p.ClientTokenHash = token.Hash(fmt.Sprintf("client-token-%d-0123456789abcdef0123", i))
		}},
		{"connect", func(p *store.Peer, i int) {
			p.Connected, p.UpdatedAt = true, base.Add(time.Duration(i+1)*time.Minute+time.Millisecond)
		}},
		{"consume", func(p *store.Peer, i int) { p.Consumed = true }},
		{"disconnect", func(p *store.Peer, i int) {
			p.Connected, p.UpdatedAt = false, base.Add(time.Duration(i+1)*time.Hour)
		}},
		{"rotate", func(p *store.Peer, i int) {
			_, p.TokenHash = token.New()
			p.ClientTokenHash, p.Consumed = nil, false
		}},
		{"zero time", func(p *store.Peer, i int) { p.UpdatedAt = time.Time{} }},
	}
	want := expect(tun)
	for _, st := range steps {
		for i, m := range []store.Mode{store.ModeSource, store.ModeDestination} {
			st.set(want.Peer(m), i)
			w := expect(want)
			got, err := s.Update(ctx, "peer", func(t *store.Tunnel) error {
				*t.Peer(m) = *w.Peer(m)
				return nil
			})
			if err != nil {
				t.Fatalf("%s %s: %v", st.name, m, err)
			}
			checkTunnel(t, st.name+" "+string(m)+" (Update)", want, got)
			checkTunnel(t, st.name+" "+string(m)+" (Get)", want, mustGet(t, s, "peer"))
		}
	}
}

func testNilVsEmpty(t *testing.T, s store.Store) {
	tests := []struct {
		name     string
		services []string
		tags     []store.Tag
		hash     []byte
	}{
		{"nil", nil, nil, nil},
		{"empty", []string{}, []store.Tag{}, []byte{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tun := newTunnel("ne-"+tt.name, base)
			tun.ThingName = ""
			tun.Description = ""
			tun.Services, tun.Tags = tt.services, tt.tags
			tun.Destination.TokenHash, tun.Source.ClientTokenHash, tun.Destination.ClientTokenHash = tt.hash, tt.hash, tt.hash
			mustCreate(t, s, tun)
			got := mustGet(t, s, tun.ID)
			if got.Services != nil || got.Tags != nil || got.Destination.TokenHash != nil ||
				got.Source.ClientTokenHash != nil || got.Destination.ClientTokenHash != nil {
				t.Errorf("Get: empty fields not nil: services %#v tags %#v hashes %#v %#v %#v", got.Services, got.Tags,
					got.Destination.TokenHash, got.Source.ClientTokenHash, got.Destination.ClientTokenHash)
			}
			checkTunnel(t, "Get", tun, got)
			list, _, err := s.List(ctx, store.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range list {
				if l.ID == tun.ID {
					checkTunnel(t, "List", tun, l)
				}
			}
			found, _, err := s.FindByToken(ctx, tun.Source.TokenHash)
			if err != nil {
				t.Fatal(err)
			}
			checkTunnel(t, "FindByToken", tun, found)
		})
	}
	// Two tunnels without a destination hash do not collide.
	a, b := newTunnel("nohash-a", base), newTunnel("nohash-b", base)
	a.Destination.TokenHash, b.Destination.TokenHash = nil, []byte{}
	mustCreate(t, s, a)
	mustCreate(t, s, b)
}

func testDelete(t *testing.T, s store.Store) {
	keep, del := newTunnel("keep", base), newTunnel("del", base)
	mustCreate(t, s, keep)
	mustCreate(t, s, del)
	if err := s.Delete(ctx, "del"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "del"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get after Delete = %v, want ErrNotFound", err)
	}
	if _, _, err := s.FindByToken(ctx, del.Source.TokenHash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("FindByToken after Delete = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "del"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second Delete = %v, want ErrNotFound", err)
	}
	checkTunnel(t, "other tunnel", keep, mustGet(t, s, "keep"))
	// The ID and hashes are free again.
	mustCreate(t, s, del)
}

func testListEmpty(t *testing.T, s store.Store) {
	for _, opts := range []store.ListOptions{{}, {Limit: 10}, {ThingName: "x", Limit: 1}} {
		got, next, err := s.List(ctx, opts)
		if err != nil || len(got) != 0 || next != "" {
			t.Errorf("List(%+v) on an empty store = %d tunnels, %q, %v", opts, len(got), next, err)
		}
	}
}

// createMany creates n tunnels in a scrambled order, with creation times
// that tie in threes (so the ID breaks ties) and alternating thing names,
// and returns them newest first, as List must.
func createMany(t *testing.T, s store.Store, n int) []*store.Tunnel {
	t.Helper()
	tuns := make([]*store.Tunnel, n)
	for i := range n {
		tun := newTunnel(fmt.Sprintf("list-%02d", i), base.Add(time.Duration(i/3)*time.Millisecond))
		tun.ThingName = []string{"thing-a", "thing-b"}[i%2]
		tuns[i] = tun
	}
	for _, j := range scramble(n) {
		mustCreate(t, s, tuns[j])
	}
	slices.SortFunc(tuns, func(a, b *store.Tunnel) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	return tuns
}

// scramble returns 0..n-1 in a fixed, non-monotonic order.
func scramble(n int) []int {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = (i*7 + 3) % n
	}
	if n%7 == 0 { // keep it a permutation
		for i := range idx {
			idx[i] = n - 1 - i
		}
	}
	return idx
}

func ids(ts []*store.Tunnel) []string {
	var out []string // nil for none, like the wants it is compared with
	for _, t := range ts {
		out = append(out, t.ID)
	}
	return out
}

// pageAll lists everything matching opts page by page and returns the
// pages' sizes and the concatenation.
func pageAll(t *testing.T, s store.Store, opts store.ListOptions) (sizes []int, all []*store.Tunnel) {
	t.Helper()
	for page := 0; ; page++ {
		if page > 100 {
			t.Fatal("List never returned an empty cursor")
		}
		got, next, err := s.List(ctx, opts)
		if err != nil {
			t.Fatalf("List(%+v): %v", opts, err)
		}
		sizes = append(sizes, len(got))
		all = append(all, got...)
		if next == "" {
			return sizes, all
		}
		opts.Cursor = next
	}
}

func testListPaging(t *testing.T, s store.Store) {
	want := createMany(t, s, 25)
	sizes, all := pageAll(t, s, store.ListOptions{Limit: 10})
	if d := cmp.Diff([]int{10, 10, 5}, sizes); d != "" {
		t.Errorf("page sizes (-want +got):\n%s", d)
	}
	if d := cmp.Diff(ids(want), ids(all)); d != "" {
		t.Errorf("paged IDs, newest first (-want +got):\n%s", d)
	}
	for i := range all {
		checkTunnel(t, "listed "+all[i].ID, want[i], all[i])
	}
	tests := []struct {
		limit int
		sizes []int
	}{
		{0, []int{25}},
		{1, slices.Repeat([]int{1}, 25)},
		{5, []int{5, 5, 5, 5, 5}}, // exact multiple: no empty last page
		{25, []int{25}},
		{26, []int{25}},
		{1000, []int{25}},
	}
	for _, tt := range tests {
		sizes, all := pageAll(t, s, store.ListOptions{Limit: tt.limit})
		if d := cmp.Diff(tt.sizes, sizes); d != "" {
			t.Errorf("Limit %d: page sizes (-want +got):\n%s", tt.limit, d)
		}
		if d := cmp.Diff(ids(want), ids(all)); d != "" {
			t.Errorf("Limit %d: IDs (-want +got):\n%s", tt.limit, d)
		}
	}
}

func testListFilter(t *testing.T, s store.Store) {
	all := createMany(t, s, 25)
	for _, thing := range []string{"thing-a", "thing-b", "thing-none"} {
		var want []string
		for _, tun := range all {
			if tun.ThingName == thing {
				want = append(want, tun.ID)
			}
		}
		for _, limit := range []int{0, 4, 10} {
			_, got := pageAll(t, s, store.ListOptions{ThingName: thing, Limit: limit})
			if d := cmp.Diff(want, ids(got)); d != "" {
				t.Errorf("ThingName %s, Limit %d (-want +got):\n%s", thing, limit, d)
			}
		}
	}
}

func testListStableUnderInserts(t *testing.T, s store.Store) {
	want := createMany(t, s, 12)
	first, next, err := s.List(ctx, store.ListOptions{Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	// Newer tunnels and one that sorts into an already-listed position
	// arrive between pages; they must not shift the later pages.
	mustCreate(t, s, newTunnel("newest", base.Add(time.Hour)))
	mustCreate(t, s, newTunnel("list-99", want[0].CreatedAt))
	_, tail := pageAll(t, s, store.ListOptions{Limit: 5, Cursor: next})
	got := append(first, tail...)
	if d := cmp.Diff(ids(want), ids(got)); d != "" {
		t.Errorf("pages around inserts (-want +got):\n%s", d)
	}
}

func testListBadCursor(t *testing.T, s store.Store) {
	createMany(t, s, 3)
	for _, c := range []string{"!!!", "AAAA", "not base64 at all", "%"} {
		if _, _, err := s.List(ctx, store.ListOptions{Cursor: c}); !errors.Is(err, store.ErrInvalidCursor) {
			t.Errorf("List(cursor %q) = %v, want ErrInvalidCursor", c, err)
		}
	}
}

func testCountOpen(t *testing.T, s store.Store) {
	count := func(want int) {
		t.Helper()
		if n, err := s.CountOpen(ctx); err != nil || n != want {
			t.Errorf("CountOpen = %d, %v; want %d", n, err, want)
		}
	}
	count(0)
	for i := range 7 {
		tun := newTunnel(fmt.Sprintf("c%d", i), base)
		if i >= 4 {
			tun.Status, tun.ClosedAt = store.StatusClosed, base.Add(time.Minute)
		}
		mustCreate(t, s, tun)
	}
	count(4)
	if _, err := s.Update(ctx, "c0", func(t *store.Tunnel) error {
		t.Status, t.ClosedAt = store.StatusClosed, base.Add(time.Hour)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	count(3)
	if err := s.Delete(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	count(2)
	if err := s.Delete(ctx, "c5"); err != nil { // a closed one
		t.Fatal(err)
	}
	count(2)
}

func testOpenExpiringBefore(t *testing.T, s store.Store) {
	cut := base.Add(24 * time.Hour)
	tests := []struct {
		id      string
		expires time.Time
		closed  bool
		want    bool
	}{
		{"long-ago", cut.Add(-48 * time.Hour), false, true},
		{"just-before", cut.Add(-time.Millisecond), false, true},
		{"at", cut, false, false}, // strictly before
		{"after", cut.Add(time.Millisecond), false, false},
		{"closed-expired", cut.Add(-time.Hour), true, false},
		{"far-after", cut.Add(1000 * time.Hour), false, false},
	}
	want := map[string]*store.Tunnel{}
	for _, tt := range tests {
		tun := newTunnel(tt.id, base)
		tun.ExpiresAt = tt.expires
		if tt.closed {
			tun.Status, tun.ClosedAt = store.StatusClosed, base
		}
		mustCreate(t, s, tun)
		if tt.want {
			want[tt.id] = tun
		}
	}
	got, err := s.OpenExpiringBefore(ctx, cut)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("OpenExpiringBefore = %v, want %d tunnels", ids(got), len(want))
	}
	for _, g := range got {
		w, ok := want[g.ID]
		if !ok {
			t.Errorf("OpenExpiringBefore returned %s (expires %v)", g.ID, g.ExpiresAt)
			continue
		}
		checkTunnel(t, "expiring "+g.ID, w, g)
	}
	if got, err := s.OpenExpiringBefore(ctx, base.Add(-100*time.Hour)); err != nil || len(got) != 0 {
		t.Errorf("OpenExpiringBefore(long before everything) = %v, %v", ids(got), err)
	}
}

func testDeleteClosedBefore(t *testing.T, s store.Store) {
	cut := base.Add(24 * time.Hour)
	tests := []struct {
		id      string
		closed  time.Time // zero: open
		deleted bool
	}{
		{"closed-old", cut.Add(-48 * time.Hour), true},
		{"closed-just-before", cut.Add(-time.Millisecond), true},
		{"closed-at", cut, false}, // strictly before
		{"closed-after", cut.Add(time.Hour), false},
		{"open-old", time.Time{}, false},
	}
	for _, tt := range tests {
		tun := newTunnel(tt.id, base.Add(-100*time.Hour))
		if !tt.closed.IsZero() {
			tun.Status, tun.ClosedAt = store.StatusClosed, tt.closed
		}
		tun.ExpiresAt = base.Add(-99 * time.Hour) // expired, but open ones stay
		mustCreate(t, s, tun)
	}
	n, err := s.DeleteClosedBefore(ctx, cut)
	if err != nil || n != 2 {
		t.Fatalf("DeleteClosedBefore = %d, %v; want 2", n, err)
	}
	for _, tt := range tests {
		_, err := s.Get(ctx, tt.id)
		if tt.deleted && !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get(%s) = %v, want ErrNotFound", tt.id, err)
		}
		if !tt.deleted && err != nil {
			t.Errorf("Get(%s) = %v, want it kept", tt.id, err)
		}
	}
	if n, err := s.DeleteClosedBefore(ctx, cut); err != nil || n != 0 {
		t.Errorf("second DeleteClosedBefore = %d, %v; want 0", n, err)
	}
}

func testCanceledContext(t *testing.T, s store.Store) {
	mustCreate(t, s, newTunnel("ctx", base))
	c, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Get(c, "ctx"); err == nil {
		t.Error("Get with a canceled context succeeded")
	}
	called := false
	if _, err := s.Update(c, "ctx", func(t *store.Tunnel) error { called = true; t.Description = "x"; return nil }); err == nil {
		t.Error("Update with a canceled context succeeded")
	}
	if err := s.Create(c, newTunnel("ctx2", base)); err == nil {
		t.Error("Create with a canceled context succeeded")
	}
	if got := mustGet(t, s, "ctx"); got.Description == "x" {
		t.Errorf("Update with a canceled context wrote (fn called: %v)", called)
	}
	// The store still works afterwards.
	mustCreate(t, s, newTunnel("ctx3", base))
}

func testCloseIdempotent(t *testing.T, s store.Store) {
	mustCreate(t, s, newTunnel("close", base))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := s.Get(ctx, "close"); err == nil {
		t.Error("Get after Close succeeded")
	}
}

// testResetConnections: every connected end, of open and closed tunnels,
// becomes disconnected as of the given time; other ends keep their
// UpdatedAt; the tokens and bindings are untouched.
func testResetConnections(t *testing.T, s store.Store) {
	if n, err := s.ResetConnections(ctx, base); err != nil || n != 0 {
		t.Fatalf("ResetConnections on an empty store = %d, %v; want 0, nil", n, err)
	}
	both := newTunnel("both", base)
	both.Source.Connected, both.Destination.Connected = true, true
	both.Source.ClientTokenHash = bytesOf(7)
	dstOnly := newTunnel("dst-only", base)
	dstOnly.Destination.Connected = true
	dstOnly.Status, dstOnly.ClosedAt = store.StatusClosed, base.Add(time.Minute)
	none := newTunnel("none", base)
	for _, tun := range []*store.Tunnel{both, dstOnly, none} {
		mustCreate(t, s, tun)
	}
	at := base.Add(time.Hour)
	if n, err := s.ResetConnections(ctx, at); err != nil || n != 3 {
		t.Fatalf("ResetConnections = %d, %v; want 3 ends, nil", n, err)
	}
	both.Source.Connected, both.Destination.Connected = false, false
	both.Source.UpdatedAt, both.Destination.UpdatedAt = at, at
	dstOnly.Destination.Connected, dstOnly.Destination.UpdatedAt = false, at
	for _, want := range []*store.Tunnel{both, dstOnly, none} {
		got, err := s.Get(ctx, want.ID)
		if err != nil {
			t.Fatal(err)
		}
		checkTunnel(t, "after ResetConnections", want, got)
	}
	if n, err := s.ResetConnections(ctx, at.Add(time.Hour)); err != nil || n != 0 {
		t.Fatalf("second ResetConnections = %d, %v; want 0, nil", n, err)
	}
}

func bytesOf(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }
