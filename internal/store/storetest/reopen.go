package storetest

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/store"
)

// Reopener describes a backend whose data outlives a Store (a database
// file, a PostgreSQL schema), for RunReopen.
type Reopener struct {
	// Fresh returns a new, empty location for t (a file path, a DSN with
	// a schema of its own), removed by t's cleanups.
	Fresh func(t *testing.T) string
	// Open opens a Store at loc, applying the migrations it needs.
	Open func(ctx context.Context, loc string) (store.Store, error)
	// Version is the schema version the backend's migrations reach.
	Version int
	// Schema reads, behind the store's back, the schema version recorded
	// at loc and a fingerprint of the schema that any DDL changes.
	Schema func(t *testing.T, loc string) (version int, fingerprint string)
	// SetVersion records version at loc behind the store's back.
	SetVersion func(t *testing.T, loc string, version int)
}

// RunReopen checks what the backend keeps across a Close and a new Open:
// the tunnels and their token lookups, a schema left alone by reopening
// (no DDL once current), migrations applied once when several Opens race
// on a new location, and a schema newer than the code refused with an
// error that says so.
func RunReopen(t *testing.T, r Reopener) {
	t.Run("Reopen", func(t *testing.T) { testReopen(t, r) })
	t.Run("OpenConcurrently", func(t *testing.T) { testOpenConcurrently(t, r) })
	t.Run("NewerSchemaRefused", func(t *testing.T) { testNewerSchemaRefused(t, r) })
}

func (r Reopener) open(t *testing.T, loc string) store.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := r.Open(ctx, loc)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func testReopen(t *testing.T, r Reopener) {
	loc := r.Fresh(t)
	s := r.open(t, loc)
	tun := newTunnel("persist", time.Now())
	mustCreate(t, s, tun)
	updated, err := s.Update(ctx, "persist", func(t *store.Tunnel) error {
		t.Source.Connected = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	v1, fp1 := r.Schema(t, loc)
	if v1 != r.Version {
		t.Fatalf("schema version %d, want %d", v1, r.Version)
	}
	for i := range 3 {
		s := r.open(t, loc)
		got, err := s.Get(ctx, "persist")
		if err != nil {
			t.Fatalf("reopen %d: Get: %v", i, err)
		}
		if !got.Source.Connected {
			t.Errorf("reopen %d: the update was not persisted: %+v", i, got)
		}
		checkTunnel(t, "after reopen", updated, got)
		for _, want := range []struct {
			hash []byte
			mode store.Mode
		}{{tun.Source.TokenHash, store.ModeSource}, {tun.Destination.TokenHash, store.ModeDestination}} {
			if _, mode, err := s.FindByToken(ctx, want.hash); err != nil || mode != want.mode {
				t.Errorf("reopen %d: FindByToken: %q %v, want %q", i, mode, err, want.mode)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if v, fp := r.Schema(t, loc); v != v1 || fp != fp1 {
			t.Errorf("reopen %d changed the schema: version %d -> %d, fingerprint\n%s\n->\n%s", i, v1, v, fp1, fp)
		}
	}
}

// testOpenConcurrently: several processes (here: Stores) opening a new
// location at once apply the migrations exactly once.
func testOpenConcurrently(t *testing.T, r Reopener) {
	loc := r.Fresh(t)
	var wg sync.WaitGroup
	stores := make([]store.Store, 4)
	errs := make([]error, 4)
	for i := range stores {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			stores[i], errs[i] = r.Open(ctx, loc)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Open %d: %v", i, err)
			continue
		}
		stores[i].Close()
	}
	if v, _ := r.Schema(t, loc); v != r.Version {
		t.Errorf("schema version %d after concurrent Opens, want %d", v, r.Version)
	}
}

func testNewerSchemaRefused(t *testing.T, r Reopener) {
	loc := r.Fresh(t)
	if err := r.open(t, loc).Close(); err != nil {
		t.Fatal(err)
	}
	r.SetVersion(t, loc, r.Version+1)
	s, err := r.Open(ctx, loc)
	if err == nil {
		s.Close()
		t.Fatal("Open of a newer schema succeeded")
	}
	if !strings.Contains(err.Error(), "newer") {
		t.Errorf("error does not say why: %v", err)
	}
}
