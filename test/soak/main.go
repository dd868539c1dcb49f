// Command soak runs sectun's real binaries under a mixed, churning load with
// injected network faults, and checks that nothing leaks and nothing fails
// but what the faults explain:
//
//	go run ./test/soak                       # 1 minute, the defaults
//	go run ./test/soak -duration 4h -tunnels 8 -report 1m
//
// It builds tunneld and localproxy (or takes them from -bin), starts
// tunneld on 127.0.0.1 with a fresh data directory, and runs -tunnels
// tunnel slots. Slot 0 is an anchor: one tunnel for the whole run, whose
// two localproxies are checked for descriptor and memory growth. The other
// slots open a tunnel, serve it for a random while (-life), close it with
// CloseTunnel and open the next. Every localproxy reaches tunneld through
// its own fault proxy (internal/faultproxy). Per tunnel, workers mix bulk
// transfers (random sizes, every byte checked at both ends), interactive
// echoes (latency recorded) and connection churn (short connections opened
// and closed quickly). Every -faults, a fault hits a random slot: a reset
// or a blackhole of one end's connection to tunneld (the proxy must notice
// within its keepalive, reconnect with its client token, and carry on), a
// latency or bandwidth or tiny-segment spell.
//
// An operation that fails within -grace of a fault on its tunnel is
// counted as an injected error; any other failure, and any corrupted byte
// ever, is an unexpected error. At the end the workload stops, every
// tunnel is closed, and the run fails (exit 1) if there was an unexpected
// error, if tunneld's goroutines are not back to their initial count, if
// the anchor localproxies hold more descriptors than at the start, or if
// tunneld's or the anchors' resident memory grew between the first and the
// last third of the run by more than -rss-growth. A status line is printed
// every -report.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// config holds the command's options.
type config struct {
	duration  time.Duration
	tunnels   int
	life      time.Duration
	faults    time.Duration
	grace     time.Duration
	report    time.Duration
	ping      time.Duration
	conns     int
	maxBulk   int64
	rssGrowth float64
	bin       string
	logs      string
	seed      uint64
	verbose   bool
}

func main() {
	var cfg config
	flag.DurationVar(&cfg.duration, "duration", time.Minute, "how long the load runs")
	flag.IntVar(&cfg.tunnels, "tunnels", 4, "tunnel slots (slot 0 is the anchor, kept for the whole run)")
	flag.DurationVar(&cfg.life, "life", 20*time.Second, "mean life of a tunnel in the other slots (uniform in [life/2, 3*life/2])")
	flag.DurationVar(&cfg.faults, "faults", 5*time.Second, "interval between injected faults (0: none)")
	flag.DurationVar(&cfg.grace, "grace", 10*time.Second, "failures this long after a fault on their tunnel count as injected (at least twice -ping plus a reconnect)")
	flag.DurationVar(&cfg.report, "report", 10*time.Second, "interval between status lines")
	flag.DurationVar(&cfg.ping, "ping", 2*time.Second, "localproxy websocket.ping_period_ms (a blackhole is noticed after twice this; pongs queue behind bulk data, so keep it well above the worst queueing delay)")
	flag.IntVar(&cfg.conns, "conns", 4, "concurrent workers per tunnel (bulk, echo and churn in turn)")
	flag.Int64Var(&cfg.maxBulk, "max-bulk", 8<<20, "largest bulk transfer per direction, in bytes")
	flag.Float64Var(&cfg.rssGrowth, "rss-growth", 0.5, "allowed growth of the peak RSS from the first to the last third of the run (0.5 = 50%, plus 16 MiB)")
	flag.StringVar(&cfg.bin, "bin", "", "directory holding tunneld and localproxy (default: build them)")
	flag.StringVar(&cfg.logs, "logs", "", "directory for the processes' output (default: a temporary one, kept on failure)")
	flag.Uint64Var(&cfg.seed, "seed", uint64(time.Now().UnixNano()), "random seed")
	flag.BoolVar(&cfg.verbose, "v", false, "log every injected fault and tunnel change")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := run(ctx, cfg, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
	if !res.ok() {
		os.Exit(1)
	}
}
