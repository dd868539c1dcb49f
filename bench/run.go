package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sectun/sectun/tunnel"
)

// env is what every scenario of a run shares.
type env struct {
	cfg     Config
	binDir  string
	workDir string
	log     progress
}

// run runs the harness and prints the report to stdout; progress goes to
// stderr unless cfg.Quiet.
func run(ctx context.Context, cfg Config, stdout, stderr io.Writer) error {
	rep, err := measure(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	if cfg.JSON {
		return rep.printJSON(stdout)
	}
	rep.printText(stdout)
	return nil
}

// measure runs every configured transport and scenario.
func measure(ctx context.Context, cfg Config, stderr io.Writer) (*Report, error) {
	start := time.Now()
	e := &env{cfg: cfg, log: progress{start: start}}
	if !cfg.Quiet {
		e.log.w = stderr
	}
	if _, err := raiseFileLimit(); err != nil {
		return nil, fmt.Errorf("raising the open-file limit: %w", err)
	}
	if err := checkFileLimit(cfg); err != nil {
		return nil, err
	}
	var err error
	e.workDir, err = os.MkdirTemp("", "sectun-bench")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(e.workDir)
	e.binDir = cfg.BinDir
	if e.binDir == "" {
		e.binDir = filepath.Join(e.workDir, "bin")
		e.log.printf("building tunneld and localproxy")
		if err := buildBinaries(ctx, e.binDir); err != nil {
			return nil, err
		}
	}
	if cfg.CPUProfileDir != "" {
		if err := os.MkdirAll(cfg.CPUProfileDir, 0o755); err != nil {
			return nil, err
		}
	}
	rep := &Report{
		Command:   "go run ./bench " + strings.Join(os.Args[1:], " "),
		Machine:   machine(),
		SizeBytes: cfg.Size, Runs: cfg.Runs, Conns: cfg.Conns, Tunnels: cfg.Tunnels,
	}
	if strings.HasSuffix(os.Args[0], ".test") {
		rep.Command = fmt.Sprintf("(test) -size %s -conns %d -tunnels %d -runs %d", sizeText(cfg.Size), cfg.Conns, cfg.Tunnels, cfg.Runs)
	}
	if cfg.Verify == verifySHA256 && (cfg.has("bulk") || cfg.has("cpu")) {
		e.log.printf("hashing the %s test streams", sizeText(cfg.Size))
		streamSum(seedUp, cfg.Size)
		streamSum(seedDown, cfg.Size)
	}
	for _, tr := range cfg.Transports {
		res, err := e.runTransport(ctx, tr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tr, err)
		}
		rep.Transports = append(rep.Transports, res)
	}
	rep.Seconds = time.Since(start).Seconds()
	rep.Machine.LoadEnd = loadavg()
	return rep, nil
}

// checkFileLimit fails early when the open-file limit cannot hold the
// connections the scenarios open (each counts twice in this process: the
// client end and the target's end, plus the relay chain's).
func checkFileLimit(cfg Config) error {
	need := uint64(0)
	if cfg.has("conns") || cfg.has("idle") {
		need = uint64(cfg.Conns)*2 + 256
	}
	if cfg.has("idle") {
		need = max(need, uint64(cfg.Tunnels)*2+256)
	}
	lim, err := raiseFileLimit()
	if err != nil || lim >= need {
		return err
	}
	return fmt.Errorf("the open-file limit is %d, the scenarios need about %d: raise it (ulimit -n) or lower -conns/-tunnels", lim, need)
}

// setup is the running system of one transport.
type setup struct {
	transport string
	tunneld   *tunneld
	lp        *localproxies
	chain     []*proc // relay hops, first hop first
	relay     string  // first hop's address
	// tlsChain is the TLS relay baseline (TLS only): 3 hops whose links
	// are TLS, each hop re-encrypting; tlsRelay its first hop's address.
	tlsChain []*proc
	tlsRelay string
	// refAddr is the reference local proxy pair's source (TLS only; ""
	// when the reference is absent).
	refAddr string
	target  *target
}

// sectunProcs returns the three processes of the data path.
func (s *setup) sectunProcs() []*proc { return []*proc{s.tunneld.proc, s.lp.src, s.lp.dst} }

// alive reports a process of the setup that has ended.
func (s *setup) alive() error {
	for _, p := range append(s.sectunProcs(), s.chain...) {
		if err := p.alive(); err != nil {
			return err
		}
	}
	return nil
}

func (e *env) runTransport(ctx context.Context, transport string) (*TransportResult, error) {
	var ps procs
	defer ps.stopAll()
	tgt, err := newTarget()
	if err != nil {
		return nil, err
	}
	defer tgt.close()
	s := &setup{transport: transport, target: tgt}
	dir := filepath.Join(e.workDir, transport)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	e.log.printf("%s: starting tunneld, two localproxies and 3 relay hops", transport)
	s.tunneld, err = startTunneld(ctx, &ps, e.binDir, filepath.Join(dir, "tunneld"), transport == "tls")
	if err != nil {
		return nil, err
	}
	tun, err := s.tunneld.openTunnel(ctx, "bench", "A", "B")
	if err != nil {
		return nil, s.tunneld.errorf("%v", err)
	}
	s.lp, err = startLocalproxies(ctx, &ps, e.binDir, dir, s.tunneld, tun, []string{"A", "B"}, tgt.addr(), max(e.cfg.Conns, 128)+128)
	if err != nil {
		return nil, err
	}
	s.chain, s.relay, err = startRelayChain(ctx, &ps, tgt.addr(), 3, false)
	if err != nil {
		return nil, err
	}
	warm := []string{s.lp.addrs["A"], s.lp.addrs["B"], s.relay}
	if transport == "tls" {
		e.log.printf("%s: starting the TLS relay baseline (3 hops, TLS between them)", transport)
		s.tlsChain, s.tlsRelay, err = startRelayChain(ctx, &ps, tgt.addr(), 3, true)
		if err != nil {
			return nil, err
		}
		warm = append(warm, s.tlsRelay)
		if bin := referenceBinary(); bin != "" {
			e.log.printf("%s: starting the reference local proxy pair (%s) through the same tunneld", transport, bin)
			s.refAddr, err = startReferencePair(ctx, &ps, bin, dir, s.tunneld, tgt.addr())
			if err != nil {
				return nil, fmt.Errorf("reference local proxy pair: %w", err)
			}
			warm = append(warm, s.refAddr)
		} else {
			e.log.printf("%s: no reference local proxy (%s or ../shared/peers/localproxy, and openssl): its row is skipped", transport, referenceEnv)
		}
	}
	// Warm up every path (first streams, buffers, TLS session).
	for _, addr := range warm {
		if _, err := pingPong(ctx, addr, 50); err != nil {
			return nil, e.failed(s, "warm-up round trips", err)
		}
		if _, err := bulk(ctx, addr, 1<<20, e.cfg.Verify, nil); err != nil {
			return nil, e.failed(s, "warm-up transfer", err)
		}
	}

	res := &TransportResult{Transport: transport}
	steps := []struct {
		on  bool
		run func(context.Context, *setup, *TransportResult) error
	}{
		{e.cfg.has("bulk") || e.cfg.has("cpu"), e.scenarioBulk},
		{e.cfg.has("rtt"), e.scenarioRTT},
		{e.cfg.has("fair"), e.scenarioFair},
		{e.cfg.has("conns"), e.scenarioConns},
		{e.cfg.has("idle"), func(ctx context.Context, s *setup, res *TransportResult) error {
			return e.scenarioIdleLocalproxy(ctx, dir, s, res)
		}},
		{e.cfg.has("idle"), func(ctx context.Context, s *setup, res *TransportResult) error {
			return e.scenarioIdleTunneld(ctx, &ps, dir, s, res)
		}},
	}
	for _, st := range steps {
		if !st.on {
			continue
		}
		if err := st.run(ctx, s, res); err != nil {
			return nil, err
		}
		if err := s.alive(); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// failed wraps a scenario error with the last output of every process of
// the setup.
func (e *env) failed(s *setup, what string, err error) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %v", what, err)
	for _, p := range s.sectunProcs() {
		fmt.Fprintf(&b, "\n--- last output of %s:\n%s", p.name, p.output())
	}
	return errors.New(b.String())
}

// cpuOf returns the CPU time of each process.
func cpuOf(ps []*proc) ([]time.Duration, error) {
	out := make([]time.Duration, len(ps))
	for i, p := range ps {
		d, err := cpuTime(p.pid())
		if err != nil {
			return nil, err
		}
		out[i] = d
	}
	return out, nil
}

func mbps(size int64, d time.Duration) float64 { return float64(size) / 1e6 / d.Seconds() }

// scenarioBulk measures one-connection throughput both ways and, from the
// same runs, CPU seconds per GiB of each process.
func (e *env) scenarioBulk(ctx context.Context, s *setup, res *TransportResult) error {
	size := e.cfg.Size
	var sUp, sDown, rUp, rDown, tUp, tDown, xUp, xDown []float64
	sectunCPU := make([]time.Duration, 3)
	relayCPU := make([]time.Duration, 3)
	tlsCPU := make([]time.Duration, 3)
	var selfSectun time.Duration
	measureOne := func(addr string, ps []*proc, acc []time.Duration, self *time.Duration) (bulkTimes, error) {
		before, err := cpuOf(ps)
		if err != nil {
			return bulkTimes{}, err
		}
		self0 := selfCPU()
		bt, err := bulk(ctx, addr, size, e.cfg.Verify, nil)
		if err != nil {
			return bt, err
		}
		after, err := cpuOf(ps)
		if err != nil {
			return bt, err
		}
		for i := range acc {
			acc[i] += after[i] - before[i]
		}
		if self != nil {
			*self += selfCPU() - self0
		}
		return bt, nil
	}
	for run := range e.cfg.Runs {
		e.log.printf("%s: bulk run %d/%d (%s each way)", s.transport, run+1, e.cfg.Runs, sizeText(size))
		bt, err := measureOne(s.lp.addrs["A"], s.sectunProcs(), sectunCPU, &selfSectun)
		if err != nil {
			return e.failed(s, "bulk through sectun", err)
		}
		sUp, sDown = append(sUp, mbps(size, bt.up)), append(sDown, mbps(size, bt.down))
		bt, err = measureOne(s.relay, s.chain, relayCPU, nil)
		if err != nil {
			return e.failed(s, "bulk through the relay", err)
		}
		rUp, rDown = append(rUp, mbps(size, bt.up)), append(rDown, mbps(size, bt.down))
		if s.tlsRelay != "" {
			bt, err = measureOne(s.tlsRelay, s.tlsChain, tlsCPU, nil)
			if err != nil {
				return e.failed(s, "bulk through the TLS relay", err)
			}
			tUp, tDown = append(tUp, mbps(size, bt.up)), append(tDown, mbps(size, bt.down))
		}
		if s.refAddr != "" {
			bt, err = bulk(ctx, s.refAddr, size, e.cfg.Verify, nil)
			if err != nil {
				return e.failed(s, "bulk through the reference local proxy pair", err)
			}
			xUp, xDown = append(xUp, mbps(size, bt.up)), append(xDown, mbps(size, bt.down))
		}
	}
	if e.cfg.has("bulk") {
		share := 0.75 // issue 18's targets
		if s.transport == "tls" {
			share = 0.40
		}
		res.add("bulk up", "MB/s", sUp, rUp, "relay", minRatio(share))
		res.add("bulk down", "MB/s", sDown, rDown, "relay", minRatio(share))
		if len(tUp) > 0 {
			res.add("bulk up", "MB/s", sUp, tUp, "TLS relay", minRatio(0.95))
			res.add("bulk down", "MB/s", sDown, tDown, "TLS relay", minRatio(0.95))
		}
		if len(xUp) > 0 {
			res.add("bulk up", "MB/s", sUp, xUp, "reference pair", minRatio(2))
			res.add("bulk down", "MB/s", sDown, xDown, "reference pair", minRatio(2))
		}
	}
	if e.cfg.has("cpu") {
		gib := float64(2*size*int64(e.cfg.Runs)) / (1 << 30)
		per := func(d time.Duration) []float64 { return []float64{d.Seconds() / gib} }
		names := []string{"tunneld", "localproxy src", "localproxy dst"}
		var sum, rsum time.Duration
		for i, n := range names {
			res.add("CPU "+n, "CPU-s/GiB", per(sectunCPU[i]), per(relayCPU[i]), fmt.Sprintf("relay hop %d", i+1), nil)
			sum += sectunCPU[i]
			rsum += relayCPU[i]
		}
		res.add("CPU three processes", "CPU-s/GiB", per(sum), per(rsum), "relay", atMost(4, "CPU-s/GiB"))
		if s.tlsRelay != "" {
			var tsum time.Duration
			for _, d := range tlsCPU {
				tsum += d
			}
			res.add("CPU three processes", "CPU-s/GiB", per(sum), per(tsum), "TLS relay", nil)
		}
		res.add("CPU harness (client+target)", "CPU-s/GiB", per(selfSectun), nil, "", nil)
		res.notef("CPU per GiB: CPU time of each process (sum of /proc/PID/task/*/schedstat) over the %d bulk runs, %.2f GiB moved (both directions counted); the harness row is this process (client, checks, target server)", e.cfg.Runs, gib)
	}
	if e.cfg.CPUProfileDir != "" {
		return e.profileBulk(ctx, s, res)
	}
	return nil
}

func micros(d time.Duration) float64 { return float64(d) / 1e3 }

// rttStats are the percentiles of one series, in µs.
type rttStats struct{ p50, p90, p99 []float64 }

func (r *rttStats) add(samples []time.Duration) {
	sorted := slices.Clone(samples)
	slices.Sort(sorted)
	r.p50 = append(r.p50, micros(percentile(sorted, 0.50)))
	r.p90 = append(r.p90, micros(percentile(sorted, 0.90)))
	r.p99 = append(r.p99, micros(percentile(sorted, 0.99)))
}

// scenarioRTT measures 64-byte round trips on an idle tunnel.
func (e *env) scenarioRTT(ctx context.Context, s *setup, res *TransportResult) error {
	var st, rt rttStats
	for run := range e.cfg.Runs {
		e.log.printf("%s: rtt run %d/%d (%d round trips)", s.transport, run+1, e.cfg.Runs, e.cfg.RTTCount)
		samples, err := pingPong(ctx, s.lp.addrs["A"], e.cfg.RTTCount)
		if err != nil {
			return e.failed(s, "rtt through sectun", err)
		}
		st.add(samples)
		samples, err = pingPong(ctx, s.relay, e.cfg.RTTCount)
		if err != nil {
			return e.failed(s, "rtt through the relay", err)
		}
		rt.add(samples)
	}
	res.add("rtt idle p50", "µs", st.p50, rt.p50, "relay", maxRatio(2))
	res.add("rtt idle p90", "µs", st.p90, rt.p90, "relay", nil)
	res.add("rtt idle p99", "µs", st.p99, rt.p99, "relay", nil)
	return nil
}

// fairMinSamples is the fewest round trips of a fair measurement, even
// when they take longer than FairTime.
const fairMinSamples = 5

// fairOnce times RTTCount round trips (or as many as fit in FairTime, but
// at least fairMinSamples) on rttAddr while another connection carries data both ways as fast as it
// can on loadAddr. It returns the
// round trips and the load's rate (MB/s, both directions together).
func (e *env) fairOnce(ctx context.Context, rttAddr, loadAddr string) ([]time.Duration, float64, error) {
	// The round-trip connection is set up before the load starts, so that
	// its setup is not part of the measurement.
	p, err := newPinger(ctx, rttAddr)
	if err != nil {
		return nil, 0, err
	}
	defer p.close()
	load, err := startLoad(ctx, loadAddr)
	if err != nil {
		return nil, 0, fmt.Errorf("load connection: %w", err)
	}
	n0 := load.received.Load() + load.sent.Load()
	t0 := time.Now()
	stop := make(chan struct{})
	timer := time.AfterFunc(e.cfg.FairTime, func() { close(stop) })
	samples, err := p.run(e.cfg.RTTCount, fairMinSamples, stop)
	timer.Stop()
	rate := float64(load.received.Load()+load.sent.Load()-n0) / 1e6 / time.Since(t0).Seconds()
	load.stop()
	return samples, rate, err
}

// scenarioFair measures round trips while another connection of the same
// tunnel carries bulk data both ways: of the same service, then of the
// other service.
func (e *env) scenarioFair(ctx context.Context, s *setup, res *TransportResult) error {
	var same, other, relay rttStats
	var rates [3][]float64
	fewest := [3]int{math.MaxInt, math.MaxInt, math.MaxInt}
	for run := range e.cfg.Runs {
		e.log.printf("%s: fair run %d/%d", s.transport, run+1, e.cfg.Runs)
		for i, v := range []struct {
			name, rtt, load string
			st              *rttStats
		}{
			{"same service through sectun", s.lp.addrs["A"], s.lp.addrs["A"], &same},
			{"other service through sectun", s.lp.addrs["A"], s.lp.addrs["B"], &other},
			{"through the relay", s.relay, s.relay, &relay},
		} {
			samples, rate, err := e.fairOnce(ctx, v.rtt, v.load)
			if err != nil {
				return e.failed(s, "fair, "+v.name, err)
			}
			v.st.add(samples)
			rates[i] = append(rates[i], rate)
			fewest[i] = min(fewest[i], len(samples))
		}
	}
	res.add("rtt under bulk, same service p50", "µs", same.p50, relay.p50, "relay", atMost(1000, "µs"))
	res.add("rtt under bulk, same service p99", "µs", same.p99, relay.p99, "relay", atMost(10000, "µs"))
	res.add("rtt under bulk, other service p50", "µs", other.p50, relay.p50, "relay", atMost(1000, "µs"))
	res.add("rtt under bulk, other service p99", "µs", other.p99, relay.p99, "relay", atMost(10000, "µs"))
	res.add("bulk rate during those round trips", "MB/s", rates[0], rates[2], "relay", nil)
	res.notef("rtt under bulk: up to %d round trips (at most %v) back to back on one connection while another carries data both ways as fast as it can; fewest round trips in a run: same service %d, other service %d, relay %d; the bulk rate counts both directions (same-service runs; other service: %.0f MB/s)",
		e.cfg.RTTCount, e.cfg.FairTime, fewest[0], fewest[1], fewest[2], median(rates[1]))
	return nil
}

// scenarioConns opens Conns connections at once through sectun, the relay
// and directly.
func (e *env) scenarioConns(ctx context.Context, s *setup, res *TransportResult) error {
	k := e.cfg.Conns
	var sOK, rOK, dOK []float64
	var s50, s99, r99, d50, d99 []float64
	var firstErr error
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	for run := range e.cfg.Runs {
		e.log.printf("%s: conns run %d/%d (%d at once)", s.transport, run+1, e.cfg.Runs, k)
		r := openMany(ctx, s.lp.addrs["A"], k, 3)
		sOK = append(sOK, float64(r.ok))
		s50, s99 = append(s50, ms(percentile(r.setup, .5))), append(s99, ms(percentile(r.setup, .99)))
		if r.firstErr != nil && firstErr == nil {
			firstErr = r.firstErr
		}
		r = openMany(ctx, s.relay, k, 3)
		rOK, r99 = append(rOK, float64(r.ok)), append(r99, ms(percentile(r.setup, .99)))
		r = openMany(ctx, s.target.addr(), k, 3)
		dOK = append(dOK, float64(r.ok))
		d50, d99 = append(d50, ms(percentile(r.setup, .5))), append(d99, ms(percentile(r.setup, .99)))
		if err := s.alive(); err != nil {
			return err
		}
	}
	// "All succeed" must hold in every run: report the worst.
	worst := func(v []float64) []float64 { return []float64{minOf(v)} }
	res.add(fmt.Sprintf("conns: %d at once, succeeded", k), "count", worst(sOK), worst(rOK), "relay", atLeast(float64(k), fmt.Sprintf("all %d", k)))
	res.add("conns setup p50", "ms", s50, d50, "direct TCP", nil)
	res.add("conns setup p99", "ms", s99, d99, "direct TCP", maxRatio(5))
	res.add("conns setup p99", "ms", s99, r99, "relay", nil)
	res.notef("conns: setup = dial to the first 64-byte echo; every connection then does 2 more round trips and all stay open until all are done; direct TCP succeeded %v of %d", dOK, k)
	if firstErr != nil {
		res.notef("conns: first failure through sectun: %v", firstErr)
	}
	return nil
}

func minOf(v []float64) float64 {
	m := v[0]
	for _, x := range v[1:] {
		m = min(m, x)
	}
	return m
}

// settledRSS waits until the RSS of every process stops changing (five
// samples 200 ms apart within 1%, at most 10 s) and returns it.
func settledRSS(ctx context.Context, ps []*proc) ([]int64, error) {
	deadline := time.Now().Add(10 * time.Second)
	var prev []int64
	stable := 0
	for {
		cur := make([]int64, len(ps))
		for i, p := range ps {
			v, err := rss(p.pid())
			if err != nil {
				return nil, err
			}
			cur[i] = v
		}
		same := prev != nil
		for i := range cur {
			if prev != nil && absDiff(cur[i], prev[i])*100 > prev[i] {
				same = false
			}
		}
		if same {
			stable++
		} else {
			stable = 0
		}
		if stable >= 4 || time.Now().After(deadline) {
			return cur, nil
		}
		prev = cur
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func absDiff(a, b int64) int64 {
	if a > b {
		return a - b
	}
	return b - a
}

func kib(delta int64, n int) float64 { return float64(delta) / 1024 / float64(n) }

// scenarioIdleLocalproxy measures the RSS each localproxy (and each relay
// hop) adds per idle TCP connection. It starts fresh localproxies (on a
// new tunnel of the setup's tunneld) and a fresh relay chain, so that
// memory left over from the other scenarios does not blur the figures.
func (e *env) scenarioIdleLocalproxy(ctx context.Context, dir string, s *setup, res *TransportResult) error {
	k := e.cfg.Conns
	e.log.printf("%s: idle: fresh localproxies and relay hops, %d idle connections through each", s.transport, k)
	var ps procs
	defer ps.stopAll()
	tun, err := s.tunneld.openTunnel(ctx, "idle", "A")
	if err != nil {
		return s.tunneld.errorf("%v", err)
	}
	idleDir := filepath.Join(dir, "idle-lp")
	if err := os.MkdirAll(idleDir, 0o700); err != nil {
		return err
	}
	lp, err := startLocalproxies(ctx, &ps, e.binDir, idleDir, s.tunneld, tun, []string{"A"}, s.target.addr(), k+128)
	if err != nil {
		return err
	}
	chain, relay, err := startRelayChain(ctx, &ps, s.target.addr(), 3, false)
	if err != nil {
		return err
	}
	// One connection each first: the code paths of a connection have
	// run once before the baseline is taken.
	for _, addr := range []string{lp.addrs["A"], relay} {
		if _, err := pingPong(ctx, addr, 1); err != nil {
			return e.failed(s, "idle warm-up", err)
		}
	}
	lps := []*proc{lp.src, lp.dst}
	before, err := settledRSS(ctx, lps)
	if err != nil {
		return err
	}
	conns, err := openIdle(ctx, lp.addrs["A"], k)
	if err != nil {
		return e.failed(s, "idle connections through sectun", err)
	}
	after, err := settledRSS(ctx, lps)
	closeAll(conns)
	if err != nil {
		return err
	}
	rBefore, err := settledRSS(ctx, chain)
	if err != nil {
		return err
	}
	conns, err = openIdle(ctx, relay, k)
	if err != nil {
		return e.failed(s, "idle connections through the relay", err)
	}
	rAfter, err := settledRSS(ctx, chain)
	closeAll(conns)
	if err != nil {
		return err
	}
	var hop int64
	for i := range chain {
		hop += rAfter[i] - rBefore[i]
	}
	hopKiB := []float64{kib(hop, k*len(chain))}
	res.add(fmt.Sprintf("localproxy src RSS per idle conn (%d)", k), "KiB", []float64{kib(after[0]-before[0], k)}, hopKiB, "relay hop", atMost(32, "KiB"))
	res.add(fmt.Sprintf("localproxy dst RSS per idle conn (%d)", k), "KiB", []float64{kib(after[1]-before[1], k)}, hopKiB, "relay hop", atMost(32, "KiB"))
	res.notef("idle localproxy: fresh processes; VmRSS after %d connections (one round trip each, then idle) minus before, divided by %d; src %d -> %d KiB, dst %d -> %d KiB; relay hop: mean of the 3 hops",
		k, k, before[0]>>10, after[0]>>10, before[1]>>10, after[1]>>10)
	return nil
}

// scenarioIdleTunneld measures the RSS a fresh tunneld adds per connected
// idle peer with Tunnels tunnels open, both ends of each connected by a
// tunnel library session of this process.
func (e *env) scenarioIdleTunneld(ctx context.Context, ps *procs, dir string, s *setup, res *TransportResult) error {
	t := e.cfg.Tunnels
	e.log.printf("%s: idle: fresh tunneld, %d tunnels, %d peers", s.transport, t, 2*t)
	d, err := startTunneld(ctx, ps, e.binDir, filepath.Join(dir, "tunneld-idle"), s.transport == "tls")
	if err != nil {
		return err
	}
	defer d.stop()
	if _, err := d.openTunnel(ctx, "warm-up", "S"); err != nil {
		return d.errorf("%v", err)
	}
	base, err := settledRSS(ctx, []*proc{d.proc})
	if err != nil {
		return err
	}
	tunnels := make([]openedTunnel, t)
	if err := parallel(ctx, t, 8, func(i int) error {
		var err error
		tunnels[i], err = d.openTunnel(ctx, fmt.Sprintf("thing-%d", i), "S")
		return err
	}); err != nil {
		return d.errorf("opening tunnels: %v", err)
	}
	opened, err := settledRSS(ctx, []*proc{d.proc})
	if err != nil {
		return err
	}
	e.log.printf("%s: idle: %d tunnels open, connecting %d peers", s.transport, t, 2*t)
	sessions := make([]*tunnel.Session, 2*t)
	defer func() {
		parallel(context.Background(), len(sessions), 64, func(i int) error {
			if sessions[i] != nil {
				sessions[i].Close()
			}
			return nil
		})
	}()
	if err := parallel(ctx, 2*t, 32, func(i int) error {
		tun := tunnels[i/2]
		cfg := tunnel.Config{Mode: tunnel.ModeSource, AccessToken: tun.SourceAccessToken, Endpoint: d.wsURL, TLS: d.tlsConf, DisableReconnect: true}
		if i%2 == 1 {
			cfg.Mode, cfg.AccessToken = tunnel.ModeDestination, tun.DestinationAccessToken
		}
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		var err error
		sessions[i], err = tunnel.Connect(cctx, cfg)
		return err
	}); err != nil {
		return d.errorf("connecting peers: %v", err)
	}
	connected, err := settledRSS(ctx, []*proc{d.proc})
	if err != nil {
		return err
	}
	for _, ss := range sessions {
		select {
		case <-ss.Done():
			return d.errorf("a peer session ended: %v", ss.Err())
		default:
		}
	}
	res.add(fmt.Sprintf("tunneld RSS per idle peer (%d tunnels, %d peers)", t, 2*t), "KiB", []float64{kib(connected[0]-base[0], 2*t)}, nil, "", atMost(64, "KiB"))
	res.add("  of which the peer connections alone", "KiB", []float64{kib(connected[0]-opened[0], 2*t)}, nil, "", nil)
	res.notef("idle tunneld: fresh process; VmRSS %d KiB after one tunnel, %d KiB with %d tunnels open, %d KiB with both peers of each connected (tunnel library sessions in the harness)",
		base[0]>>10, opened[0]>>10, t, connected[0]>>10)
	return nil
}

// parallel calls f(0..n-1) with at most width calls at once and returns
// the first error (the remaining calls are skipped).
func parallel(ctx context.Context, n, width int, f func(i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, width)
	var wg sync.WaitGroup
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := f(i); err != nil {
				cancel(err)
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// loadavg returns the 1, 5 and 15 minute load averages.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), LoadStart: loadavg()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	return m
}
