//go:build linux

package pgtest

import "syscall"

// sysProcAttr runs the child as cred (nil: as we are) and has the kernel
// send it SIGQUIT (PostgreSQL's immediate shutdown) when the thread that
// started it ends, so a killed test binary leaves no server running. Go
// sets the parent-death signal after switching credentials, so it holds
// for a child run as another user.
func sysProcAttr(cred *credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT}
}

type credential = syscall.Credential
