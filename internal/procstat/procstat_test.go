package procstat

import (
	"os"
	"runtime"
	"testing"
	"time"
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

// ReadMachine parses this machine's accounting, and the counters only
// grow while this test keeps a CPU busy.
func TestReadMachine(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	a, err := ReadMachine()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := ReadMachine()
		if err != nil {
			t.Fatal(err)
		}
		if b.Busy < a.Busy || b.Idle < a.Idle || b.Steal < a.Steal {
			t.Fatalf("counters went back: %+v then %+v", a, b)
		}
		if b.Busy+b.Idle+b.Steal > a.Busy+a.Idle+a.Steal {
			if s := b.StealShare(a); s < 0 || s > 1 {
				t.Fatalf("steal share %v", s)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no tick counted in 5 s")
		}
	}
	if a.Load1 < 0 {
		t.Fatalf("load %v", a.Load1)
	}
}
