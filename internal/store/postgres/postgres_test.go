package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/store/storetest"
	"github.com/sectun/sectun/internal/testing/pgtest"
)

// TestMain stops the throwaway cluster pgtest may have started.
func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.Wrap(m)) }

const dsnEnv = pgtest.DSNEnv

// testDSN returns the test server's DSN: SECTUN_TEST_POSTGRES_DSN, or a
// throwaway cluster pgtest starts; it skips only when PostgreSQL is not
// installed.
func testDSN(t testing.TB) string { return pgtest.Start(t) }

// freshSchema creates an empty schema that is dropped when the test ends,
// and returns dsn with search_path set to it, and an admin connection.
func freshSchema(t testing.TB, dsn string) (string, *pgx.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to %s: %v", dsnEnv, err)
	}
	var b [6]byte
	rand.Read(b[:])
	schema := "sectun_test_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec(ctx, `CREATE SCHEMA `+schema); err != nil {
		admin.Close(ctx)
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.Exec(ctx, `DROP SCHEMA `+schema+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
		admin.Close(ctx)
	})
	return withSearchPath(t, dsn, schema), admin
}

func withSearchPath(t testing.TB, dsn, schema string) string {
	if strings.Contains(dsn, "://") {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatalf("%s is not a valid URL", dsnEnv) // the DSN holds a password: don't print it
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + schema
}

func openStore(t testing.TB, dsn string) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, dsn)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	dsn := testDSN(t)
	storetest.Run(t, func(t *testing.T) store.Store {
		d, _ := freshSchema(t, dsn)
		return openStore(t, d)
	})
}

func tunnel(id string) *store.Tunnel {
	tun, _, _ := storetest.NewTunnel(id, time.Now())
	return tun
}

// connect opens a connection to dsn, closed when the test ends, and
// returns it with a context for its queries.
func connect(t *testing.T, dsn string) (context.Context, *pgx.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to %s: %v", dsnEnv, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return ctx, conn
}

// ddlState returns the recorded schema version and a fingerprint of
// every relation's OID and column list, which any DDL would change.
func ddlState(t *testing.T, dsn string) (int, string) {
	t.Helper()
	ctx, conn := connect(t, dsn)
	schema := schemaOf(dsn)
	var version int
	if err := conn.QueryRow(ctx, `SELECT version FROM `+schema+`.schema_version`).Scan(&version); err != nil {
		t.Fatal(err)
	}
	var fp string
	err := conn.QueryRow(ctx, `SELECT coalesce(string_agg(c.oid::text || ':' || c.relname || ':' || a.attname, ',' ORDER BY c.oid, a.attnum), '')
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
		WHERE n.nspname = $1`, schema).Scan(&fp)
	if err != nil {
		t.Fatal(err)
	}
	return version, fp
}

func schemaOf(dsn string) string {
	u, _ := url.Parse(dsn)
	if u != nil && u.Query().Get("search_path") != "" {
		return u.Query().Get("search_path")
	}
	_, s, _ := strings.Cut(dsn, "search_path=")
	return s
}

func TestReopen(t *testing.T) {
	base := testDSN(t)
	storetest.RunReopen(t, storetest.Reopener{
		Fresh: func(t *testing.T) string {
			dsn, _ := freshSchema(t, base)
			return dsn
		},
		Open: func(ctx context.Context, dsn string) (store.Store, error) {
			return Open(ctx, dsn)
		},
		Version: len(migrations),
		Schema:  ddlState,
		SetVersion: func(t *testing.T, dsn string, version int) {
			ctx, conn := connect(t, dsn)
			if _, err := conn.Exec(ctx, `UPDATE `+schemaOf(dsn)+`.schema_version SET version = $1`, version); err != nil {
				t.Fatal(err)
			}
		},
	})
}

func TestOpenErrorHidesPassword(t *testing.T) {
	dsn := testDSN(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Skip("DSN is not a URL")
	}
	u.User = url.UserPassword("sectun", "wrong-password-XYZZY")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, u.String())
	if err == nil {
		s.Close()
		t.Fatal("Open with a wrong password succeeded")
	}
	if strings.Contains(err.Error(), "XYZZY") {
		t.Errorf("error shows the password: %v", err)
	}
}

// TestHashesOnly reads the tables directly: token columns hold 32-byte
// hashes only.
func TestHashesOnly(t *testing.T) {
	ctx := context.Background()
	dsn, admin := freshSchema(t, testDSN(t))
	schema := schemaOf(dsn)
	s := openStore(t, dsn)
	defer s.Close()
	for i := range 5 {
		if err := s.Create(ctx, tunnel(fmt.Sprintf("t%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	var rows, ok, tokens, tokensOK int
	if err := admin.QueryRow(ctx, `SELECT count(*),
		count(*) FILTER (WHERE octet_length(src_token_hash) = 32 AND octet_length(dst_token_hash) = 32)
		FROM `+schema+`.tunnels`).Scan(&rows, &ok); err != nil {
		t.Fatal(err)
	}
	if err := admin.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE octet_length(hash) = 32)
		FROM `+schema+`.tokens`).Scan(&tokens, &tokensOK); err != nil {
		t.Fatal(err)
	}
	if rows != 5 || ok != 5 || tokens != 10 || tokensOK != 10 {
		t.Errorf("tunnels %d (%d with 32-byte hashes), tokens %d (%d 32-byte); want 5, 5, 10, 10", rows, ok, tokens, tokensOK)
	}
	// The database refuses anything else even when written behind the
	// store's back.
	_, err := admin.Exec(ctx, `INSERT INTO `+schema+`.tokens (hash, tunnel_id, mode) VALUES ($1, 't0', 'source')`, []byte("plaintext-token"))
	if err == nil {
		t.Error("tokens accepted a 15-byte hash")
	}
}

func TestCanceledUpdateReleasesLock(t *testing.T) {
	// An Update whose context ends while it waits for the row lock gives
	// up; the holder's write lands.
	ctx := context.Background()
	dsn, _ := freshSchema(t, testDSN(t))
	s := openStore(t, dsn)
	defer s.Close()
	if err := s.Create(ctx, tunnel("lock")); err != nil {
		t.Fatal(err)
	}
	holding := make(chan struct{})
	release := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := s.Update(ctx, "lock", func(t *store.Tunnel) error {
			close(holding)
			<-release
			t.Description = "holder"
			return nil
		})
		done <- err
	}()
	<-holding
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err := s.Update(wctx, "lock", func(t *store.Tunnel) error { t.Description = "waiter"; return nil })
	cancel()
	if err == nil || !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "cancel") {
		t.Errorf("waiting Update = %v, want a deadline error", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "lock")
	if err != nil || got.Description != "holder" {
		t.Errorf("Get = %+v, %v; want the holder's write", got, err)
	}
}

func TestClusterConformance(t *testing.T) {
	dsn := testDSN(t)
	storetest.RunCluster(t, func(t *testing.T, n int) []store.ClusterStore {
		d, _ := freshSchema(t, dsn)
		out := make([]store.ClusterStore, n)
		for i := range out {
			out[i] = openStore(t, d)
		}
		return out
	})
}
