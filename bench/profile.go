package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// profileBulk runs one more bulk transfer through sectun and one through
// the relay while perf(1) samples every process of the data path, and
// writes <transport>-<process>.perf.data and a flat text report
// (.perf.txt) per process into the profile directory. The measured runs
// are never profiled: perf's own CPU use would skew them.
func (e *env) profileBulk(ctx context.Context, s *setup) error {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return fmt.Errorf("-cpuprofile needs perf(1) (Debian: linux-perf): %w", err)
	}
	for _, path := range []struct {
		addr  string
		procs []*proc
	}{{s.lp.addrs["A"], s.sectunProcs()}, {s.relay, s.chain}} {
		var recs []*exec.Cmd
		var files []string
		for _, p := range path.procs {
			f := filepath.Join(e.cfg.CPUProfileDir, fmt.Sprintf("%s-%s.perf.data", s.transport, p.name))
			cmd := exec.Command(perf, "record", "-q", "-F", "999", "-g", "-p", fmt.Sprint(p.pid()), "-o", f)
			cmd.SysProcAttr = procAttr()
			if err := cmd.Start(); err != nil {
				return fmt.Errorf("perf record: %w", err)
			}
			recs = append(recs, cmd)
			files = append(files, f)
		}
		time.Sleep(200 * time.Millisecond) // perf attaches asynchronously; no readiness signal to wait for
		e.log.printf("%s: profiling one bulk transfer (%s)", s.transport, path.procs[0].name)
		_, berr := bulk(ctx, path.addr, e.cfg.Size, e.cfg.Verify, nil)
		for _, cmd := range recs {
			cmd.Process.Signal(os.Interrupt)
			cmd.Wait()
		}
		if berr != nil {
			return e.failed(s, "profiled bulk transfer", berr)
		}
		for _, f := range files {
			out, err := exec.CommandContext(ctx, perf, "report", "-i", f, "--stdio", "--no-children",
				"--sort", "symbol", "-g", "none", "--percent-limit", "0.5").Output()
			if err != nil {
				return fmt.Errorf("perf report %s: %w", f, err)
			}
			if err := os.WriteFile(f[:len(f)-len(".data")]+".txt", out, 0o644); err != nil {
				return err
			}
		}
		e.log.printf("%s: profiles in %s", s.transport, e.cfg.CPUProfileDir)
	}
	return nil
}
