package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"time"
)

// tailLines is how many output lines of a process are kept for error
// messages.
const tailLines = 40

// proc is a started child process whose output is scanned line by line.
type proc struct {
	name string
	cmd  *exec.Cmd
	// lines receives output lines while someone waits for one; lines
	// arriving while the buffer is full are dropped (they are still kept
	// in tail).
	lines chan string
	done  chan struct{}
	err   error // Wait's result, once done is closed

	mu   sync.Mutex
	tail []string // last tailLines lines
}

// startProc starts path with args; env is added to the environment.
func startProc(name, path string, env []string, args ...string) (*proc, error) {
	p := &proc{name: name, lines: make(chan string, 256), done: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.SysProcAttr = procAttr()
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			if len(p.tail) == tailLines {
				copy(p.tail, p.tail[1:])
				p.tail = p.tail[:tailLines-1]
			}
			p.tail = append(p.tail, line)
			p.mu.Unlock()
			select {
			case p.lines <- line:
			default:
			}
		}
		io.Copy(io.Discard, pr) // a line over 1 MiB: keep draining
	}()
	go func() {
		p.err = p.cmd.Wait()
		pw.Close()
		<-scanned
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// output returns the last lines the process printed.
func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

// errorf returns an error naming the process, with its last output lines.
func (p *proc) errorf(format string, args ...any) error {
	return fmt.Errorf("%s: %s\n--- last output of %s:\n%s", p.name, fmt.Sprintf(format, args...), p.name, p.output())
}

// waitLine waits for an output line matching re and returns its
// submatches.
func (p *proc) waitLine(ctx context.Context, re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case line := <-p.lines:
			if m := re.FindStringSubmatch(line); m != nil {
				return m, nil
			}
		case <-p.done:
			for {
				select {
				case line := <-p.lines:
					if m := re.FindStringSubmatch(line); m != nil {
						return m, nil
					}
				default:
					return nil, p.errorf("exited (%v) before printing %q", p.err, re)
				}
			}
		case <-t.C:
			return nil, p.errorf("did not print %q within %v", re, timeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// alive reports an error if the process has ended.
func (p *proc) alive() error {
	select {
	case <-p.done:
		return p.errorf("exited: %v", p.err)
	default:
		return nil
	}
}

// stop sends SIGTERM and waits for the exit, killing after 10 s. It is
// idempotent.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(os.Interrupt)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.cmd.Process.Kill()
		<-p.done
	}
}

// procs stops a set of processes in reverse start order.
type procs struct {
	mu   sync.Mutex
	list []*proc
}

func (ps *procs) add(p *proc) *proc {
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	return p
}

func (ps *procs) stopAll() {
	ps.mu.Lock()
	list := ps.list
	ps.list = nil
	ps.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		list[i].stop()
	}
}

// errUnsupported is returned by the /proc readers off Linux.
var errUnsupported = errors.New("bench: CPU and memory figures need Linux /proc")
