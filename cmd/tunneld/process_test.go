package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/wsconn"
)

// The test binary is also tunneld: the process tests run it with this
// variable set, so they start real tunneld processes.
const asMainEnv = "TUNNELD_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMainEnv) == "1" {
		os.Args = append([]string{"tunneld"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const processTimeout = 20 * time.Second

// syncBuffer collects a process's stderr.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// tunneldProc is a tunneld process started by the test.
type tunneldProc struct {
	cmd    *exec.Cmd
	url    string // http://127.0.0.1:port, "" if it did not start
	stderr *syncBuffer
	done   chan struct{} // closed when it exited
	err    error         // its exit, after done
}

// startTunneld runs tunneld (plaintext, no auth, no MQTT) on dataDir and
// waits until it listens or exits.
func startTunneld(t *testing.T, dataDir string, args ...string) *tunneldProc {
	t.Helper()
	return startTunneldArgs(t, append([]string{"--plaintext", "--no-auth", "--listen", "127.0.0.1:0", "--mqtt-listen", "off", "--data-dir", dataDir}, args...)...)
}

// startTunneldTLS runs tunneld with TLS (its development CA) and the
// embedded broker on a free port.
func startTunneldTLS(t *testing.T, dataDir string) *tunneldProc {
	t.Helper()
	return startTunneldArgs(t, "--listen", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0", "--data-dir", dataDir)
}

func startTunneldArgs(t *testing.T, args ...string) *tunneldProc {
	t.Helper()
	p := &tunneldProc{cmd: exec.Command(os.Args[0], args...), stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), asMainEnv+"=1")
	p.cmd.Stderr = p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	urlc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		found := false
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), "tunneld is listening on "); ok && !found {
				found = true
				urlc <- strings.TrimSpace(u)
			}
		}
		if !found {
			close(urlc)
		}
		io.Copy(io.Discard, out)
	}()
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	select {
	case p.url = <-urlc:
	case <-time.After(processTimeout):
		t.Fatalf("tunneld did not start within %v; stderr:\n%s", processTimeout, p.stderr.String())
	}
	return p
}

// wait waits for the process to exit.
func (p *tunneldProc) wait(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(processTimeout):
		t.Fatalf("tunneld did not exit; stderr:\n%s", p.stderr.String())
	}
}

// call makes an unsigned API call (tunneld runs with --no-auth).
func (p *tunneldProc) call(t *testing.T, op string, in, out any) {
	t.Helper()
	body, _ := json.Marshal(in)
	req, _ := http.NewRequest(http.MethodPost, p.url+"/", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "IoTSecuredTunneling."+op)
	c := &http.Client{Timeout: processTimeout}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %d %s", op, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("%s: %v: %s", op, err, b)
	}
}

func (p *tunneldProc) destinationState(t *testing.T, id string) string {
	t.Helper()
	var d struct {
		Tunnel struct {
			DestinationConnectionState struct {
				Status string `json:"status"`
			} `json:"destinationConnectionState"`
		} `json:"tunnel"`
	}
	p.call(t, "DescribeTunnel", map[string]string{"tunnelId": id}, &d)
	return d.Tunnel.DestinationConnectionState.Status
}

// TestSecondTunneldRefused: two tunneld on one data directory split every
// tunnel's peers between them; the second must refuse to start, naming
// the first.
func TestSecondTunneldRefused(t *testing.T) {
	data := t.TempDir()
	first := startTunneld(t, data)
	ctx, cancel := context.WithTimeout(context.Background(), processTimeout)
	defer cancel()
	second := exec.CommandContext(ctx, os.Args[0], "--plaintext", "--no-auth", "--listen", "127.0.0.1:0", "--mqtt-listen", "off", "--data-dir", data)
	second.Env = append(os.Environ(), asMainEnv+"=1")
	out, err := second.CombinedOutput()
	if err == nil {
		t.Fatalf("second tunneld on the same data directory started:\n%s", out)
	}
	pid := strconv.Itoa(first.cmd.Process.Pid)
	for _, want := range []string{"in use", "process " + pid, "--data-dir " + data, "stop it first"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("refusal does not say %q:\n%s", want, out)
		}
	}
	select {
	case <-first.done:
		t.Fatalf("the first tunneld exited: %v\n%s", first.err, first.stderr.String())
	default:
	}
}

// TestKilledTunneldRestartsDisconnected: tunneld killed with SIGKILL while
// a peer is connected leaves its row CONNECTED; the restarted process
// (same data directory: the lock went with the killed one) must show it
// DISCONNECTED, since no peer survives a restart.
func TestKilledTunneldRestartsDisconnected(t *testing.T) {
	data := t.TempDir()
	p := startTunneld(t, data)
	var open struct {
		TunnelID               string `json:"tunnelId"`
		DestinationAccessToken string `json:"destinationAccessToken"`
	}
	p.call(t, "OpenTunnel", map[string]any{"destinationConfig": map[string]any{"services": []string{"SSH"}}}, &open)
	ctx, cancel := context.WithTimeout(context.Background(), processTimeout)
	defer cancel()
	conn, _, err := wsconn.Dial(ctx, strings.Replace(p.url, "http", "ws", 1)+"/tunnel?local-proxy-mode=destination", wsconn.DialOptions{
		Header:       http.Header{"Access-Token": {open.DestinationAccessToken}},
		Subprotocols: []string{"aws.iot.securetunneling-3.0"},
		Proxy:        func(*url.URL) (*url.URL, error) { return nil, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(wsconn.CloseNormal, "")
	deadline := time.Now().Add(processTimeout)
	for p.destinationState(t, open.TunnelID) != "CONNECTED" {
		if time.Now().After(deadline) {
			t.Fatal("destination never CONNECTED")
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.cmd.Process.Kill() // SIGKILL: no shutdown runs
	p.wait(t)

	p2 := startTunneld(t, data)
	if got := p2.destinationState(t, open.TunnelID); got != "DISCONNECTED" {
		t.Fatalf("after SIGKILL and restart the destination is %s, want DISCONNECTED", got)
	}
	if !strings.Contains(p2.stderr.String(), "marked disconnected") {
		t.Errorf("the restart does not log the correction:\n%s", p2.stderr.String())
	}
}
