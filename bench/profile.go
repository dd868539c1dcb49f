package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// profileSize is the smallest transfer profiled: enough samples at 999 Hz.
const profileSize = 1 << 30

// perfEvents are counted per process during the profiled transfer.
var perfEvents = []struct{ event, name string }{
	{"raw_syscalls:sys_enter", "syscalls"},
	{"syscalls:sys_enter_read", "read"},
	{"syscalls:sys_enter_write", "write"},
	{"syscalls:sys_enter_writev", "writev"},
	{"syscalls:sys_enter_splice", "splice"},
	{"syscalls:sys_enter_futex", "futex"},
	{"syscalls:sys_enter_epoll_pwait", "epoll_pwait"},
	{"syscalls:sys_enter_nanosleep", "nanosleep"},
	{"context-switches", "ctx-switches"},
	{"task-clock", "task-clock-ms"},
}

// profileBulk runs one more bulk transfer (at least 1 GiB each way)
// through sectun and one through the relay while perf(1) samples every
// process of the data path and counts its system calls and context
// switches. It writes into the profile directory, per process,
// <transport>-<process>.perf.data (perf report -i FILE), a flat text
// report (.perf.txt) and the counts (.perf-stat.txt), and adds the
// counts per MiB moved to the notes. The measured runs are never
// profiled: perf's own CPU use would skew them.
func (e *env) profileBulk(ctx context.Context, s *setup, res *TransportResult) error {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return fmt.Errorf("-cpuprofile needs perf(1) (Debian: linux-perf): %w", err)
	}
	size := max(e.cfg.Size, profileSize)
	for _, path := range []struct {
		addr  string
		procs []*proc
	}{{s.lp.addrs["A"], s.sectunProcs()}, {s.relay, s.chain}} {
		var cmds []*exec.Cmd
		var records, stats []string
		for _, p := range path.procs {
			base := filepath.Join(e.cfg.CPUProfileDir, fmt.Sprintf("%s-%s", s.transport, p.name))
			rec := exec.Command(perf, "record", "-q", "-F", "999", "-g", "-p", fmt.Sprint(p.pid()), "-o", base+".perf.data")
			args := []string{"stat", "-x", ",", "-o", base + ".perf-stat.txt", "-p", fmt.Sprint(p.pid())}
			for _, ev := range perfEvents {
				args = append(args, "-e", ev.event)
			}
			stat := exec.Command(perf, args...)
			for _, cmd := range []*exec.Cmd{rec, stat} {
				cmd.SysProcAttr = procAttr()
				if err := cmd.Start(); err != nil {
					return fmt.Errorf("perf: %w", err)
				}
				cmds = append(cmds, cmd)
			}
			records = append(records, base+".perf.data")
			stats = append(stats, base+".perf-stat.txt")
		}
		time.Sleep(300 * time.Millisecond) // perf attaches asynchronously and has no readiness signal
		e.log.printf("%s: profiling one %s bulk transfer through %s", s.transport, sizeText(size), path.procs[0].name)
		_, berr := bulk(ctx, path.addr, size, e.cfg.Verify, nil)
		for _, cmd := range cmds {
			cmd.Process.Signal(os.Interrupt)
		}
		for _, cmd := range cmds {
			cmd.Wait()
		}
		if berr != nil {
			return e.failed(s, "profiled bulk transfer", berr)
		}
		for _, f := range records {
			out, err := exec.CommandContext(ctx, perf, "report", "-i", f, "--stdio", "--no-children",
				"--sort", "symbol", "-g", "none", "--percent-limit", "0.5").Output()
			if err != nil {
				return fmt.Errorf("perf report %s: %w", f, err)
			}
			if err := os.WriteFile(strings.TrimSuffix(f, ".data")+".txt", out, 0o644); err != nil {
				return err
			}
		}
		mib := float64(2*size) / (1 << 20)
		for i, f := range stats {
			counts, err := readPerfStat(f)
			if err != nil {
				return err
			}
			var parts []string
			for _, ev := range perfEvents {
				if v, ok := counts[ev.event]; ok {
					parts = append(parts, fmt.Sprintf("%s %.1f", ev.name, v/mib))
				}
			}
			res.notef("profile: %s per MiB moved: %s", path.procs[i].name, strings.Join(parts, ", "))
		}
	}
	e.log.printf("%s: profiles in %s", s.transport, e.cfg.CPUProfileDir)
	return nil
}

// readPerfStat reads perf stat's CSV output (-x ,): value,unit,event,...
func readPerfStat(path string) (map[string]float64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 || strings.HasPrefix(line, "#") {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue // <not counted>, <not supported>
		}
		out[f[2]] = v
	}
	return out, nil
}
