//go:build windows || plan9

package pgtest

import "syscall"

// credential stands in for syscall.Credential, which this system lacks;
// a cluster always runs as the current user here.
type credential struct {
	Uid, Gid    uint32
	NoSetGroups bool
}

func sysProcAttr(*credential) *syscall.SysProcAttr { return nil }
