package relay

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/sectun/sectun/internal/wsconn"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/wire"
)

// The memory test is opt-in: it opens thousands of connections.
//
//	SECTUN_RELAY_MEMTEST=1 go test -run MemoryPerPeer -v ./internal/server/relay/
//
// SECTUN_RELAY_MEMTEST_TUNNELS overrides the number of tunnels (1000).
const (
	envMemTest  = "SECTUN_RELAY_MEMTEST"
	envMemChild = "SECTUN_RELAY_MEMCHILD"
)

// anyAuthz grants tokens of the form src-<id> and dst-<id>.
type anyAuthz struct{}

func (anyAuthz) Authorize(ctx context.Context, req HandshakeRequest) (Grant, error) {
	id, ok := strings.CutPrefix(req.AccessToken, "src-")
	if !ok {
		id, _ = strings.CutPrefix(req.AccessToken, "dst-")
	}
	return Grant{TunnelID: id, Services: []string{"SSH"}}, nil
}

func (anyAuthz) PeerChanged(context.Context, string, store.Mode, bool) {}

type memReport struct {
	HeapInuse, StackInuse, RSS uint64
	Goroutines                 int
	Peers                      int
}

func readRSS() uint64 {
	b, _ := os.ReadFile("/proc/self/status")
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// TestMemoryChild is the relay process of TestMemoryPerPeer.
func TestMemoryChild(t *testing.T) {
	if os.Getenv(envMemChild) == "" {
		t.Skip("child of TestMemoryPerPeer")
	}
	r, err := New(Config{Authorizer: anyAuthz{}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/tunnel", r)
	mux.HandleFunc("/mem", func(w http.ResponseWriter, _ *http.Request) {
		runtime.GC()
		runtime.GC() // a second cycle empties the sync.Pools
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		json.NewEncoder(w).Encode(memReport{HeapInuse: ms.HeapInuse, StackInuse: ms.StackInuse, RSS: readRSS(), Goroutines: runtime.NumGoroutine(), Peers: r.Stats().Peers})
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	fmt.Printf("ADDR %s\n", ln.Addr())
	// Serve until the parent closes our stdin.
	bufio.NewReader(os.Stdin).ReadString('\n')
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	r.Shutdown(ctx)
}

func TestMemoryPerPeer(t *testing.T) {
	if os.Getenv(envMemTest) == "" {
		t.Skip("set " + envMemTest + "=1 to measure memory per idle peer")
	}
	tunnels := 1000
	if v, err := strconv.Atoi(os.Getenv("SECTUN_RELAY_MEMTEST_TUNNELS")); err == nil && v > 0 {
		tunnels = v
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestMemoryChild$", "-test.v")
	cmd.Env = append(os.Environ(), envMemChild+"=1")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	sc := bufio.NewScanner(stdout)
	var addr string
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
			addr = a
			break
		}
	}
	if addr == "" {
		t.Fatal("child printed no address")
	}
	go func() {
		for sc.Scan() { // drain the child's test output
		}
	}()
	mem := func() memReport {
		resp, err := http.Get("http://" + addr + "/mem")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m memReport
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	tr := &testRelay{wsURL: "ws://" + addr + "/tunnel"}

	// Warm up the process (first connection, pools, code paths), then
	// measure the baseline.
	warm, _ := tr.dial(t, "src-warm", dialOpts{}), 0
	warm.conn.Close(wsconn.CloseNormal, "")
	waitFor(t, "warm-up peer gone", func() bool { return mem().Peers == 0 })
	base := mem()

	payload := bytes.Repeat([]byte("m"), wire.MaxPayloadSize)
	for i := range tunnels {
		id := strconv.Itoa(i)
		dst := tr.dial(t, "dst-"+id, dialOpts{})
		src := tr.dial(t, "src-"+id, dialOpts{})
		dst.expectServiceIDs([]string{"SSH"})
		src.expectServiceIDs([]string{"SSH"})
		// One full-size frame each way, so the data path's buffers were
		// used before the peers go idle.
		src.send(start(1, "SSH"), data(1, "SSH", payload))
		dst.recv()
		dst.recv()
		dst.send(data(1, "SSH", payload))
		src.recv()
	}
	loaded := mem()
	if loaded.Peers != 2*tunnels {
		t.Fatalf("relay has %d peers, want %d", loaded.Peers, 2*tunnels)
	}
	peers := float64(2 * tunnels)
	perHeap := (float64(loaded.HeapInuse) - float64(base.HeapInuse)) / peers
	perStack := (float64(loaded.StackInuse) - float64(base.StackInuse)) / peers
	perRSS := (float64(loaded.RSS) - float64(base.RSS)) / peers
	t.Logf("%d idle peers (%d tunnels, %d goroutines): per peer heap %.1f KiB, stacks %.1f KiB, heap+stacks %.1f KiB, RSS %.1f KiB",
		2*tunnels, tunnels, loaded.Goroutines, perHeap/1024, perStack/1024, (perHeap+perStack)/1024, perRSS/1024)
	if perRSS > 64<<10 {
		t.Errorf("RSS per idle peer %.1f KiB exceeds 64 KiB", perRSS/1024)
	}
}
