//go:build !linux && !windows && !plan9

package pgtest

import "syscall"

// sysProcAttr runs the child as cred (nil: as we are).
func sysProcAttr(cred *credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred}
}

type credential = syscall.Credential
