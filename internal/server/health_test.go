package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/store/sqlite"
	"github.com/sectun/sectun/internal/store/sqlite/sqlitetest"
	"github.com/sectun/sectun/internal/store/storetest"
)

// damagedDataDir returns a data directory whose tunneld.db holds 300
// tunnels and has a damaged inner page of the tunnels table.
func damagedDataDir(t *testing.T) string {
	dir := t.TempDir()
	path := filepath.Join(dir, "tunneld.db")
	st, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		tun, _, _ := storetest.NewTunnel(fmt.Sprintf("t%03d", i), time.Now())
		if err := st.Create(context.Background(), tun); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	sqlitetest.DamageInnerPage(t, path, "tunnels")
	return dir
}

// TestDamagedDatabase: a damaged inner page used to leave tunneld
// "healthy" (its /healthz count is served by an index) while every call
// answered 500. The start-up check refuses the file, saying what to do;
// started anyway (--skip-db-check), /healthz answers 503 with the reason
// and the fix, and the damage is logged once with the fix.
func TestDamagedDatabase(t *testing.T) {
	dir := damagedDataDir(t)
	cfg := Config{Listen: "127.0.0.1:0", DataDir: dir, Plaintext: true, NoAuth: true, MQTT: MQTTConfig{Off: true}}
	_, err := New(context.Background(), cfg)
	if !errors.Is(err, sqlite.ErrDamaged) || !strings.Contains(err.Error(), "backup") || !strings.Contains(err.Error(), "SkipDBCheck") {
		t.Fatalf("New on a damaged file: %v; want ErrDamaged saying what to do", err)
	}

	var logs syncWriter
	ts := newTestServer(t, func(c *Config) {
		c.DataDir, c.NoAuth, c.SkipDBCheck = dir, true, true
		c.Logger = slogTo(&logs)
	})
	resp, err := http.Get(ts.URL() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "damaged") || !strings.Contains(string(body), "backup") {
		t.Fatalf("/healthz on a damaged database: %d %q; want 503 with the reason and the fix", resp.StatusCode, body)
	}
	if n := strings.Count(logs.String(), "storage is damaged"); n != 1 {
		t.Errorf("damage logged %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "restore") {
		t.Errorf("the log does not say what to do:\n%s", logs.String())
	}
}

// TestEmptyDatabaseFile: a zero-byte tunneld.db is refused unless
// AllowEmptyDB.
func TestEmptyDatabaseFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tunneld.db"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Listen: "127.0.0.1:0", DataDir: dir, Plaintext: true, NoAuth: true, MQTT: MQTTConfig{Off: true}}
	if _, err := New(context.Background(), cfg); !errors.Is(err, sqlite.ErrEmptyFile) || !strings.Contains(err.Error(), "--allow-empty-db") {
		t.Fatalf("New on a zero-byte database: %v; want ErrEmptyFile naming --allow-empty-db", err)
	}
	cfg.AllowEmptyDB = true
	srv, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
}

// failingStore fails Get with err while it is set.
type failingStore struct {
	store.Store
	mu  sync.Mutex
	err error
}

func (f *failingStore) Get(ctx context.Context, id string) (*store.Tunnel, error) {
	f.mu.Lock()
	err := f.err
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return f.Store.Get(ctx, id)
}

// TestHealthProbe: the probe's answer is reused for healthProbeInterval;
// an ordinary failure clears when the store recovers, damage stays.
func TestHealthProbe(t *testing.T) {
	mem, err := sqlite.Open(context.Background(), sqlite.Memory)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	fs := &failingStore{Store: mem}
	now := time.Now()
	h := &storeHealth{st: fs, damaged: sqlite.Damaged, advice: "restore it", log: slogTo(io.Discard), now: func() time.Time { return now }}
	set := func(err error) { fs.mu.Lock(); fs.err = err; fs.mu.Unlock() }

	if err := h.status(context.Background()); err != nil {
		t.Fatalf("healthy store: %v", err)
	}
	set(errors.New("disk I/O error"))
	if err := h.status(context.Background()); err != nil {
		t.Fatalf("within the probe interval the cached answer is used, got %v", err)
	}
	now = now.Add(healthProbeInterval)
	if err := h.status(context.Background()); err == nil || !strings.Contains(err.Error(), "disk I/O error") {
		t.Fatalf("failing store: %v", err)
	}
	set(nil)
	now = now.Add(healthProbeInterval)
	if err := h.status(context.Background()); err != nil {
		t.Fatalf("recovered store: %v", err)
	}
	set(fmt.Errorf("sqlite: get: %w", sqlite.ErrDamaged))
	now = now.Add(healthProbeInterval)
	if err := h.status(context.Background()); err == nil || !strings.Contains(err.Error(), "damaged") || !strings.Contains(err.Error(), "restore it") {
		t.Fatalf("damaged store: %v", err)
	}
	set(nil)
	now = now.Add(healthProbeInterval)
	if err := h.status(context.Background()); err == nil {
		t.Fatal("damage must stay reported")
	}
}
