package proctest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// helperEnv makes the test binary act as the child program: its value
// names what to do (see child).
const helperEnv = "PROCTEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(child(mode))
	}
	goleak.VerifyTestMain(m)
}

// child is the helper program. Modes:
//   - lines:N      print "line i" for i < N, then wait for a signal; exit 0
//   - exit:C       print "bye" and exit with code C
//   - stubborn     print "ready", ignore SIGTERM, wait to be killed
//   - long:N       print one line of N 'x' then "after" and exit 0
//   - partial      print "no newline" without a newline and exit 0
//   - stderr       print "out" on stdout, then "err" on stderr, and exit 0
func child(mode string) int {
	kind, arg, _ := strings.Cut(mode, ":")
	n, _ := strconv.Atoi(arg)
	switch kind {
	case "lines":
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
		var b bytes.Buffer
		for i := range n {
			fmt.Fprintf(&b, "line %d\n", i)
		}
		os.Stdout.Write(b.Bytes())
		fmt.Println("ready")
		<-sig
		fmt.Println("stopping")
		return 0
	case "exit":
		fmt.Println("bye")
		return n
	case "stubborn":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ready")
		time.Sleep(time.Minute)
		return 0
	case "long":
		os.Stdout.WriteString(strings.Repeat("x", n) + "\nafter\n")
		return 0
	case "partial":
		os.Stdout.WriteString("no newline")
		return 0
	case "stderr":
		fmt.Fprintln(os.Stdout, "out")
		os.Stdout.Sync()
		fmt.Fprintln(os.Stderr, "err")
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown mode", mode)
	return 2
}

// startHelper starts the test binary as the child in mode.
func startHelper(t *testing.T, mode string, cfg Config) *Proc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Path = exe
	cfg.Env = append(cfg.Env, helperEnv+"="+mode)
	p, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(5 * time.Second) })
	return p
}

const wait = 10 * time.Second

func TestWaitLineAndStop(t *testing.T) {
	t.Parallel()
	p := startHelper(t, "lines:3", Config{Name: "helper"})
	m, err := p.WaitLine(context.Background(), regexp.MustCompile(`line (\d)`), wait)
	if err != nil || m[1] != "0" {
		t.Fatalf("WaitLine = %q, %v; want line 0", m, err)
	}
	// The cursor moved past line 0: the next match is line 1.
	if m, err = p.WaitLine(context.Background(), regexp.MustCompile(`line (\d)`), wait); err != nil || m[1] != "1" {
		t.Fatalf("second WaitLine = %q, %v; want line 1", m, err)
	}
	if _, err := p.WaitLine(context.Background(), regexp.MustCompile(`^ready$`), wait); err != nil {
		t.Fatal(err)
	}
	p.Stop(wait)
	p.Stop(wait) // idempotent
	if code := p.ExitCode(); code != 0 {
		t.Fatalf("exit code %d, want 0 (the helper handles SIGTERM)", code)
	}
	if got, want := p.Output(), "line 0\nline 1\nline 2\nready\nstopping\n"; got != want {
		t.Fatalf("Output = %q, want %q", got, want)
	}
	if p.Name() != "helper" {
		t.Fatalf("Name = %q", p.Name())
	}
}

func TestWaitLineErrors(t *testing.T) {
	t.Parallel()
	t.Run("exited", func(t *testing.T) {
		p := startHelper(t, "exit:3", Config{})
		_, err := p.WaitLine(context.Background(), regexp.MustCompile(`never`), wait)
		if !errors.Is(err, ErrExited) {
			t.Fatalf("err = %v, want ErrExited", err)
		}
		code, err := p.WaitExit(context.Background(), wait)
		if err != nil || code != 3 {
			t.Fatalf("WaitExit = %d, %v; want 3", code, err)
		}
		if p.Err() == nil {
			t.Fatal("Err() = nil for exit code 3")
		}
		// The line printed before the exit is still found.
		p2 := startHelper(t, "exit:0", Config{})
		<-p2.Done()
		if _, err := p2.WaitLine(context.Background(), regexp.MustCompile(`bye`), wait); err != nil {
			t.Fatalf("a line printed before the exit: %v", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		p := startHelper(t, "lines:0", Config{Name: "quiet"})
		_, err := p.WaitLine(context.Background(), regexp.MustCompile(`never`), 50*time.Millisecond)
		if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "quiet") {
			t.Fatalf("err = %v, want ErrTimeout naming the process", err)
		}
		if _, err := p.WaitExit(context.Background(), 20*time.Millisecond); !errors.Is(err, ErrTimeout) {
			t.Fatalf("WaitExit err = %v, want ErrTimeout", err)
		}
	})
	t.Run("ctx", func(t *testing.T) {
		p := startHelper(t, "lines:0", Config{})
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if _, err := p.WaitLine(ctx, regexp.MustCompile(`never`), 0); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want the ctx's error", err)
		}
	})
}

func TestDrain(t *testing.T) {
	t.Parallel()
	p := startHelper(t, "lines:2", Config{})
	if _, err := p.WaitLine(context.Background(), regexp.MustCompile(`ready`), wait); err != nil {
		t.Fatal(err)
	}
	p.Drain()
	p.Signal(syscall.SIGTERM)
	// Only "stopping" comes after the drain: the earlier lines do not match.
	line, err := p.NextLine(context.Background(), wait)
	if err != nil || line != "stopping" {
		t.Fatalf("NextLine = %q, %v; want stopping", line, err)
	}
	if _, err := p.NextLine(context.Background(), wait); !errors.Is(err, ErrExited) {
		t.Fatalf("NextLine after the last line: %v, want ErrExited", err)
	}
}

// TestBoundedTail checks that a process printing more than Tail lines
// leaves only the last Tail in memory, and that the log and the callback
// still see every line.
func TestBoundedTail(t *testing.T) {
	t.Parallel()
	const n, tail = 5000, 100
	var log bytes.Buffer
	var count atomic.Int64
	p := startHelper(t, fmt.Sprintf("lines:%d", n), Config{
		Tail:   tail,
		Log:    &log,
		OnLine: func(string) { count.Add(1) },
	})
	// WaitLine finds "ready" though thousands of lines came before it.
	if _, err := p.WaitLine(context.Background(), regexp.MustCompile(`^ready$`), wait); err != nil {
		t.Fatal(err)
	}
	p.Stop(wait)
	lines := p.Lines()
	if len(lines) != tail || lines[0] != fmt.Sprintf("line %d", n+2-tail) || lines[tail-1] != "stopping" {
		t.Fatalf("kept %d lines, first %q, last %q", len(lines), lines[0], lines[len(lines)-1])
	}
	if got := p.Dropped(); got != n+2-tail {
		t.Fatalf("Dropped = %d, want %d", got, n+2-tail)
	}
	if got := count.Load(); got != n+2 {
		t.Fatalf("OnLine saw %d lines, want %d", got, n+2)
	}
	if got := strings.Count(log.String(), "\n"); got != n+2 {
		t.Fatalf("log has %d lines, want %d", got, n+2)
	}
	if got := p.Tail(2); got != "ready\nstopping" {
		t.Fatalf("Tail(2) = %q", got)
	}
}

func TestLongAndPartialLines(t *testing.T) {
	t.Parallel()
	p := startHelper(t, fmt.Sprintf("long:%d", 3*MaxLine), Config{})
	if _, err := p.WaitExit(context.Background(), wait); err != nil {
		t.Fatal(err)
	}
	lines := p.Lines()
	if len(lines) != 2 || len(lines[0]) != MaxLine || lines[1] != "after" {
		t.Fatalf("got %d lines (first %d bytes), want a cut line and \"after\"", len(lines), len(lines[0]))
	}
	q := startHelper(t, "partial", Config{})
	if _, err := q.WaitExit(context.Background(), wait); err != nil {
		t.Fatal(err)
	}
	if got := q.Output(); got != "no newline\n" {
		t.Fatalf("Output = %q", got)
	}
}

func TestStderrMerged(t *testing.T) {
	t.Parallel()
	p := startHelper(t, "stderr", Config{})
	if _, err := p.WaitExit(context.Background(), wait); err != nil {
		t.Fatal(err)
	}
	if got := p.Output(); got != "out\nerr\n" {
		t.Fatalf("Output = %q, want both streams", got)
	}
}

func TestStopKillsAfterGrace(t *testing.T) {
	t.Parallel()
	p := startHelper(t, "stubborn", Config{KillWithParent: true})
	if _, err := p.WaitLine(context.Background(), regexp.MustCompile(`ready`), wait); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	p.Stop(100 * time.Millisecond)
	if !p.Exited() || p.ExitCode() != -1 {
		t.Fatalf("after Stop: exited %v, code %d; want killed", p.Exited(), p.ExitCode())
	}
	if d := time.Since(t0); d > wait {
		t.Fatalf("Stop took %v", d)
	}
}

func TestStartError(t *testing.T) {
	t.Parallel()
	if _, err := Start(Config{Path: "/nonexistent/program"}); err == nil {
		t.Fatal("Start of a missing program succeeded")
	}
}

// TestConcurrentWaiters checks that concurrent WaitLine calls each take
// distinct lines. The waiter that takes "ready" stops the helper; the
// others then end with ErrExited.
func TestConcurrentWaiters(t *testing.T) {
	t.Parallel()
	const n = 200
	p := startHelper(t, fmt.Sprintf("lines:%d", n), Config{})
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				m, err := p.WaitLine(context.Background(), regexp.MustCompile(`^(line \d+|ready)$`), wait)
				if err != nil {
					if !errors.Is(err, ErrExited) {
						t.Error(err)
					}
					return
				}
				if m[0] == "ready" {
					p.Signal(syscall.SIGTERM)
					continue
				}
				mu.Lock()
				if seen[m[0]] {
					t.Errorf("%q taken twice", m[0])
				}
				seen[m[0]] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("took %d distinct lines, want %d", len(seen), n)
	}
}

func BenchmarkWrite(b *testing.B) {
	p := &Proc{tail: DefaultTail, changed: make(chan struct{})}
	w := (*lineWriter)(p)
	chunk := bytes.Repeat([]byte("time=2026-11-22T10:00:00Z level=INFO msg=\"stream opened\" stream_id=1\n"), 64)
	b.ReportAllocs()
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		w.Write(chunk)
	}
}

// FuzzLineSplit feeds input to the line writer in pieces cut at
// arbitrary points and compares the lines with a plain split: lines end
// at '\n', lose one trailing '\r', are cut at MaxLine bytes, and a last
// line without '\n' is kept only by the exit flush (not checked here).
func FuzzLineSplit(f *testing.F) {
	f.Add([]byte("a\nb\r\n\nc"), uint16(1))
	f.Add([]byte("one line\n"), uint16(3))
	f.Add(bytes.Repeat([]byte("x"), MaxLine+10), uint16(7000))
	f.Fuzz(func(t *testing.T, in []byte, step uint16) {
		p := &Proc{tail: 1 << 20, changed: make(chan struct{})}
		w := (*lineWriter)(p)
		n := int(step)%(len(in)+1) + 1
		for rest := in; len(rest) > 0; {
			k := min(n, len(rest))
			if m, err := w.Write(rest[:k]); m != k || err != nil {
				t.Fatalf("Write = %d, %v; want %d, nil", m, err, k)
			}
			rest = rest[k:]
		}
		var want []string
		parts := bytes.Split(in, []byte("\n"))
		for _, l := range parts[:len(parts)-1] {
			if len(l) > MaxLine {
				l = l[:MaxLine]
			}
			want = append(want, string(bytes.TrimSuffix(l, []byte("\r"))))
		}
		got := p.Lines()
		if len(got) != len(want) {
			t.Fatalf("%d lines, want %d", len(got), len(want))
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("line %d = %q, want %q", i, got[i], want[i])
			}
		}
	})
}
