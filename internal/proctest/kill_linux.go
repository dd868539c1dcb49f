//go:build linux

package proctest

import "syscall"

// killWithParent has the kernel SIGKILL the child when the thread that
// started it ends; Go keeps its threads unless a locked goroutine exits.
func killWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
