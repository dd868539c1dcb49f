package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Scenario names, in the order they run.
var allScenarios = []string{"bulk", "cpu", "rtt", "fair", "conns", "idle"}

// Config is one harness run. The zero value is not usable: parseFlags
// fills in the defaults.
type Config struct {
	// Scenarios to run (names from allScenarios).
	Scenarios []string
	// Size is the bulk transfer size per direction, in bytes.
	Size int64
	// Transports: "plain" and/or "tls".
	Transports []string
	// Conns is the number of simultaneous connections of the conns
	// scenario and of idle connections to each localproxy in the idle
	// scenario.
	Conns int
	// Tunnels is the number of open tunnels (two connected peers each) of
	// the idle scenario.
	Tunnels int
	// Runs per scenario; the median is reported.
	Runs int
	// RTTCount is the number of timed round trips of an rtt measurement.
	RTTCount int
	// Verify is how bulk data is checked: every byte against the
	// expected stream, or by SHA-256.
	Verify verifyMode
	// FairTime bounds one rtt measurement of the fair scenario.
	FairTime time.Duration
	// JSON prints the results as JSON instead of tables.
	JSON bool
	// CPUProfileDir, when set, receives perf(1) profiles of every process
	// during the bulk runs.
	CPUProfileDir string
	// BinDir holds prebuilt tunneld and localproxy binaries; "" builds them
	// with the go command into a temporary directory.
	BinDir string
	// Quiet suppresses progress lines on stderr.
	Quiet bool
}

func (c *Config) has(s string) bool { return slices.Contains(c.Scenarios, s) }

func main() {
	if len(os.Args) > 1 && os.Args[1] == "relay" {
		os.Exit(relayMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, cfg, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, stderr io.Writer) (Config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	scen := fs.String("scenarios", strings.Join(allScenarios, ","), "comma-separated scenarios: "+strings.Join(allScenarios, ","))
	size := fs.String("size", "256MiB", "bulk transfer size per direction (B, KiB, MiB, GiB; a bare number is MiB)")
	verify := fs.String("verify", "compare", "how bulk data is checked: compare (every byte against the expected stream) or sha256 (slower: it caps the baseline)")
	tlsOnly := fs.Bool("tls", false, "measure TLS (wss://) only; with -plain too, both")
	plainOnly := fs.Bool("plain", false, "measure plain ws:// only; with -tls too, both")
	var cfg Config
	fs.IntVar(&cfg.Conns, "conns", 1000, "simultaneous connections (conns) and idle connections per localproxy (idle)")
	fs.IntVar(&cfg.Tunnels, "tunnels", 2000, "open tunnels with both peers connected (idle)")
	fs.IntVar(&cfg.Runs, "runs", 3, "runs per scenario; the median is reported")
	fs.IntVar(&cfg.RTTCount, "rtt-count", 2000, "timed 64-byte round trips per rtt measurement")
	fs.DurationVar(&cfg.FairTime, "fair-time", 3*time.Second, "longest rtt measurement under load (fair); it stops earlier after -rtt-count round trips")
	fs.BoolVar(&cfg.JSON, "json", false, "print the results as JSON")
	fs.StringVar(&cfg.CPUProfileDir, "cpuprofile", "", "directory for perf(1) CPU profiles of every process during the bulk runs")
	fs.StringVar(&cfg.BinDir, "bin", "", "directory with prebuilt tunneld and localproxy (default: go build into a temporary directory)")
	fs.BoolVar(&cfg.Quiet, "q", false, "no progress lines on stderr")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: go run ./bench [flags]\n\nEnd-to-end benchmark of tunneld + localproxy against a plain 3-hop TCP relay (docs/bench.md).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for s := range strings.SplitSeq(*scen, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !slices.Contains(allScenarios, s) {
			return Config{}, fmt.Errorf("-scenarios: unknown scenario %q (want some of %s)", s, strings.Join(allScenarios, ","))
		}
		if !slices.Contains(cfg.Scenarios, s) {
			cfg.Scenarios = append(cfg.Scenarios, s)
		}
	}
	if len(cfg.Scenarios) == 0 {
		return Config{}, errors.New("-scenarios: none given")
	}
	n, err := parseSize(*size)
	if err != nil {
		return Config{}, fmt.Errorf("-size: %w", err)
	}
	cfg.Size = n
	switch *verify {
	case "compare":
		cfg.Verify = verifyCompare
	case "sha256":
		cfg.Verify = verifySHA256
	default:
		return Config{}, fmt.Errorf("-verify: %q is neither compare nor sha256", *verify)
	}
	switch {
	case *tlsOnly && !*plainOnly:
		cfg.Transports = []string{"tls"}
	case *plainOnly && !*tlsOnly:
		cfg.Transports = []string{"plain"}
	default:
		cfg.Transports = []string{"plain", "tls"}
	}
	switch {
	case cfg.Size < 1<<20:
		return Config{}, errors.New("-size: at least 1MiB")
	case cfg.Conns < 1:
		return Config{}, errors.New("-conns: at least 1")
	case cfg.Tunnels < 1:
		return Config{}, errors.New("-tunnels: at least 1")
	case cfg.Runs < 1:
		return Config{}, errors.New("-runs: at least 1")
	case cfg.RTTCount < 10:
		return Config{}, errors.New("-rtt-count: at least 10")
	case cfg.FairTime <= 0:
		return Config{}, errors.New("-fair-time: must be positive")
	}
	return cfg, nil
}

// parseSize reads "256MiB", "1GiB", "4096KiB", "1048576B" or "256" (MiB).
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}}
	mult := int64(1 << 20)
	num := strings.TrimSpace(s)
	for _, u := range units {
		if v, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(v), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size such as 256MiB or 1GiB", s)
	}
	return n * mult, nil
}

// progress prints a timestamped progress line unless quiet.
type progress struct {
	w     io.Writer
	start time.Time
}

func (p *progress) printf(format string, args ...any) {
	if p.w == nil {
		return
	}
	fmt.Fprintf(p.w, "[%6.1fs] %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}
