package server

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// lockFileName is the file in the data directory that a running tunneld
// holds locked (flock) for its whole lifetime; it records the holder's PID
// and command line.
const lockFileName = "tunneld.lock"

var errLocked = errors.New("locked")

// ErrDataDirInUse reports that another tunneld runs on the data directory.
var ErrDataDirInUse = errors.New("tunneld: data directory in use")

// lockDataDir takes the data directory's lock, or fails with
// ErrDataDirInUse naming the process that holds it. Two tunneld on one
// database would each think they own every tunnel: both report peers
// CONNECTED, and peers connected to different processes are never joined.
// The lock goes with the process (the kernel drops it when it exits, even
// when killed), so a crash never leaves the directory locked.
func lockDataDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("tunneld: lock file: %w", err)
	}
	if err := tryLock(f); err != nil {
		defer f.Close()
		if !errors.Is(err, errLocked) {
			return nil, fmt.Errorf("tunneld: locking %s: %w", path, err)
		}
		owner := "another process"
		if b, _ := io.ReadAll(io.LimitReader(f, 4096)); len(b) > 0 {
			pid, cmd, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
			owner = fmt.Sprintf("process %s (%s)", pid, strings.TrimSpace(cmd))
		}
		return nil, fmt.Errorf("%w: %s is used by another tunneld, %s, which holds %s: stop it first, or give this one its own --data-dir (two tunneld on one database split every tunnel's peers)", ErrDataDirInUse, dir, owner, path)
	}
	rec := strconv.Itoa(os.Getpid()) + "\n" + strings.Join(os.Args, " ") + "\n"
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(rec), 0)
	}
	return f, nil
}
