//go:build unix

package server

import "syscall"

// fileLimit returns the soft RLIMIT_NOFILE (which the Go runtime has
// raised to the hard limit at start), or 0 if unknown.
func fileLimit() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur > 1<<31 {
		return 0
	}
	return int(lim.Cur)
}
