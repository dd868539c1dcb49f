// Package procstat reads a process's resource counts from Linux's /proc:
// open file descriptors, threads and resident memory. The test harnesses
// (test/e2e, test/soak) use it for their leak and growth checks; elsewhere
// than Linux Read returns the error of the missing /proc files.
package procstat

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Usage is a process's resource counts at one moment.
type Usage struct {
	FDs     int // entries in /proc/PID/fd
	Threads int // Threads: in /proc/PID/status
	RSSKB   int // VmRSS: in /proc/PID/status, KiB
}

func (u Usage) String() string {
	return fmt.Sprintf("%d fds, %d threads, %d KiB RSS", u.FDs, u.Threads, u.RSSKB)
}

// Read returns the counts of process pid.
func Read(pid int) (Usage, error) {
	var u Usage
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return u, err
	}
	u.FDs = len(ents)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "Threads:":
			u.Threads, _ = strconv.Atoi(f[1])
		case "VmRSS:":
			u.RSSKB, _ = strconv.Atoi(f[1])
		}
	}
	return u, nil
}
