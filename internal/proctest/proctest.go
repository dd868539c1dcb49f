package proctest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Defaults for Config.
const (
	// DefaultTail is how many output lines are kept when Config.Tail is 0.
	DefaultTail = 1000
	// MaxLine is the longest line kept, in bytes; the rest of a longer
	// line is discarded.
	MaxLine = 64 << 10
	// DefaultWaitDelay is how long Wait waits for the output pipe to close
	// after the process exited (a child of the child may hold it), when
	// Config.WaitDelay is 0.
	DefaultWaitDelay = 5 * time.Second
)

var (
	// ErrExited means the process ended before what was waited for.
	ErrExited = errors.New("proctest: process exited")
	// ErrTimeout means the wait's timeout passed.
	ErrTimeout = errors.New("proctest: timeout")
)

// Config says what to run and what to do with its output.
type Config struct {
	// Name names the process in errors; default: the base name of Path.
	Name string
	// Path is the program to run (a path, or a name looked up in PATH).
	Path string
	// Args are the arguments, without the program name.
	Args []string
	// Env is added to the harness's own environment.
	Env []string
	// Dir is the working directory; "" is the harness's.
	Dir string
	// Tail is how many of the last output lines are kept for Output and
	// WaitLine; 0 means DefaultTail.
	Tail int
	// Log, if not nil, receives every output line with its newline, as it
	// comes (write errors are ignored).
	Log io.Writer
	// OnLine, if not nil, is called with every output line as it comes.
	OnLine func(line string)
	// StopSignal is what Stop sends first; nil means SIGTERM.
	StopSignal os.Signal
	// KillWithParent asks the kernel to SIGKILL the process when the
	// harness dies (Linux only; ignored elsewhere), so that an interrupted
	// run leaves nothing behind.
	KillWithParent bool
	// WaitDelay bounds the wait for the output pipe after the process
	// exited; 0 means DefaultWaitDelay.
	WaitDelay time.Duration
}

// Proc is a started process. Its exported fields are set by Start and
// must not be changed.
type Proc struct {
	// Cmd is the running command (Cmd.Process for its pid and signals).
	Cmd *exec.Cmd

	name   string
	stop   os.Signal
	log    io.Writer
	onLine func(string)
	done   chan struct{}
	err    error // Wait's result, set before done is closed

	// Written by the exec package's copying goroutine only.
	partial   []byte
	truncated bool

	mu      sync.Mutex
	ring    []string // the last len(ring) <= tail lines, ring[total%tail] is the oldest once full
	tail    int
	total   uint64        // lines seen
	cursor  uint64        // next line for WaitLine
	changed chan struct{} // closed and replaced when a line arrives
}

// Start starts the program cfg describes.
func Start(cfg Config) (*Proc, error) {
	name := cfg.Name
	if name == "" {
		name = filepath.Base(cfg.Path)
	}
	tail := cfg.Tail
	if tail <= 0 {
		tail = DefaultTail
	}
	p := &Proc{
		name: name, stop: cfg.StopSignal, log: cfg.Log, onLine: cfg.OnLine,
		done: make(chan struct{}), tail: tail, changed: make(chan struct{}),
	}
	if p.stop == nil {
		p.stop = syscall.SIGTERM
	}
	cmd := exec.Command(cfg.Path, cfg.Args...)
	cmd.Env = append(os.Environ(), cfg.Env...)
	cmd.Dir = cfg.Dir
	// The same pointer for both: exec then uses one pipe and one goroutine,
	// so Write is never called concurrently and lines keep their order.
	w := (*lineWriter)(p)
	cmd.Stdout, cmd.Stderr = w, w
	cmd.WaitDelay = cfg.WaitDelay
	if cmd.WaitDelay <= 0 {
		cmd.WaitDelay = DefaultWaitDelay
	}
	if cfg.KillWithParent {
		cmd.SysProcAttr = killWithParent()
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("proctest: starting %s: %w", name, err)
	}
	p.Cmd = cmd
	go func() {
		err := cmd.Wait()
		// Wait returns after the copying goroutine ended: no Write races
		// with the flush of a last line without a newline.
		if len(p.partial) > 0 || p.truncated {
			p.addLine(string(p.partial))
			p.partial = nil
		}
		p.mu.Lock()
		p.err = err
		close(p.done)
		close(p.changed) // wake waiters; nothing arrives any more
		p.mu.Unlock()
	}()
	return p, nil
}

// lineWriter is the Proc as the io.Writer the command writes to.
type lineWriter Proc

func (w *lineWriter) Write(b []byte) (int, error) {
	p := (*Proc)(w)
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		chunk := b
		if i >= 0 {
			chunk = b[:i]
		}
		if room := MaxLine - len(p.partial); len(chunk) > room {
			chunk = chunk[:room]
			p.truncated = true
		}
		p.partial = append(p.partial, chunk...)
		if i < 0 {
			break
		}
		p.addLine(string(bytes.TrimSuffix(p.partial, []byte("\r"))))
		p.partial, p.truncated = p.partial[:0], false
		b = b[i+1:]
	}
	if len(p.partial) == 0 && cap(p.partial) > 4<<10 {
		p.partial = nil // do not keep a long line's buffer
	}
	return n, nil
}

// addLine records one complete line. Only the writer goroutine calls it.
func (p *Proc) addLine(line string) {
	if p.log != nil {
		io.WriteString(p.log, line+"\n")
	}
	if p.onLine != nil {
		p.onLine(line)
	}
	p.mu.Lock()
	if len(p.ring) < p.tail {
		p.ring = append(p.ring, line)
	} else {
		p.ring[p.total%uint64(p.tail)] = line
	}
	p.total++
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

// lineLocked returns line number seq, which must be kept.
func (p *Proc) lineLocked(seq uint64) string {
	if len(p.ring) < p.tail {
		return p.ring[seq]
	}
	return p.ring[seq%uint64(p.tail)]
}

// oldestLocked is the number of the oldest kept line.
func (p *Proc) oldestLocked() uint64 { return p.total - uint64(len(p.ring)) }

// Name returns the process's name (Config.Name).
func (p *Proc) Name() string { return p.name }

// Pid returns the process id.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Done is closed once the process has exited and all its output is in.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err returns the error of exec.Cmd.Wait once Done is closed (nil for an
// exit status of 0), and nil before.
func (p *Proc) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process; after the exit it does nothing.
func (p *Proc) Signal(sig os.Signal) error {
	if p.Exited() {
		return nil
	}
	if err := p.Cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("proctest: signalling %s: %w", p.name, err)
	}
	return nil
}

// Stop sends the stop signal and waits for the exit, sending SIGKILL after
// grace. It returns at once if the process has exited, so it may be called
// any number of times.
func (p *Proc) Stop(grace time.Duration) {
	if p.Exited() {
		return
	}
	p.Signal(p.stop)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.Cmd.Process.Kill()
		<-p.done
	}
}

// WaitExit waits for the exit, up to timeout (0: no limit but ctx), and
// returns the exit code (-1 if a signal ended the process).
func (p *Proc) WaitExit(ctx context.Context, timeout time.Duration) (int, error) {
	tc, stop := after(timeout)
	defer stop()
	select {
	case <-p.done:
		return p.Cmd.ProcessState.ExitCode(), nil
	case <-tc:
		return -1, fmt.Errorf("%s still running after %v: %w", p.name, timeout, ErrTimeout)
	case <-ctx.Done():
		return -1, fmt.Errorf("%s still running: %w", p.name, ctx.Err())
	}
}

// ExitCode returns the exit code once Done is closed (-1 if a signal ended
// the process), and -1 before.
func (p *Proc) ExitCode() int {
	if !p.Exited() {
		return -1
	}
	return p.Cmd.ProcessState.ExitCode()
}

// WaitLine waits for an output line matching re and returns its
// submatches. It reads the kept lines from the cursor on, moving the
// cursor past each line it reads: lines printed before the call count
// unless an earlier WaitLine or Drain took them. timeout 0 means no limit
// but ctx. If more than Config.Tail lines arrived since the cursor, the
// older ones are lost to it.
func (p *Proc) WaitLine(ctx context.Context, re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	var m []string
	err := p.wait(ctx, timeout, re.String(), func(line string) bool {
		m = re.FindStringSubmatch(line)
		return m != nil
	})
	return m, err
}

// NextLine waits for the next output line past the cursor and takes it.
func (p *Proc) NextLine(ctx context.Context, timeout time.Duration) (string, error) {
	var got string
	err := p.wait(ctx, timeout, "a line", func(line string) bool {
		got = line
		return true
	})
	return got, err
}

// wait moves the cursor through the lines until match says yes.
func (p *Proc) wait(ctx context.Context, timeout time.Duration, what string, match func(string) bool) error {
	tc, stop := after(timeout)
	defer stop()
	for {
		p.mu.Lock()
		if old := p.oldestLocked(); p.cursor < old {
			p.cursor = old
		}
		for p.cursor < p.total {
			line := p.lineLocked(p.cursor)
			p.cursor++
			if match(line) {
				p.mu.Unlock()
				return nil
			}
		}
		changed, exited, err := p.changed, p.Exited(), p.err
		p.mu.Unlock()
		if exited {
			return fmt.Errorf("%s exited (%v) before printing %q: %w", p.name, err, what, ErrExited)
		}
		select {
		case <-changed:
		case <-tc:
			return fmt.Errorf("%s did not print %q within %v: %w", p.name, what, timeout, ErrTimeout)
		case <-ctx.Done():
			return fmt.Errorf("%s did not print %q: %w", p.name, what, ctx.Err())
		}
	}
}

// Drain moves the cursor past every line so far, so that the next
// WaitLine sees only what comes after.
func (p *Proc) Drain() {
	p.mu.Lock()
	p.cursor = p.total
	p.mu.Unlock()
}

// Lines returns the kept lines, oldest first.
func (p *Proc) Lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.ring))
	for seq := p.oldestLocked(); seq < p.total; seq++ {
		out = append(out, p.lineLocked(seq))
	}
	return out
}

// Output returns the kept lines, each ended by a newline.
func (p *Proc) Output() string {
	lines := p.Lines()
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

// Tail returns the last n kept lines joined by newlines, for error
// messages.
func (p *Proc) Tail(n int) string {
	lines := p.Lines()
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Dropped returns how many lines are no longer kept (printed before the
// last Config.Tail).
func (p *Proc) Dropped() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.oldestLocked()
}

// after returns a channel that receives once timeout has passed, and a
// func to release the timer; for timeout <= 0 the channel never receives.
func after(timeout time.Duration) (<-chan time.Time, func()) {
	if timeout <= 0 {
		return nil, func() {}
	}
	t := time.NewTimer(timeout)
	return t.C, func() { t.Stop() }
}
