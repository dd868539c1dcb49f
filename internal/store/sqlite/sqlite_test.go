package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/store/sqlite/sqlitetest"
	"github.com/sectun/sectun/internal/store/storetest"
	"github.com/sectun/sectun/internal/token"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func openFile(t testing.TB, path string) *Store {
	t.Helper()
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openFile(t, filepath.Join(t.TempDir(), "tunneld.db"))
	})
}

func TestConformanceMemory(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openFile(t, Memory) })
}

func tunnel(id string) (*store.Tunnel, string, string) { return storetest.NewTunnel(id, time.Now()) }

// rawDB opens the file directly, bypassing Store, read-only.
func rawDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_pragma=query_only(1)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestReopen(t *testing.T) {
	storetest.RunReopen(t, storetest.Reopener{
		Fresh: func(t *testing.T) string { return filepath.Join(t.TempDir(), "tunneld.db") },
		Open: func(ctx context.Context, path string) (store.Store, error) {
			return Open(ctx, path)
		},
		Version: len(migrations),
		// SQLite's schema cookie changes with any DDL.
		Schema: func(t *testing.T, path string) (version int, fingerprint string) {
			db := rawDB(t, path)
			defer db.Close()
			var cookie int
			if err := db.QueryRow(`PRAGMA schema_version`).Scan(&cookie); err != nil {
				t.Fatal(err)
			}
			if err := db.QueryRow(`SELECT version FROM schema_version`).Scan(&version); err != nil {
				t.Fatal(err)
			}
			return version, fmt.Sprintf("schema cookie %d", cookie)
		},
		SetVersion: func(t *testing.T, path string, version int) {
			db, err := sql.Open("sqlite", path)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if _, err := db.Exec(`UPDATE schema_version SET version = ?`, version); err != nil {
				t.Fatal(err)
			}
		},
	})
}

// TestJournalModeWAL: WAL mode is persistent in the file, so it holds for
// readers that open the file directly.
func TestJournalModeWAL(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tunneld.db")
	for range 2 { // a new file, then a reopened one
		if err := openFile(t, path).Close(); err != nil {
			t.Fatal(err)
		}
		var mode string
		if err := rawDB(t, path).QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
			t.Errorf("journal_mode = %q, %v; want wal", mode, err)
		}
	}
}

func TestOpenBadPath(t *testing.T) {
	for _, p := range []string{"", "a?b", "file:x.db", filepath.Join(t.TempDir(), "missing-dir", "x.db")} {
		if s, err := Open(context.Background(), p); err == nil {
			s.Close()
			t.Errorf("Open(%q) succeeded", p)
		}
	}
}

// TestNoPlaintextTokens reads the database file and its table directly:
// the token columns hold 32-byte SHA-256 hashes and no plaintext token
// appears anywhere in the files.
func TestNoPlaintextTokens(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "tunneld.db")
	s := openFile(t, path)
	var plains []string
	for i := range 10 {
		tun, src, dst := tunnel(fmt.Sprintf("t%d", i))
		client := token.NewClientToken()
		tun.Source.ClientTokenHash = token.Hash(client)
		if err := s.Create(ctx, tun); err != nil {
			t.Fatal(err)
		}
		plains = append(plains, src, dst, client)
	}
	// Reads go through WAL and the main file; check both before and after
	// a checkpoint.
	check := func(when string) {
		db := rawDB(t, path)
		rows, err := db.Query(`SELECT id, src_token_hash, dst_token_hash, src_client_token_hash,
			typeof(src_token_hash), typeof(dst_token_hash) FROM tunnels`)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rows.Next() {
			var id, ts, td string
			var src, dst, client []byte
			if err := rows.Scan(&id, &src, &dst, &client, &ts, &td); err != nil {
				t.Fatal(err)
			}
			n++
			if ts != "blob" || td != "blob" || len(src) != 32 || len(dst) != 32 || len(client) != 32 {
				t.Errorf("%s: %s: token columns %s/%s of %d/%d/%d bytes, want 32-byte blobs", when, id, ts, td, len(src), len(dst), len(client))
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		if n != 10 {
			t.Errorf("%s: %d rows", when, n)
		}
		var tokens, hashes32 int
		if err := db.QueryRow(`SELECT count(*), count(CASE WHEN typeof(hash) = 'blob' AND length(hash) = 32 THEN 1 END)
			FROM tokens`).Scan(&tokens, &hashes32); err != nil {
			t.Fatal(err)
		}
		if tokens != 20 || hashes32 != 20 {
			t.Errorf("%s: tokens table: %d rows, %d of them 32-byte blobs; want 20, 20", when, tokens, hashes32)
		}
		db.Close()
		files, _ := filepath.Glob(path + "*")
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range plains {
				if bytes.Contains(b, []byte(p)) {
					t.Errorf("%s: %s holds a plaintext token", when, filepath.Base(f))
				}
			}
		}
	}
	check("open")
	if err := s.Close(); err != nil { // checkpoints the WAL into the file
		t.Fatal(err)
	}
	check("closed")
}

// TestQueryPlans checks the query plans of the hot lookups: no
// full scans of tunnels.
func TestQueryPlans(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "tunneld.db"))
	defer s.Close()
	h := make([]byte, 32)
	tests := []struct {
		name  string
		query string
		args  []any
	}{
		{"FindByToken", selectByToken, []any{h}},
		{"Get", selectByID, []any{"x"}},
		{"List page", `SELECT ` + columns + ` FROM tunnels WHERE (created_at, id) < (?, ?) ORDER BY created_at DESC, id DESC LIMIT 11`, []any{1, "x"}},
		{"List thing", `SELECT ` + columns + ` FROM tunnels WHERE thing_name = ? ORDER BY created_at DESC, id DESC LIMIT 11`, []any{"x"}},
		{"OpenExpiringBefore", `SELECT ` + columns + ` FROM tunnels WHERE status = 'OPEN' AND expires_at < ? ORDER BY expires_at, id`, []any{1}},
		{"DeleteClosedBefore", `SELECT id FROM tunnels WHERE status = 'CLOSED' AND closed_at < ?`, []any{1}},
		{"token rows of a tunnel", `SELECT hash FROM tokens WHERE tunnel_id = ? AND mode = ?`, []any{"x", "source"}},
	}
	for _, tt := range tests {
		rows, err := s.r.Query(`EXPLAIN QUERY PLAN `+tt.query, tt.args...)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, notused int
			var detail string
			if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		joined := strings.Join(plan, "; ")
		if strings.Contains(joined, "SCAN tunnels") && !strings.Contains(joined, "USING INDEX") {
			t.Errorf("%s: full table scan: %s", tt.name, joined)
		}
		if strings.Contains(joined, "USE TEMP B-TREE") {
			t.Errorf("%s: sorts in a temp b-tree: %s", tt.name, joined)
		}
		t.Logf("%s: %s", tt.name, joined)
	}
}

// TestConcurrentWritersNoBusy hammers the store with writers and readers:
// no SQLITE_BUSY (or any other error) may surface.
func TestConcurrentWritersNoBusy(t *testing.T) {
	ctx := context.Background()
	s := openFile(t, filepath.Join(t.TempDir(), "tunneld.db"))
	defer s.Close()
	var wg sync.WaitGroup
	errc := make(chan error, 1000)
	for w := range 8 {
		wg.Go(func() {
			for i := range 20 {
				tun, _, _ := tunnel(fmt.Sprintf("w%d-%d", w, i))
				if err := s.Create(ctx, tun); err != nil {
					errc <- err
					return
				}
				if _, err := s.Update(ctx, tun.ID, func(t *store.Tunnel) error { t.Source.Connected = true; return nil }); err != nil {
					errc <- err
					return
				}
				if _, _, err := s.List(ctx, store.ListOptions{Limit: 5}); err != nil {
					errc <- err
					return
				}
				if _, _, err := s.FindByToken(ctx, tun.Destination.TokenHash); err != nil {
					errc <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if n, err := s.CountOpen(ctx); err != nil || n != 160 {
		t.Errorf("CountOpen = %d, %v; want 160", n, err)
	}
}

func TestInMemoryIsPrivate(t *testing.T) {
	ctx := context.Background()
	a, b := openFile(t, Memory), openFile(t, Memory)
	defer a.Close()
	defer b.Close()
	tun, _, _ := tunnel("x")
	if err := a.Create(ctx, tun); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "x"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second in-memory store sees the first's tunnel: %v", err)
	}
}

// TestDamagedFile: a damaged inner page of the tunnels table is found by
// QuickCheck (with what to do), and reads that meet it report Damaged.
func TestDamagedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tunneld.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		tun, _, _ := tunnel(fmt.Sprintf("t%03d", i))
		if err := s.Create(context.Background(), tun); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.QuickCheck(context.Background()); err != nil {
		t.Fatalf("QuickCheck of a sound file: %v", err)
	}
	s.Close()
	sqlitetest.DamageInnerPage(t, path, "tunnels")

	s, err = OpenWith(context.Background(), path, Options{})
	if err != nil {
		t.Fatalf("the damaged file does not open: %v", err)
	}
	defer s.Close()
	err = s.QuickCheck(context.Background())
	if !errors.Is(err, ErrDamaged) || !Damaged(err) || !strings.Contains(err.Error(), ".recover") || !strings.Contains(err.Error(), "backup") {
		t.Fatalf("QuickCheck = %v; want ErrDamaged with how to restore or recover", err)
	}
	t.Logf("QuickCheck: %v", err)
	_, err = s.Get(context.Background(), "t150")
	if err == nil || !Damaged(err) {
		t.Fatalf("Get on the damaged table = %v; want an error Damaged reports", err)
	}
}

// TestEmptyFileRefused: an existing zero-byte file is not opened as a new
// database unless allowed.
func TestEmptyFileRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tunneld.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := OpenWith(context.Background(), path, Options{})
	if !errors.Is(err, ErrEmptyFile) || !strings.Contains(err.Error(), "--allow-empty-db") || !strings.Contains(err.Error(), "backup") {
		t.Fatalf("OpenWith(empty file) = %v; want ErrEmptyFile saying what to do", err)
	}
	s, err := OpenWith(context.Background(), path, Options{AllowEmptyFile: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	// A path that does not exist yet is a new database, as before.
	s, err = OpenWith(context.Background(), filepath.Join(t.TempDir(), "new.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
}
