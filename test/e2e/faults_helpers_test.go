package e2e

// Helpers of the fault, hostile-input, security and soak tests: process
// resource counts (leak checks), a verifying bulk service, a test rig with
// a fault proxy between each local proxy and tunneld.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/faultproxy"
	"github.com/sectun/sectun/internal/procstat"
	"github.com/sectun/sectun/internal/tcptest"
)

// ---- process resources ----------------------------------------------------

// resources are a process's counts from /proc.
type resources = procstat.Usage

func procResources(pid int) (resources, error) { return procstat.Read(pid) }

func (p *proc) resources(t *testing.T) resources {
	t.Helper()
	r, err := procResources(p.cmd.Process.Pid)
	if err != nil {
		t.Fatalf("%s: %v", p.name, err)
	}
	return r
}

// metricsClient scrapes /metrics on connections of its own, so that the
// scrape leaves no idle connection (and goroutines) behind in tunneld.
var metricsClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// metric returns a sample of tunneld's /metrics (name with labels as
// printed, e.g. `go_goroutines`).
func (d *tunneld) metric(t *testing.T, name string) float64 {
	t.Helper()
	return scrape(t, d.url+"/metrics", name)
}

// goroutines returns tunneld's goroutine count, after closing the test's
// idle API connections (each holds a goroutine in tunneld).
func (d *tunneld) goroutines(t *testing.T) int {
	t.Helper()
	d.client.CloseIdleConnections()
	return int(d.metric(t, "go_goroutines"))
}

// dumpStacks makes a Go process print every goroutine's stack and exit
// (SIGQUIT), so that a leak check's failure shows what was left running
// in the process's output.
func (p *proc) dumpStacks() {
	p.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

// withMetrics adds --metrics-listen 127.0.0.1:0 to a localproxy's or
// tunnel-agent's arguments (unless they have it), so that the leak checks
// can read the process's goroutines.
func withMetrics(args []string) []string {
	if hasFlag(args, "--metrics-listen") {
		return args
	}
	return append(slices.Clone(args), "--metrics-listen", "127.0.0.1:0")
}

var metricsLine = regexp.MustCompile(`metrics on (http://\S+/metrics)`)

// metricsURL returns the URL of the process's metrics listener (from the
// line it logged at start), or "" if it has none.
func (p *proc) metricsURL() string {
	if m := metricsLine.FindStringSubmatch(p.output()); m != nil {
		return m[1]
	}
	return ""
}

// scrape returns a sample of the metrics at url (name with labels as
// printed, e.g. `go_goroutines`).
func scrape(t *testing.T, url, name string) float64 {
	t.Helper()
	resp, err := metricsClient.Get(url)
	if err != nil {
		t.Fatalf("%s: %v", url, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("%s: %q: %v", url, line, err)
			}
			return v
		}
	}
	t.Fatalf("%s has no %s", url, name)
	return 0
}

// goroutines returns the process's goroutine count from its metrics
// listener, or -1 if it has none.
func (p *proc) goroutines(t *testing.T) int {
	t.Helper()
	u := p.metricsURL()
	if u == "" {
		return -1
	}
	return int(scrape(t, u, "go_goroutines"))
}

// leakWatch holds the baseline of every process of a test.
type leakWatch struct {
	t     *testing.T
	d     *tunneld
	baseG int
	procs []*proc
	base  []resources
	// baseGs are the procs' goroutines (-1: no metrics listener).
	baseGs []int
}

// watchLeaks records the baseline: tunneld's goroutines (d may be nil),
// each process's file descriptors and, for the processes with a metrics
// listener (localproxy and tunnel-agent started with --metrics-listen),
// their goroutines, once they are steady.
func watchLeaks(t *testing.T, d *tunneld, procs ...*proc) *leakWatch {
	t.Helper()
	w := &leakWatch{t: t, d: d, procs: procs}
	// Let connection set-up finish (a handshake's goroutines, the first
	// pings): two equal readings 100 ms apart.
	deadline := time.Now().Add(10 * time.Second)
	var prev string
	for {
		w.baseG, w.base, w.baseGs = 0, w.base[:0], w.baseGs[:0]
		if d != nil {
			w.baseG = d.goroutines(t)
		}
		for _, p := range procs {
			w.base = append(w.base, p.resources(t))
			w.baseGs = append(w.baseGs, p.goroutines(t))
		}
		cur := fmt.Sprint(w.baseG, w.fdsOf(w.base), w.baseGs)
		if cur == prev || time.Now().After(deadline) {
			break
		}
		prev = cur
		time.Sleep(100 * time.Millisecond) // sampling interval, not a readiness wait
	}
	// One /metrics reading is not a goroutine count (see steadyGoroutines):
	// the baselines are medians.
	w.baseG, w.baseGs = w.goroutines()
	return w
}

// goroutines returns tunneld's goroutines (0 without tunneld) and each
// process's (-1 without a metrics listener), each the median of
// goroutineReadings rounds of readings 50 ms apart.
func (w *leakWatch) goroutines() (int, []int) {
	rounds := make([][]int, goroutineReadings)
	for i := range rounds {
		if i > 0 {
			time.Sleep(50 * time.Millisecond) // sampling interval, not a readiness wait
		}
		row := []int{0}
		if w.d != nil {
			row[0] = w.d.goroutines(w.t)
		}
		for _, p := range w.procs {
			row = append(row, p.goroutines(w.t))
		}
		rounds[i] = row
	}
	meds := make([]int, len(w.procs)+1)
	for j := range meds {
		col := make([]int, len(rounds))
		for i, row := range rounds {
			col[i] = row[j]
		}
		slices.Sort(col)
		meds[j] = col[len(col)/2]
	}
	return meds[0], meds[1:]
}

func (w *leakWatch) fdsOf(rs []resources) []int {
	var fds []int
	for _, r := range rs {
		fds = append(fds, r.FDs)
	}
	return fds
}

// check waits (up to timeout) for every count to be back at its baseline:
// the same file descriptors in each process, no more goroutines in
// tunneld and in the processes with a metrics listener. It fails the test
// with the counts otherwise, and logs them.
func (w *leakWatch) check(timeout time.Duration) {
	w.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		g, gs := w.goroutines()
		var now []resources
		ok := g <= w.baseG
		for i, p := range w.procs {
			r := p.resources(w.t)
			now = append(now, r)
			// More is a leak; fewer is a baseline that caught a transient
			// descriptor (a /metrics connection the process was still
			// closing: seen at load 25).
			if r.FDs > w.base[i].FDs {
				ok = false
			}
			if gs[i] > w.baseGs[i] {
				ok = false
			}
		}
		if ok || time.Now().After(deadline) {
			var b strings.Builder
			if w.d != nil {
				fmt.Fprintf(&b, "tunneld goroutines %d -> %d", w.baseG, g)
			}
			for i, p := range w.procs {
				fmt.Fprintf(&b, "; %s[%d]: %v -> %v", p.name, p.cmd.Process.Pid, w.base[i], now[i])
				if w.baseGs[i] >= 0 {
					fmt.Fprintf(&b, ", goroutines %d -> %d", w.baseGs[i], gs[i])
				}
			}
			if !ok {
				w.t.Fatalf("leak: not back to the baseline after %v: %s", timeout, b.String())
			}
			w.t.Logf("no leak: %s", b.String())
			return
		}
		time.Sleep(100 * time.Millisecond) // sampling interval
	}
}

// drain discards the output lines collected so far, so that the next
// waitLine sees only what comes after.
func (p *proc) drain() { p.Drain() }

// countLines counts the collected output lines matching re.
func (p *proc) countLines(re string) int {
	return len(regexp.MustCompile("(?m)"+re).FindAllStringIndex(p.output(), -1))
}

// ---- verified transfers ---------------------------------------------------

// prefixCheck compares what is written to it with the deterministic
// stream of a seed, byte for byte: it tells whether what arrived is an
// unaltered, in-order prefix of what was sent.
type prefixCheck struct {
	gen  io.Reader
	want []byte
	n    int64
	bad  int64 // offset of the first difference + 1; 0 when intact
}

func newPrefixCheck(seed byte) *prefixCheck { return &prefixCheck{gen: tcptest.Stream(seed)} }

func (p *prefixCheck) Write(b []byte) (int, error) {
	if p.bad != 0 {
		p.n += int64(len(b))
		return len(b), nil
	}
	if cap(p.want) < len(b) {
		p.want = make([]byte, len(b))
	}
	want := p.want[:len(b)]
	io.ReadFull(p.gen, want)
	if !bytes.Equal(b, want) {
		for i := range b {
			if b[i] != want[i] {
				p.bad = p.n + int64(i) + 1
				break
			}
		}
	}
	p.n += int64(len(b))
	return len(b), nil
}

func (p *prefixCheck) intact() bool { return p.bad == 0 }

func (p *prefixCheck) String() string {
	if p.bad != 0 {
		return fmt.Sprintf("%d bytes, CORRUPTED at offset %d", p.n, p.bad-1)
	}
	return fmt.Sprintf("%d bytes, intact", p.n)
}

// Seeds of the two directions of a verified transfer.
const (
	seedUp   = 11 // client -> service
	seedDown = 12 // service -> client
)

// svcResult is what a checkedService connection saw.
type svcResult struct {
	received *prefixCheck
	sent     int64
	err      error // nil when the client's data ended with EOF
	ended    time.Time
}

// checkedService is a TCP service for verified transfers: the client sends
// a 16-byte header (bytes it will send, bytes it wants), then the service
// sends the wanted bytes of tcptest.Stream(seedDown) while checking what it reads
// against tcptest.Stream(seedUp). Once both are done it half-closes (the protocol
// has no half-close: the tunnel then ends the connection, after delivering
// everything) and expects EOF. Each connection's outcome goes to results.
type checkedService struct {
	addr    string
	results chan svcResult
}

func startCheckedService(t *testing.T) *checkedService {
	t.Helper()
	s := &checkedService{results: make(chan svcResult, 64)}
	s.addr = tcpService(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		var hdr [16]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			s.results <- svcResult{received: newPrefixCheck(seedUp), err: fmt.Errorf("header: %w", err), ended: time.Now()}
			return
		}
		up, down := int64(binary.BigEndian.Uint64(hdr[:8])), int64(binary.BigEndian.Uint64(hdr[8:]))
		var sent int64
		var werr error
		wdone := make(chan struct{})
		go func() {
			defer close(wdone)
			sent, werr = io.Copy(c, io.LimitReader(tcptest.Stream(seedDown), down))
		}()
		chk := newPrefixCheck(seedUp)
		_, err := io.Copy(chk, io.LimitReader(c, up))
		if err == nil && chk.n < up {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			ended := time.Now()
			c.Close() // stops the writer
			<-wdone
			s.results <- svcResult{received: chk, sent: sent, err: err, ended: ended}
			return
		}
		<-wdone
		if werr == nil {
			c.(*net.TCPConn).CloseWrite()
			var n int
			n, err = c.Read(make([]byte, 1))
			if n > 0 {
				err = errors.New("data after the announced size")
			} else if errors.Is(err, io.EOF) {
				err = nil
			}
		} else {
			err = werr
		}
		s.results <- svcResult{received: chk, sent: sent, err: err, ended: time.Now()}
	})
	return s
}

// result waits for the outcome of the service's next finished connection.
func (s *checkedService) result(t *testing.T, timeout time.Duration) svcResult {
	t.Helper()
	select {
	case r := <-s.results:
		return r
	case <-time.After(timeout):
		t.Fatalf("the service's connection did not end within %v", timeout)
		return svcResult{}
	}
}

// xfer is the client side of a verified transfer.
type xfer struct {
	c        net.Conn
	received *prefixCheck
	sent     int64
	werr     error
	progress atomic.Int64  // bytes received so far
	rerr     error         // nil: the service's data ended with EOF
	ended    time.Time     // when reading ended
	readEnd  chan struct{} // closed when reading ended
	done     chan struct{} // closed when reading and writing ended
}

// startXfer connects to addr and starts a verified transfer of up bytes
// to the service and down bytes from it.
func startXfer(t *testing.T, addr string, up, down int64) *xfer {
	t.Helper()
	c := dialTCP(t, addr)
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	x := &xfer{c: c, received: newPrefixCheck(seedDown), readEnd: make(chan struct{}), done: make(chan struct{})}
	var hdr [16]byte
	binary.BigEndian.PutUint64(hdr[:8], uint64(up))
	binary.BigEndian.PutUint64(hdr[8:], uint64(down))
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		if _, x.werr = c.Write(hdr[:]); x.werr != nil {
			return
		}
		// No half-close: it would end the connection (see checkedService).
		x.sent, x.werr = io.Copy(c, io.LimitReader(tcptest.Stream(seedUp), up))
	}()
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			x.received.Write(buf[:n])
			x.progress.Add(int64(n))
			if err != nil {
				if !errors.Is(err, io.EOF) {
					x.rerr = err
				}
				break
			}
		}
		x.ended = time.Now()
		close(x.readEnd)
		c.SetWriteDeadline(time.Now().Add(10 * time.Second)) // the proxy closes within its linger time
		<-wdone
		c.Close()
		close(x.done)
	}()
	return x
}

// wait waits for the transfer to end.
func (x *xfer) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case <-x.done:
	case <-time.After(timeout):
		t.Fatalf("transfer still running after %v (received %v, hanging?)", timeout, x.received)
	}
}

// complete checks that a whole transfer of up and down bytes arrived
// intact at both ends.
func (x *xfer) complete(t *testing.T, svc *checkedService, up, down int64) {
	t.Helper()
	x.wait(t, 2*time.Minute)
	if x.rerr != nil || x.werr != nil || x.received.n != down || !x.received.intact() {
		t.Fatalf("client: sent %d (%v), received %v (%v); want %d each way, intact", x.sent, x.werr, x.received, x.rerr, up)
	}
	r := svc.result(t, 30*time.Second)
	if r.err != nil || r.received.n != up || !r.received.intact() || r.sent != down {
		t.Fatalf("service: received %v (%v), sent %d", r.received, r.err, r.sent)
	}
}

// ---- the fault rig --------------------------------------------------------

// faultRig is tunneld with a destination and a source localproxy, each
// connected through a fault proxy of its own; the destination serves BULK
// (a checkedService) and ECHO.
type faultRig struct {
	d            *tunneld
	tun          openTunnelOut
	srcFP, dstFP *faultproxy.Proxy
	src, dst     *proc
	svc          *checkedService
	addrs        map[string]string
}

// proxySettings writes a settings JSON for --settings-json.
func proxySettings(t *testing.T, pingMS, retryMS int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "settings.json")
	doc := fmt.Sprintf(`{"tunneling":{"proxy":{"websocket":{"ping_period_ms":"%d","retry_delay_ms":"%d"},"tcp":{"connection_retry_count":"1","connection_retry_delay_ms":"100"}}}}`, pingMS, retryMS)
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Short keepalive of the fault tests: a dead WebSocket is noticed after
// twice this (the tunnel library's liveness), reconnects wait up to
// rigRetry.
const (
	rigPing  = 400
	rigRetry = 200
	// rigPingLoaded is the ping period of the tests that need no short
	// keepalive (a reset is seen at once). Pings travel in-band, behind
	// the bulk data already queued in socket buffers and the fault
	// proxy; on a loaded machine (race detector, other test runs on 2
	// cores) a bulk upload's queue took over 800 ms to drain, so a
	// healthy tunnel was dropped by the 400 ms ping's liveness window
	// before its transfer delivered a byte (the TestFaultReset flake).
	rigPingLoaded = 2000
)

func newFaultRig(t *testing.T, pingMS int) *faultRig {
	t.Helper()
	r := &faultRig{d: startTunneldLP(t)}
	r.tun = r.d.openTunnel(t, "thing1", "BULK", "ECHO")
	target := strings.TrimPrefix(r.d.url, "http://")
	var err error
	for _, fp := range []**faultproxy.Proxy{&r.srcFP, &r.dstFP} {
		if *fp, err = faultproxy.New(faultproxy.Config{Target: target}); err != nil {
			t.Fatal(err)
		}
		p := *fp
		t.Cleanup(func() { p.Close() })
	}
	settings := proxySettings(t, pingMS, rigRetry)
	r.svc = startCheckedService(t)
	r.dst = startDestination(t, "ws://"+r.dstFP.Addr(), r.tun.DestinationAccessToken,
		"BULK="+r.svc.addr+",ECHO="+echoService(t), "--settings-json", settings)
	r.src, r.addrs = startSource(t, "ws://"+r.srcFP.Addr(), r.tun.SourceAccessToken, "BULK=0,ECHO=0", 2, "--settings-json", settings)
	// One echo end to end: both ends are connected.
	if _, err := r.echo(lpWait); err != nil {
		t.Fatal(err)
	}
	return r
}

// echo dials ECHO until a round trip succeeds (the other end may still be
// reconnecting), within timeout; it returns the time it took.
func (r *faultRig) echo(timeout time.Duration) (time.Duration, error) {
	return echoUntil(r.addrs["ECHO"], timeout)
}

func echoUntil(addr string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = echoOnce(addr, min(2*time.Second, time.Until(deadline))); err == nil {
			return time.Since(start), nil
		}
		time.Sleep(20 * time.Millisecond) // retry pacing
	}
	return time.Since(start), fmt.Errorf("no echo within %v: %w", timeout, err)
}

func echoOnce(addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return tcptest.DialRoundTrip(ctx, addr, []byte("are you there?"))
}

// ctxTimeout is a context for a wait in a test.
func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// closedWithin waits for the transfer's reading side to end (the proxy
// closed the connection or sent FIN) and says how long after since it did;
// it fails if that takes longer than within.
func closedWithin(t *testing.T, x *xfer, since time.Time, within time.Duration) time.Duration {
	t.Helper()
	select {
	case <-x.readEnd:
	case <-time.After(within):
		t.Fatalf("connection still open %v after the fault (received %v): left hanging", within, x.received)
	}
	return x.ended.Sub(since)
}

// figures collects the observed recovery times of a test, logged at the
// end (the issue note lists them).
type figures struct {
	mu    sync.Mutex
	lines []string
}

func (f *figures) add(format string, args ...any) {
	f.mu.Lock()
	f.lines = append(f.lines, fmt.Sprintf(format, args...))
	f.mu.Unlock()
}

func (f *figures) log(t *testing.T) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.lines {
		t.Log("FIGURE " + l)
	}
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }
