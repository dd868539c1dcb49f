package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sectun/sectun/internal/faultproxy"
	"github.com/sectun/sectun/internal/procstat"
)

// result is what a run found.
type result struct {
	unexpected []string // unexpected errors (first ones), leaks, growth
	counts     map[string]int64
}

func (r *result) ok() bool { return len(r.unexpected) == 0 }

// soak is one run.
type soak struct {
	cfg     config
	out     io.Writer
	binDir  string
	logDir  string
	d       *tunneld
	svc     *services
	rng     *lockedRand
	started time.Time

	// counters
	tunnelsOpened, tunnelsClosed, conns, bytes, bulks, echoes, churns atomic.Int64
	faults, injected, reconnects                                      atomic.Int64
	worstEcho                                                         atomic.Int64 // ns

	mu         sync.Mutex
	journal    io.Writer // faults.log in logDir: every fault and unexpected error, and the machine's load every 10 s, wall-clock times
	unexpected []string
	nUnexp     int64
	samples    []sample
	faultKinds map[string]int64
}

// sample is one reading of the processes' resources.
type sample struct {
	at         time.Duration
	goroutines int
	heapKB     int
	tunneld    usage
	anchors    []usage // source, destination of slot 0
}

// slot is one tunnel slot: its fault proxies and fault history persist
// across the tunnels it serves.
type slot struct {
	s        *soak
	id       int
	anchor   bool
	srcFP    *faultproxy.Proxy
	dstFP    *faultproxy.Proxy
	settings string

	mu     sync.Mutex
	faults []*spell // injected faults, the current one last
	cur    *tunnelRun
}

// spell is the time span of an injected fault; to is zero while it lasts.
type spell struct{ from, to time.Time }

// tunnelRun is one tunnel served by a slot.
type tunnelRun struct {
	id       string
	src, dst *proc
	addrs    map[string]string
}

func run(ctx context.Context, cfg config, out io.Writer) (*result, error) {
	if cfg.tunnels < 1 {
		return nil, errors.New("-tunnels must be at least 1")
	}
	s := &soak{cfg: cfg, out: out, rng: &lockedRand{r: rand.New(rand.NewPCG(cfg.seed, 1))}, faultKinds: map[string]int64{}}
	var err error
	s.logDir = cfg.logs
	keepLogs := cfg.logs != ""
	if s.logDir == "" {
		if s.logDir, err = os.MkdirTemp("", "sectun-soak-"); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(s.logDir, 0o755); err != nil {
		return nil, err
	}
	journal, err := os.Create(filepath.Join(s.logDir, "faults.log"))
	if err != nil {
		return nil, err
	}
	defer journal.Close()
	s.journal = journal
	s.binDir = cfg.bin
	if s.binDir == "" {
		s.binDir = filepath.Join(s.logDir, "bin")
		if err := buildBinaries(s.binDir); err != nil {
			return nil, err
		}
	}
	if s.svc, err = startServices(); err != nil {
		return nil, err
	}
	defer s.svc.close()
	dataDir := filepath.Join(s.logDir, "data")
	if s.d, err = startTunneld(s.binDir, s.logDir, dataDir); err != nil {
		return nil, err
	}
	defer s.d.stop(15 * time.Second)
	baseG, err := s.d.goroutines()
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "soak: %v, %d tunnels (slot 0 for the whole run), faults every %v, seed %d, logs in %s\n",
		cfg.duration, cfg.tunnels, cfg.faults, cfg.seed, s.logDir)

	slots := make([]*slot, cfg.tunnels)
	for i := range slots {
		sl := &slot{s: s, id: i, anchor: i == 0}
		for _, fp := range []**faultproxy.Proxy{&sl.srcFP, &sl.dstFP} {
			if *fp, err = faultproxy.New(faultproxy.Config{Target: s.d.addr}); err != nil {
				return nil, err
			}
			defer (*fp).Close()
		}
		sl.settings = filepath.Join(s.logDir, fmt.Sprintf("settings-%d.json", i))
		doc := fmt.Sprintf(`{"tunneling":{"proxy":{"websocket":{"ping_period_ms":"%d","retry_delay_ms":"200"},"tcp":{"connection_retry_count":"1","connection_retry_delay_ms":"100"}}}}`, cfg.ping.Milliseconds())
		if err := os.WriteFile(sl.settings, []byte(doc), 0o600); err != nil {
			return nil, err
		}
		slots[i] = sl
	}

	// The anchor first: its processes are the ones watched for leaks.
	anchor := slots[0]
	if err := anchor.open(ctx); err != nil {
		return nil, fmt.Errorf("anchor tunnel: %w", err)
	}
	anchorBase, err := anchor.settledUsage()
	if err != nil {
		return nil, err
	}

	s.started = time.Now()
	load, stopLoad := context.WithTimeout(ctx, cfg.duration)
	defer stopLoad()
	var wg sync.WaitGroup
	for _, sl := range slots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sl.loop(load)
		}()
	}
	bg, stopBG := context.WithCancel(context.Background())
	var bgWG sync.WaitGroup
	bgWG.Add(2)
	go func() { defer bgWG.Done(); s.injectFaults(load, slots) }()
	go func() { defer bgWG.Done(); s.sampleLoop(bg, anchor) }()
	wg.Wait() // every slot but the anchor closed its tunnel
	stopBG()
	bgWG.Wait()

	res := &result{counts: map[string]int64{}}
	// The anchor's processes, idle again, hold what they held at the start.
	if u, err := anchor.settledUsageAtMost(anchorBase, 20*time.Second); err != nil {
		s.fail("anchor localproxies: %v", err)
	} else {
		fmt.Fprintf(out, "anchor localproxies at the end: source %v, destination %v (start: %v, %v)\n", u[0], u[1], anchorBase[0], anchorBase[1])
	}
	anchor.close()
	// tunneld, with no tunnel connected, is back to its goroutines.
	g, err := waitGoroutines(s.d, baseG, 20*time.Second)
	if err != nil {
		s.fail("tunneld: %v", err)
	}
	fmt.Fprintf(out, "tunneld goroutines: %d at the start, %d at the end\n", baseG, g)
	s.checkGrowth()
	s.printSummary(res)
	if !keepLogs && res.ok() {
		os.RemoveAll(s.logDir)
	}
	return res, nil
}

// journalTime is the time format of faults.log (UTC), as the processes'
// logs print it, so that they can be read side by side.
const journalTime = "2006-01-02T15:04:05.000000"

// fail records an unexpected error.
func (s *soak) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nUnexp++
	fmt.Fprintf(s.journal, "%s unexpected: %s\n", time.Now().UTC().Format(journalTime), msg)
	if len(s.unexpected) < 20 {
		s.unexpected = append(s.unexpected, fmt.Sprintf("%v %s", time.Since(s.started).Round(time.Millisecond), msg))
	}
	if s.cfg.verbose || s.nUnexp <= 5 {
		fmt.Fprintf(s.out, "UNEXPECTED: %s\n", msg)
	}
}

// opFailed classifies a failed operation of sl that ran from start.
func (s *soak) opFailed(sl *slot, start time.Time, what string, err error) {
	if errors.Is(err, errCorrupt) {
		s.fail("slot %d: %s: %v", sl.id, what, err)
		return
	}
	if sl.faultNear(start, time.Now()) {
		s.injected.Add(1)
		return
	}
	s.fail("slot %d: %s: %v", sl.id, what, err)
}

// faultNear reports whether a fault spell of the slot overlaps
// [start-grace, end].
func (sl *slot) faultNear(start, end time.Time) bool {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	from := start.Add(-sl.s.cfg.grace)
	for _, f := range sl.faults {
		if !f.from.After(end) && (f.to.IsZero() || !f.to.Before(from)) {
			return true
		}
	}
	return false
}

// beginFault records a fault starting now; the caller ends it.
func (sl *slot) beginFault() *spell {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	// Keep what can still matter.
	cut := time.Now().Add(-sl.s.cfg.grace - opTimeout)
	for len(sl.faults) > 0 && !sl.faults[0].to.IsZero() && sl.faults[0].to.Before(cut) {
		sl.faults = sl.faults[1:]
	}
	f := &spell{from: time.Now()}
	sl.faults = append(sl.faults, f)
	return f
}

func (sl *slot) endFault(f *spell) {
	sl.mu.Lock()
	f.to = time.Now()
	sl.mu.Unlock()
}

// loop serves tunnels until ctx ends; the anchor serves one for the whole
// run and is closed by run.
func (sl *slot) loop(ctx context.Context) {
	s := sl.s
	for ctx.Err() == nil {
		if !sl.anchor {
			if err := sl.open(ctx); err != nil {
				if ctx.Err() == nil {
					s.fail("slot %d: opening a tunnel: %v", sl.id, err)
					time.Sleep(time.Second) // do not spin on a persistent failure
				}
				continue
			}
		}
		life := ctx
		var cancel context.CancelFunc
		if sl.anchor {
			life, cancel = context.WithCancel(ctx)
		} else {
			l := s.cfg.life/2 + time.Duration(s.rng.int64n(int64(s.cfg.life)+1))
			life, cancel = context.WithTimeout(ctx, l)
		}
		sl.work(life)
		cancel()
		if sl.anchor {
			return
		}
		sl.close()
	}
}

// open opens a tunnel and starts its two localproxies through the
// slot's fault proxies.
func (sl *slot) open(ctx context.Context) error {
	s := sl.s
	var out struct {
		TunnelID               string `json:"tunnelId"`
		SourceAccessToken      string `json:"sourceAccessToken"`
		DestinationAccessToken string `json:"destinationAccessToken"`
	}
	in := map[string]any{"destinationConfig": map[string]any{"thingName": fmt.Sprintf("soak-%d", sl.id), "services": []string{"BULK", "ECHO"}}}
	if err := s.d.call(ctx, "OpenTunnel", in, &out); err != nil {
		return err
	}
	s.tunnelsOpened.Add(1)
	tr := &tunnelRun{id: out.TunnelID, addrs: map[string]string{}}
	var err error
	tr.dst, err = startProc(s.binDir, s.logDir, "localproxy", []string{"AWSIOT_TUNNEL_ACCESS_TOKEN=" + out.DestinationAccessToken},
		"-e", "ws://"+sl.dstFP.Addr(), "-d", "BULK="+s.svc.bulk.Addr().String()+",ECHO="+s.svc.echo.Addr().String(), "--settings-json", sl.settings)
	if err != nil {
		return err
	}
	tr.src, err = startProc(s.binDir, s.logDir, "localproxy", []string{"AWSIOT_TUNNEL_ACCESS_TOKEN=" + out.SourceAccessToken},
		"-e", "ws://"+sl.srcFP.Addr(), "-s", "BULK=0,ECHO=0", "--settings-json", sl.settings)
	if err != nil {
		tr.dst.stop(5 * time.Second)
		return err
	}
	fail := func(err error) error {
		tr.src.stop(5 * time.Second)
		tr.dst.stop(5 * time.Second)
		s.d.call(context.Background(), "CloseTunnel", map[string]any{"tunnelId": tr.id}, nil)
		return err
	}
	if _, err := tr.dst.waitLine(`Use port mapping`, 30*time.Second); err != nil {
		return fail(err)
	}
	for range 2 {
		m, err := tr.src.waitLine(`Listening for (\S+) on (\S+)`, 30*time.Second)
		if err != nil {
			return fail(err)
		}
		tr.addrs[m[1]] = m[2]
	}
	// Count reconnections from the output as it comes; the lines are not
	// needed otherwise.
	for _, p := range []*proc{tr.src, tr.dst} {
		go func() {
			for {
				select {
				case line := <-p.lines:
					if strings.Contains(line, "disconnected; reconnecting") {
						s.reconnects.Add(1)
					}
				case <-p.done:
					return
				}
			}
		}()
	}
	sl.mu.Lock()
	sl.cur = tr
	sl.mu.Unlock()
	if s.cfg.verbose {
		fmt.Fprintf(s.out, "slot %d: tunnel %s open\n", sl.id, tr.id)
	}
	return nil
}

// close closes the slot's tunnel with CloseTunnel and checks that both
// proxies exit with 0, as the reference does.
func (sl *slot) close() {
	s := sl.s
	sl.mu.Lock()
	tr := sl.cur
	sl.cur = nil
	sl.mu.Unlock()
	if tr == nil {
		return
	}
	if err := s.d.call(context.Background(), "CloseTunnel", map[string]any{"tunnelId": tr.id}, nil); err != nil {
		s.fail("slot %d: CloseTunnel: %v", sl.id, err)
	}
	for _, p := range []*proc{tr.src, tr.dst} {
		code, err := p.exitCode(20 * time.Second)
		if err != nil {
			s.fail("slot %d: after CloseTunnel: %v (see %s)", sl.id, err, p.log.Name())
			p.stop(5 * time.Second)
			continue
		}
		if code != 0 {
			s.fail("slot %d: a localproxy exited with %d after CloseTunnel:\n%s", sl.id, code, logTail(p.log.Name(), 10))
		}
	}
	s.tunnelsClosed.Add(1)
	if s.cfg.verbose {
		fmt.Fprintf(s.out, "slot %d: tunnel %s closed\n", sl.id, tr.id)
	}
}

// work runs the slot's workers until ctx ends.
func (sl *slot) work(ctx context.Context) {
	s := sl.s
	sl.mu.Lock()
	tr := sl.cur
	sl.mu.Unlock()
	var wg sync.WaitGroup
	for i := range s.cfg.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !ended(ctx) {
				start := time.Now()
				var err error
				what := ""
				switch i % 3 {
				case 0:
					what = "bulk"
					up, down := 1+s.rng.int64n(s.cfg.maxBulk), 1+s.rng.int64n(s.cfg.maxBulk)
					var n int64
					n, _, err = bulk(ctx, tr.addrs["BULK"], up, down)
					s.bytes.Add(n)
					if err == nil {
						s.bytes.Add(up)
						s.bulks.Add(1)
					}
				case 1:
					what = "echo"
					var worst time.Duration
					worst, err = echoSession(ctx, tr.addrs["ECHO"], 20, 25*time.Millisecond)
					if err == nil {
						s.echoes.Add(1)
						for {
							old := s.worstEcho.Load()
							if int64(worst) <= old || s.worstEcho.CompareAndSwap(old, int64(worst)) {
								break
							}
						}
					}
				default:
					what = "churn"
					err = churn(ctx, tr.addrs["ECHO"])
					if err == nil {
						s.churns.Add(1)
					}
				}
				if ended(ctx) {
					return // interrupted by the end of the tunnel's life
				}
				s.conns.Add(1)
				if err != nil {
					s.opFailed(sl, start, what, err)
					// Let a reconnect happen rather than hammering.
					select {
					case <-ctx.Done():
					case <-time.After(100 * time.Millisecond):
					}
				}
			}
		}()
	}
	wg.Wait()
}

// ended reports whether ctx is done or past its deadline (a dial bounded
// by ctx may fail with a timeout a moment before ctx.Err is set).
func ended(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d.Add(-10*time.Millisecond))
}

// settledUsage returns the anchor localproxies' usage once it is steady
// (two equal readings of descriptors 200 ms apart).
func (sl *slot) settledUsage() ([]usage, error) {
	var prev []usage
	for range 50 {
		cur, err := sl.usage()
		if err != nil {
			return nil, err
		}
		if prev != nil && cur[0].FDs == prev[0].FDs && cur[1].FDs == prev[1].FDs {
			return cur, nil
		}
		prev = cur
		time.Sleep(200 * time.Millisecond) // sampling interval
	}
	return prev, nil
}

// settledUsageAtMost waits until the anchors hold no more descriptors
// than base.
func (sl *slot) settledUsageAtMost(base []usage, timeout time.Duration) ([]usage, error) {
	deadline := time.Now().Add(timeout)
	for {
		cur, err := sl.usage()
		if err != nil {
			return nil, err
		}
		if cur[0].FDs <= base[0].FDs && cur[1].FDs <= base[1].FDs {
			return cur, nil
		}
		if time.Now().After(deadline) {
			return cur, fmt.Errorf("descriptors: source %d (start %d), destination %d (start %d) after %v idle",
				cur[0].FDs, base[0].FDs, cur[1].FDs, base[1].FDs, timeout)
		}
		time.Sleep(200 * time.Millisecond) // sampling interval
	}
}

func (sl *slot) usage() ([]usage, error) {
	sl.mu.Lock()
	tr := sl.cur
	sl.mu.Unlock()
	if tr == nil {
		return nil, errors.New("no tunnel")
	}
	var us []usage
	for _, p := range []*proc{tr.src, tr.dst} {
		u, err := procUsage(p.cmd.Process.Pid)
		if err != nil {
			return nil, fmt.Errorf("%s: %w (exited? see %s)", p.name, err, p.log.Name())
		}
		us = append(us, u)
	}
	return us, nil
}

// injectFaults hits a random slot with a random fault every cfg.faults.
func (s *soak) injectFaults(ctx context.Context, slots []*slot) {
	if s.cfg.faults <= 0 {
		return
	}
	tick := time.NewTicker(s.cfg.faults)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		sl := slots[s.rng.intn(len(slots))]
		fp, end := sl.srcFP, "source"
		if s.rng.intn(2) == 0 {
			fp, end = sl.dstFP, "destination"
		}
		kinds := []string{"reset", "blackhole", "latency", "bandwidth", "segments"}
		kind := kinds[s.rng.intn(len(kinds))]
		f := sl.beginFault()
		from := time.Now()
		switch kind {
		case "reset":
			fp.Reset()
		case "blackhole":
			fp.Blackhole()
			// Until the proxy must have noticed, then forget the dead
			// connection (as a NAT would).
			sleepCtx(ctx, 3*s.cfg.ping)
			fp.DropBlackholed()
		case "latency":
			fp.SetFaults(faultproxy.Faults{Latency: 30 * time.Millisecond, Jitter: 30 * time.Millisecond})
			sleepCtx(ctx, 3*time.Second)
			fp.SetFaults(faultproxy.Faults{})
		case "bandwidth":
			fp.SetFaults(faultproxy.Faults{Bandwidth: 1 << 20})
			sleepCtx(ctx, 3*time.Second)
			fp.SetFaults(faultproxy.Faults{})
		case "segments":
			fp.SetFaults(faultproxy.Faults{Segment: 1 + s.rng.intn(16)})
			sleepCtx(ctx, time.Second)
			fp.SetFaults(faultproxy.Faults{})
		}
		sl.endFault(f)
		s.faults.Add(1)
		s.mu.Lock()
		s.faultKinds[kind]++
		fmt.Fprintf(s.journal, "%s fault: %s of slot %d's %s until %s\n", from.UTC().Format(journalTime), kind, sl.id, end, time.Now().UTC().Format(journalTime))
		s.mu.Unlock()
		if s.cfg.verbose {
			fmt.Fprintf(s.out, "%v fault: %s of slot %d's %s\n", time.Since(s.started).Round(time.Millisecond), kind, sl.id, end)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// sampleLoop reads the resources every second and prints a status line
// every cfg.report.
func (s *soak) sampleLoop(ctx context.Context, anchor *slot) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastReport := time.Now()
	// The machine's load and the CPU time its hypervisor took (steal):
	// a process that gets no CPU for seconds looks like a fault.
	journaled, reported := readMachine(), readMachine()
	for ticks := 1; ; ticks++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if ticks%10 == 0 {
			if m := readMachine(); m.ok {
				if journaled.ok {
					s.mu.Lock()
					fmt.Fprintf(s.journal, "%s machine: load %.1f, CPU steal %.0f%% over the last 10 s\n", time.Now().UTC().Format(journalTime), m.Load1, 100*m.StealShare(journaled.Machine))
					s.mu.Unlock()
				}
				journaled = m
			}
		}
		sm := sample{at: time.Since(s.started)}
		if m, err := s.d.metric("go_goroutines", "go_memstats_heap_inuse_bytes"); err == nil {
			sm.goroutines, sm.heapKB = int(m["go_goroutines"]), int(m["go_memstats_heap_inuse_bytes"])/1024
		}
		sm.tunneld, _ = procUsage(s.d.cmd.Process.Pid)
		sm.anchors, _ = anchor.usage()
		s.mu.Lock()
		s.samples = append(s.samples, sm)
		s.mu.Unlock()
		if time.Since(lastReport) >= s.cfg.report {
			lastReport = time.Now()
			line := s.status(sm)
			if m := readMachine(); m.ok && reported.ok {
				line += fmt.Sprintf(" | machine load %.1f, steal %.0f%%", m.Load1, 100*m.StealShare(reported.Machine))
				reported = m
			}
			fmt.Fprintln(s.out, line)
		}
	}
}

// machineReading is a procstat.Machine, ok if it could be read (Linux).
type machineReading struct {
	procstat.Machine
	ok bool
}

func readMachine() machineReading {
	m, err := procstat.ReadMachine()
	return machineReading{m, err == nil}
}

func (s *soak) status(sm sample) string {
	s.mu.Lock()
	unexp := s.nUnexp
	s.mu.Unlock()
	var anchors string
	if len(sm.anchors) == 2 {
		anchors = fmt.Sprintf(" | anchor src %d fds %d MiB, dst %d fds %d MiB", sm.anchors[0].FDs, sm.anchors[0].RSSKB>>10, sm.anchors[1].FDs, sm.anchors[1].RSSKB>>10)
	}
	return fmt.Sprintf("%6v tunnels %d/%d conns %d (bulk %d, echo %d, churn %d) %d MiB | faults %d, reconnects %d, injected errors %d, UNEXPECTED %d | tunneld %d goroutines, heap %d MiB, RSS %d MiB, %d fds%s",
		sm.at.Round(time.Second), s.tunnelsOpened.Load(), s.tunnelsClosed.Load(), s.conns.Load(), s.bulks.Load(), s.echoes.Load(), s.churns.Load(), s.bytes.Load()>>20,
		s.faults.Load(), s.reconnects.Load(), s.injected.Load(), unexp,
		sm.goroutines, sm.heapKB>>10, sm.tunneld.RSSKB>>10, sm.tunneld.FDs, anchors)
}

// checkGrowth compares the peak RSS of the first and last thirds of the
// run, for tunneld and the anchors.
func (s *soak) checkGrowth() {
	s.mu.Lock()
	samples := append([]sample(nil), s.samples...)
	s.mu.Unlock()
	if len(samples) < 9 {
		fmt.Fprintf(s.out, "memory: too few samples (%d) to judge growth\n", len(samples))
		return
	}
	third := len(samples) / 3
	peak := func(ss []sample, f func(sample) int) int {
		m := 0
		for _, x := range ss {
			m = max(m, f(x))
		}
		return m
	}
	for _, w := range []struct {
		name string
		f    func(sample) int
	}{
		{"tunneld RSS", func(x sample) int { return x.tunneld.RSSKB }},
		{"tunneld goroutines", func(x sample) int { return x.goroutines * 64 }}, // scaled: 64 KiB a goroutine, for the same rule
		{"anchor source RSS", func(x sample) int { return anchorRSS(x, 0) }},
		{"anchor destination RSS", func(x sample) int { return anchorRSS(x, 1) }},
	} {
		first, last := peak(samples[:third], w.f), peak(samples[len(samples)-third:], w.f)
		limit := int(float64(first)*(1+s.cfg.rssGrowth)) + 16<<10
		verdict := "flat"
		if last > limit {
			verdict = "GROWING"
			s.fail("%s grew: peak %d in the first third of the run, %d in the last (limit %d)", w.name, first, last, limit)
		}
		unit := "KiB"
		if strings.Contains(w.name, "goroutines") {
			first, last, unit = first/64, last/64, ""
		}
		fmt.Fprintf(s.out, "%-24s first third peak %7d %s, last third peak %7d %s: %s\n", w.name, first, unit, last, unit, verdict)
	}
}

func anchorRSS(x sample, i int) int {
	if len(x.anchors) != 2 {
		return 0
	}
	return x.anchors[i].RSSKB
}

func waitGoroutines(d *tunneld, base int, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		g, err := d.goroutines()
		if err != nil {
			return 0, err
		}
		if g <= base {
			return g, nil
		}
		if time.Now().After(deadline) {
			return g, fmt.Errorf("%d goroutines %v after the last tunnel closed, %d at the start", g, timeout, base)
		}
		time.Sleep(200 * time.Millisecond) // sampling interval
	}
}

func (s *soak) printSummary(res *result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	res.counts = map[string]int64{
		"tunnels opened": s.tunnelsOpened.Load(), "tunnels closed": s.tunnelsClosed.Load(),
		"connections": s.conns.Load(), "bulk transfers": s.bulks.Load(), "echo sessions": s.echoes.Load(),
		"churned connections": s.churns.Load(), "MiB checked": s.bytes.Load() >> 20,
		"faults injected": s.faults.Load(), "reconnections": s.reconnects.Load(),
		"errors explained by faults": s.injected.Load(), "unexpected errors": s.nUnexp,
		"corrupted transfers (service side)": s.svc.corrupt.Load(),
	}
	if n := s.svc.corrupt.Load(); n > 0 {
		s.nUnexp += n
		res.counts["unexpected errors"] = s.nUnexp
		s.unexpected = append(s.unexpected, fmt.Sprintf("%d transfers arrived corrupted at the service", n))
	}
	res.unexpected = append(res.unexpected, s.unexpected...)
	var keys []string
	for k := range res.counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintln(s.out, "summary:")
	for _, k := range keys {
		fmt.Fprintf(s.out, "  %-36s %d\n", k, res.counts[k])
	}
	var kinds []string
	for k, n := range s.faultKinds {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(kinds)
	fmt.Fprintf(s.out, "  faults by kind: %s; slowest echo %v\n", strings.Join(kinds, ", "), time.Duration(s.worstEcho.Load()).Round(time.Millisecond))
	if len(res.unexpected) == 0 {
		fmt.Fprintln(s.out, "PASS: no error but the injected ones, no leak, no growth")
		return
	}
	fmt.Fprintf(s.out, "FAIL: %d unexpected (logs kept in %s):\n", s.nUnexp, s.logDir)
	for _, u := range res.unexpected {
		fmt.Fprintln(s.out, "  "+u)
	}
}
