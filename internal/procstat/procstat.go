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

// Machine is the machine's CPU accounting at one moment (/proc/stat's
// first line, in clock ticks) and its 1-minute load average.
type Machine struct {
	Load1 float64
	Busy  uint64 // user, nice, system, irq, softirq
	Idle  uint64 // idle, iowait
	Steal uint64 // time the hypervisor gave the machine's CPUs to others
}

// ReadMachine returns the machine's CPU accounting now.
func ReadMachine() (Machine, error) {
	var m Machine
	load, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return m, err
	}
	if f := strings.Fields(string(load)); len(f) > 0 {
		m.Load1, _ = strconv.ParseFloat(f[0], 64)
	}
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return m, err
	}
	line, _, _ := strings.Cut(string(stat), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return m, fmt.Errorf("procstat: unexpected /proc/stat line %q", line)
	}
	var v [8]uint64
	for i := range v {
		v[i], _ = strconv.ParseUint(f[i+1], 10, 64)
	}
	// user nice system idle iowait irq softirq steal
	m.Busy = v[0] + v[1] + v[2] + v[5] + v[6]
	m.Idle = v[3] + v[4]
	m.Steal = v[7]
	return m, nil
}

// StealShare is the share of CPU time stolen by the hypervisor between
// earlier and m (0 to 1; 0 when no time passed).
func (m Machine) StealShare(earlier Machine) float64 {
	steal := m.Steal - earlier.Steal
	total := m.Busy - earlier.Busy + m.Idle - earlier.Idle + steal
	if total == 0 {
		return 0
	}
	return float64(steal) / float64(total)
}
