//go:build !unix

package server

import "os"

// tryLock does not lock where flock is missing: the lock file then only
// records the owner.
func tryLock(f *os.File) error { return nil }
