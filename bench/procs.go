package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sync"
	"time"

	"github.com/sectun/sectun/internal/proctest"
)

// tailLines is how many output lines of a process are shown in error
// messages.
const tailLines = 40

// proc is a started child process whose output is scanned line by line.
type proc struct {
	name string
	p    *proctest.Proc
}

// startProc starts path with args; env is added to the environment. The
// child is killed if the harness dies.
func startProc(name, path string, env []string, args ...string) (*proc, error) {
	p, err := proctest.Start(proctest.Config{
		Name: name, Path: path, Args: args, Env: env,
		StopSignal:     os.Interrupt,
		KillWithParent: true,
	})
	if err != nil {
		return nil, err
	}
	return &proc{name: name, p: p}, nil
}

func (p *proc) pid() int { return p.p.Pid() }

// output returns the last lines the process printed.
func (p *proc) output() string { return p.p.Tail(tailLines) }

// errorf returns an error naming the process, with its last output lines.
func (p *proc) errorf(format string, args ...any) error {
	return fmt.Errorf("%s: %s\n--- last output of %s:\n%s", p.name, fmt.Sprintf(format, args...), p.name, p.output())
}

// waitLine waits for an output line matching re and returns its
// submatches.
func (p *proc) waitLine(ctx context.Context, re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	m, err := p.p.WaitLine(ctx, re, timeout)
	if err != nil && ctx.Err() == nil {
		return nil, fmt.Errorf("%w\n--- last output of %s:\n%s", err, p.name, p.output())
	}
	return m, err
}

// alive reports an error if the process has ended.
func (p *proc) alive() error {
	if p.p.Exited() {
		return p.errorf("exited: %v", p.p.Err())
	}
	return nil
}

// stop sends SIGINT and waits for the exit, killing after 10 s. It is
// idempotent.
func (p *proc) stop() { p.p.Stop(10 * time.Second) }

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
