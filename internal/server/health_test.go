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
	"testing"
	"time"

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
	if !errors.Is(err, sqlite.ErrDamaged) || !strings.Contains(err.Error(), "backup") || !strings.Contains(err.Error(), "--skip-db-check") {
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
