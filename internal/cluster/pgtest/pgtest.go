// Package pgtest starts a throwaway PostgreSQL server for tests: initdb
// into a temporary directory (as the postgres user when run as root, since
// initdb refuses root), trust authentication, fsync off, a free loopback
// port. Start skips the test when the server binaries are absent. Stop and
// Start again (same directory, same port) simulate a database restart.
package pgtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Server is a running (or stopped) throwaway PostgreSQL.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	Port int
	asPG bool
	cmd  *exec.Cmd
}

// binDir finds the PostgreSQL server binaries.
func binDir() string {
	if d := os.Getenv("SECTUN_PG_BIN"); d != "" {
		return d
	}
	for _, v := range []string{"17", "16", "15", "14"} {
		d := "/usr/lib/postgresql/" + v + "/bin"
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p)
	}
	return ""
}

// Start makes and starts a server; it is stopped and removed when the test
// ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := binDir()
	if bin == "" {
		t.Skip("PostgreSQL server binaries (initdb, postgres) not found: install postgresql, or set SECTUN_PG_BIN")
	}
	s := &Server{t: t, bin: bin, asPG: os.Geteuid() == 0}
	dir, err := os.MkdirTemp("", "sectun-pg-")
	if err != nil {
		t.Fatal(err)
	}
	s.dir = dir
	t.Cleanup(func() { s.Stop(); os.RemoveAll(dir) })
	if s.asPG {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skip("running as root and there is no postgres user for initdb")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	out, err := s.command(filepath.Join(bin, "initdb"), "-D", filepath.Join(dir, "data"), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C").CombinedOutput()
	if err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	s.Port = freePort(t)
	s.Restart()
	return s
}

func (s *Server) command(name string, args ...string) *exec.Cmd {
	if s.asPG {
		return exec.Command("runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
	}
	return exec.Command(name, args...)
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Restart starts the server (after Stop, or the first time) and waits until
// it accepts connections (at most 60 s).
func (s *Server) Restart() {
	s.t.Helper()
	cmd := s.command(filepath.Join(s.bin, "postgres"), "-D", filepath.Join(s.dir, "data"),
		"-p", strconv.Itoa(s.Port), "-k", s.dir, "-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=300", "-c", "shared_buffers=32MB")
	logf, err := os.OpenFile(filepath.Join(os.TempDir(), fmt.Sprintf("sectun-pg-%d.log", s.Port)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err == nil {
		cmd.Stdout, cmd.Stderr = logf, logf
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("postgres: %v", err)
	}
	if logf != nil {
		logf.Close()
	}
	s.cmd = cmd
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := pgx.Connect(ctx, s.DSN("postgres"))
		if err == nil {
			c.Close(ctx)
			cancel()
			return
		}
		cancel()
		if time.Now().After(deadline) {
			s.t.Fatalf("postgres on port %d did not accept connections within 60 s: %v", s.Port, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the server (fast shutdown) and waits for it to exit.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	// pg_ctl's fast shutdown (signals do not cross runuser).
	s.command(filepath.Join(s.bin, "pg_ctl"), "-D", filepath.Join(s.dir, "data"), "-m", "fast", "-w", "-t", "30", "stop").Run()
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	s.cmd = nil
}

// DSN is the URL of database db as user postgres.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port, db)
}

// NewDatabase creates a fresh database and returns its DSN.
func (s *Server) NewDatabase(name string) string {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		s.t.Fatal(err)
	}
	defer c.Close(ctx)
	name = strings.ToLower(name)
	if _, err := c.Exec(ctx, `CREATE DATABASE "`+name+`"`); err != nil {
		s.t.Fatal(err)
	}
	return s.DSN(name)
}
