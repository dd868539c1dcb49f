package notify_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const mosquittoBin = "/usr/sbin/mosquitto"

// mosquitto is a real Mosquitto broker run by a test.
type mosquitto struct {
	t    *testing.T
	Port int
	conf string

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	out     *lineWriter
	running chan struct{}
}

// startMosquitto runs Mosquitto with the listener settings body(port) on a
// free 127.0.0.1 port, and stops it at the end of the test. Mosquitto can't
// listen on port 0, so the port is found by listening with Go first; a
// bind failure (the port taken meanwhile) is retried on another port.
func startMosquitto(t *testing.T, body func(port int) string) *mosquitto {
	t.Helper()
	if _, err := os.Stat(mosquittoBin); err != nil {
		t.Skipf("mosquitto not installed (%s: %v): apt-get install mosquitto to run the external broker tests", mosquittoBin, err)
	}
	dir := t.TempDir()
	for try := 0; try < 5; try++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		m := &mosquitto{t: t, Port: port, conf: filepath.Join(dir, "mosquitto.conf")}
		conf := fmt.Sprintf("user root\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n%s\n", body(port))
		if err := os.WriteFile(m.conf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		err = m.start()
		if err == nil {
			t.Cleanup(m.Stop)
			return m
		}
		if !strings.Contains(err.Error(), "in use") {
			t.Fatal(err)
		}
		t.Logf("port %d taken, retrying: %v", port, err)
	}
	t.Fatal("no free port for mosquitto after 5 tries")
	return nil
}

// start runs the broker and waits until it reports running or exits.
func (m *mosquitto) start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	running := make(chan struct{})
	var once sync.Once
	m.running = running
	m.exited = make(chan struct{})
	m.out = &lineWriter{onLine: func(s string) {
		if strings.Contains(s, " running") {
			once.Do(func() { close(running) })
		}
	}}
	m.cmd = exec.Command(mosquittoBin, "-c", m.conf)
	m.cmd.Stdout = m.out
	m.cmd.Stderr = m.out
	if err := m.cmd.Start(); err != nil {
		return err
	}
	exited, cmd := m.exited, m.cmd
	go func() {
		cmd.Wait()
		close(exited)
	}()
	select {
	case <-m.running:
		return nil
	case <-exited:
		return fmt.Errorf("mosquitto exited at start:\n%s", m.out.String())
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
		return fmt.Errorf("mosquitto not running after 10s:\n%s", m.out.String())
	}
}

// Stop terminates the broker (SIGTERM: it saves its persistence file) and
// waits for it; idempotent.
func (m *mosquitto) Stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
	case <-time.After(10 * time.Second):
		m.cmd.Process.Kill()
		<-m.exited
	}
	m.cmd = nil
}

// Restart starts the stopped broker again on the same port, retrying a
// bind failure briefly (the old socket may linger).
func (m *mosquitto) Restart() {
	m.t.Helper()
	var err error
	for try := 0; try < 20; try++ {
		if err = m.start(); err == nil {
			return
		}
		m.mu.Lock()
		m.cmd = nil
		m.mu.Unlock()
		time.Sleep(100 * time.Millisecond)
	}
	m.t.Fatalf("mosquitto restart: %v", err)
}

// Log returns the broker's output so far.
func (m *mosquitto) Log() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.out.String()
}

// lineWriter collects output and calls onLine for each complete line.
type lineWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	all    strings.Builder
	onLine func(string)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf.Write(p)
	w.all.Write(p)
	var lines []string
	for {
		i := bytes.IndexByte(w.buf.Bytes(), '\n')
		if i < 0 {
			break
		}
		lines = append(lines, string(w.buf.Next(i+1)))
	}
	w.mu.Unlock()
	for _, l := range lines {
		w.onLine(l)
	}
	return len(p), nil
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.all.String()
}
