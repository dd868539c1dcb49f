package procstat

import (
	"os"
	"runtime"
	"testing"
)

// Read sees this process: a file it opens, and memory in use.
func TestReadSelf(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	before, err := Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	after, err := Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after.FDs != before.FDs+1 {
		t.Errorf("fds %d -> %d after opening a file, want +1", before.FDs, after.FDs)
	}
	if after.Threads < 1 || after.RSSKB < 1024 {
		t.Errorf("implausible usage %v", after)
	}
	if _, err := Read(-1); err == nil {
		t.Error("Read(-1) succeeded")
	}
}
