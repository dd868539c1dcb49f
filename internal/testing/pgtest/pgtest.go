package pgtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// DSNEnv names the override: a DSN of a running server to use instead of
// starting one.
const DSNEnv = "SECTUN_TEST_POSTGRES_DSN"

// errNotInstalled marks "no server binaries": the one case that skips.
var errNotInstalled = errors.New("pgtest: PostgreSQL server binaries not found")

var (
	mu      sync.Mutex
	cur     *cluster // the started cluster, nil before Start and after Stop
	lastErr error    // why the last start failed (each Start reports it)
)

type cluster struct {
	dir    string // temporary directory: data/, the socket, log
	dsn    string
	cmd    *exec.Cmd
	exited chan struct{} // closed when the server process ends
}

// Start returns the DSN of the test server (see the package doc): the
// override, or the throwaway cluster, started on the first call. It skips
// tb when PostgreSQL is not installed and fails it when it is installed
// but cannot be started.
func Start(tb testing.TB) string {
	tb.Helper()
	if dsn := os.Getenv(DSNEnv); dsn != "" {
		return dsn
	}
	mu.Lock()
	defer mu.Unlock()
	if cur != nil {
		return cur.dsn
	}
	if lastErr == nil {
		cur, lastErr = startCluster()
		if lastErr == nil {
			return cur.dsn
		}
	}
	if errors.Is(lastErr, errNotInstalled) {
		tb.Skipf("skipping: %v (install Debian's postgresql, or set %s to a running server's DSN)", lastErr, DSNEnv)
	}
	tb.Fatalf("%v", lastErr)
	return ""
}

// Wrap returns m with a Run that runs the tests and then Stop, for
// goleak.VerifyTestMain(pgtest.Wrap(m)).
func Wrap(m *testing.M) interface{ Run() int } { return wrapped{m} }

type wrapped struct{ m *testing.M }

func (w wrapped) Run() int {
	defer Stop()
	return w.m.Run()
}

// Stop stops the cluster Start started, if any, and removes its directory.
func Stop() {
	mu.Lock()
	defer mu.Unlock()
	if cur == nil {
		return
	}
	cur.stop()
	cur = nil
}

func (c *cluster) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGINT) // fast shutdown
	t := time.NewTimer(30 * time.Second)
	select {
	case <-c.exited:
	case <-t.C:
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
	t.Stop()
	_ = os.RemoveAll(c.dir)
}

// Database creates an empty database, dropped when tb ends, and returns
// a DSN for it (Start's DSN with the database name replaced).
func Database(tb testing.TB) string {
	tb.Helper()
	base := Start(tb)
	u, err := url.Parse(base)
	if err != nil || u.Scheme == "" {
		tb.Fatalf("pgtest.Database: %s must be a URL (postgres://...)", DSNEnv) // it holds a password: not printed
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "sectun_test_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		tb.Fatalf("pgtest.Database: connect: %v", err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, `CREATE DATABASE `+name); err != nil {
		tb.Fatalf("pgtest.Database: create database (the role needs CREATEDB): %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := pgx.Connect(ctx, base)
		if err != nil {
			tb.Errorf("pgtest.Database: drop %s: connect: %v", name, err)
			return
		}
		defer admin.Close(context.Background())
		if _, err := admin.Exec(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
			tb.Errorf("pgtest.Database: drop %s: %v", name, err)
		}
	})
	d := *u
	d.Path = "/" + name
	return d.String()
}

// binDir finds the directory of initdb and postgres: the newest
// /usr/lib/postgresql/N/bin (Debian), else initdb's directory on PATH.
func binDir() (string, error) {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(matches, func(i, j int) bool { return pgVersion(matches[i]) > pgVersion(matches[j]) })
	for _, m := range matches {
		dir := filepath.Dir(m)
		if isExec(filepath.Join(dir, "postgres")) {
			return dir, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		dir := filepath.Dir(p)
		if isExec(filepath.Join(dir, "postgres")) {
			return dir, nil
		}
	}
	return "", fmt.Errorf("%w (no /usr/lib/postgresql/*/bin/initdb, no initdb and postgres on PATH)", errNotInstalled)
}

func pgVersion(initdb string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(initdb))))
	return v
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// owner is who runs initdb and the server: the current user, or the
// "postgres" user when running as root.
type owner struct {
	cred     *credential // nil: the current user
	uid, gid int
}

func clusterOwner() (owner, error) {
	if os.Geteuid() != 0 {
		return owner{uid: -1, gid: -1}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return owner{}, fmt.Errorf("pgtest: running as root, and initdb refuses root: there is no \"postgres\" user to run it as (%v); create one or set %s", err, DSNEnv)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return owner{cred: &credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, uid: uid, gid: gid}, nil
}

func startCluster() (*cluster, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	own, err := clusterOwner()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "sectun-pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	c, err := initAndStart(bin, dir, own)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return c, nil
}

func initAndStart(bin, dir string, own owner) (*cluster, error) {
	if own.cred != nil {
		if err := os.Chown(dir, own.uid, own.gid); err != nil {
			return nil, fmt.Errorf("pgtest: %w", err)
		}
	}
	var pw [16]byte
	_, _ = rand.Read(pw[:])
	password := hex.EncodeToString(pw[:])
	pwfile := filepath.Join(dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(password+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if own.cred != nil {
		if err := os.Chown(pwfile, own.uid, own.gid); err != nil {
			return nil, fmt.Errorf("pgtest: %w", err)
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "sectun", "--pwfile="+pwfile,
		"--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-locale", "--no-sync")
	initdb.Dir = dir
	initdb.SysProcAttr = sysProcAttr(own.cred)
	out, err := initdb.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("pgtest: %s (as %s): %v\n%s", initdb, whoami(own), err, tail(out, 20))
	}
	_ = os.Remove(pwfile)

	// A free port can be taken between the probe and the bind: try again.
	var lastErr error
	for range 3 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		c, err := startServer(bin, dir, data, port, password, own)
		if err == nil {
			return c, nil
		}
		lastErr = err
		if !errors.Is(err, errPortTaken) {
			break
		}
	}
	return nil, lastErr
}

var errPortTaken = errors.New("port taken")

func startServer(bin, dir, data string, port int, password string, own owner) (*cluster, error) {
	logPath := filepath.Join(dir, "server.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(filepath.Join(bin, "postgres"), "-D", data,
		"-p", strconv.Itoa(port), "-k", dir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=300", "-c", "shared_buffers=32MB",
		"-c", "log_min_messages=warning", "-c", "logging_collector=off")
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf // *os.File: no copying goroutines
	cmd.SysProcAttr = sysProcAttr(own.cred)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("pgtest: start %s: %w", cmd.Path, err)
	}
	c := &cluster{
		dir:    dir,
		dsn:    fmt.Sprintf("postgres://sectun:%s@127.0.0.1:%d/postgres?sslmode=disable", password, port),
		cmd:    cmd,
		exited: make(chan struct{}),
	}
	go func() { _ = cmd.Wait(); close(c.exited) }()

	// Ready when a connection with the DSN succeeds; give up when the
	// server exits or after 60 s.
	deadline := time.Now().Add(60 * time.Second)
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-c.exited:
			log, _ := os.ReadFile(logPath)
			if bytes.Contains(log, []byte("could not bind")) || bytes.Contains(log, []byte("already in use")) {
				return nil, fmt.Errorf("pgtest: port %d: %w", port, errPortTaken)
			}
			return nil, fmt.Errorf("pgtest: the server exited while starting (%v); its log:\n%s", cmd.ProcessState, tail(log, 20))
		case <-retry.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, c.dsn)
		cancel()
		if err == nil {
			_ = conn.Close(context.Background())
			return c, nil
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			c.stop()
			return nil, fmt.Errorf("pgtest: the server on 127.0.0.1:%d did not accept connections within 60 s (%v); its log:\n%s", port, err, tail(log, 20))
		}
		retry.Reset(50 * time.Millisecond)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	return port, nil
}

func whoami(own owner) string {
	if own.cred != nil {
		return "user postgres"
	}
	return "the current user"
}

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
