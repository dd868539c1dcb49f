package pgtest

import (
	"context"
	"errors"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(Wrap(m)) }

func query(t *testing.T, dsn, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(context.Background())
	var s string
	if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func execSQL(t *testing.T, dsn, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestStartWhereInstalled: with the override unset and the server
// binaries installed, Start runs a cluster (it does not skip), and the
// cluster does what the tests need.
func TestStartWhereInstalled(t *testing.T) {
	t.Setenv(DSNEnv, "")
	if _, err := binDir(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	var dsn string
	ok := t.Run("start", func(t *testing.T) { dsn = Start(t) })
	if !ok || dsn == "" {
		t.Fatal("Start skipped or failed on a machine with PostgreSQL installed")
	}
	if again := Start(t); again != dsn {
		t.Errorf("second Start = another DSN: one cluster per test binary expected")
	}
	u, err := url.Parse(dsn)
	if err != nil || u.Hostname() != "127.0.0.1" || u.Port() == "" {
		t.Fatalf("DSN %q: want a URL on 127.0.0.1", dsn)
	}
	if got := query(t, dsn, `SHOW fsync`); got != "off" {
		t.Errorf("fsync = %s, want off", got)
	}
	// Password authentication over TCP: a wrong password is refused
	// (the store's tests check that its errors hide the password).
	bad := *u
	bad.User = url.UserPassword("sectun", "wrong")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if c, err := pgx.Connect(ctx, bad.String()); err == nil {
		c.Close(ctx)
		t.Error("a wrong password was accepted")
	}
}

// TestDatabase: each call gets its own empty database, dropped when the
// test ends.
func TestDatabase(t *testing.T) {
	t.Setenv(DSNEnv, "")
	if _, err := binDir(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	var name string
	t.Run("use", func(t *testing.T) {
		a, b := Database(t), Database(t)
		if a == b {
			t.Fatal("two Database calls returned the same DSN")
		}
		name = query(t, a, `SELECT current_database()`)
		if !strings.HasPrefix(name, "sectun_test_") {
			t.Errorf("database %q", name)
		}
		execSQL(t, a, `CREATE TABLE x (i int)`)
		if got := query(t, b, `SELECT count(*)::text FROM pg_tables WHERE tablename = 'x'`); got != "0" {
			t.Errorf("the second database sees the first's table")
		}
	})
	if got := query(t, Start(t), `SELECT count(*)::text FROM pg_database WHERE datname = '`+name+`'`); got != "0" {
		t.Errorf("database %s still exists after its test ended", name)
	}
}

// TestStopRemovesCluster: Stop ends the server and removes its
// directory; a later Start starts a new one.
func TestStopRemovesCluster(t *testing.T) {
	t.Setenv(DSNEnv, "")
	if _, err := binDir(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	Start(t)
	mu.Lock()
	c := cur
	mu.Unlock()
	Stop()
	select {
	case <-c.exited:
	default:
		t.Fatal("the server still runs after Stop")
	}
	if _, err := os.Stat(c.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cluster directory %s: %v, want it removed", c.dir, err)
	}
	dsn := Start(t)
	if query(t, dsn, `SELECT 'up'`) != "up" {
		t.Error("a Start after Stop does not work")
	}
}

// TestOverride: the environment variable is returned as is.
func TestOverride(t *testing.T) {
	t.Setenv(DSNEnv, "postgres://u:p@127.0.0.1:1/x")
	if got := Start(t); got != "postgres://u:p@127.0.0.1:1/x" {
		t.Errorf("Start = %q, want the override", got)
	}
}
