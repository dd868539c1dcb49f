package main

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"
)

// TestSoakShort runs the soak for a few seconds, as CI does: the whole
// machinery (tunnel churn, faults, checks) with the real binaries. Set
// SECTUN_SOAK to a duration (e.g. SECTUN_SOAK=10m) for a longer run from
// go test; the documented way to soak for hours is go run ./test/soak.
func TestSoakShort(t *testing.T) {
	d := 12 * time.Second
	if v := os.Getenv("SECTUN_SOAK"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("SECTUN_SOAK=%q: %v", v, err)
		}
	}
	bin := t.TempDir()
	if err := buildBinaries(bin); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res, err := run(context.Background(), config{
		duration: d, tunnels: 3, life: 4 * time.Second, faults: 2 * time.Second,
		grace: 10 * time.Second, report: 5 * time.Second, ping: 2 * time.Second, conns: 3,
		maxBulk: 1 << 20, rssGrowth: 0.5, bin: bin, seed: uint64(time.Now().UnixNano()),
	}, &out)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if !res.ok() {
		t.Fatalf("%d unexpected errors: %v", len(res.unexpected), res.unexpected)
	}
	if res.counts["faults injected"] == 0 || res.counts["tunnels closed"] < 3 || res.counts["bulk transfers"] == 0 {
		t.Fatalf("the run did too little: %v", res.counts)
	}
}
