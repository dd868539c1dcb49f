package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The relay chain re-executes this binary as "relay" hops.
	if len(os.Args) > 1 && os.Args[1] == "relay" {
		os.Exit(relayMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestSmoke runs every scenario with tiny sizes over plain ws://, so that
// the harness keeps working; the figures themselves are not checked.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs tunneld and localproxy")
	}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	cfg, err := parseFlags([]string{"-plain", "-size", "4MiB", "-conns", "20", "-tunnels", "20", "-runs", "1", "-rtt-count", "100", "-fair-time", "1s", "-json"}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, progress bytes.Buffer
	if err := run(ctx, cfg, &out, &progress); err != nil {
		t.Fatalf("%v\nprogress:\n%s", err, progress.String())
	}
	var rep Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("decoding the JSON report: %v\n%s", err, out.String())
	}
	if len(rep.Transports) != 1 || rep.Transports[0].Transport != "plain" {
		t.Fatalf("transports %+v, want plain only", rep.Transports)
	}
	want := []string{"bulk up", "bulk down", "CPU three processes", "rtt idle p50", "rtt under bulk, same service p99",
		"rtt under bulk, other service p99", "conns: 20 at once, succeeded", "conns setup p99",
		"localproxy src RSS per idle conn (20)", "tunneld RSS per idle peer (20 tunnels, 40 peers)"}
	rows := map[string]Row{}
	for _, r := range rep.Transports[0].Rows {
		rows[r.Figure] = r
	}
	for _, fig := range want {
		r, ok := rows[fig]
		if !ok {
			t.Errorf("no row %q", fig)
			continue
		}
		if r.Target != "" && r.Met == nil {
			t.Errorf("row %q has a target but no verdict", fig)
		}
	}
	if r := rows["conns: 20 at once, succeeded"]; r.Sectun != 20 {
		t.Errorf("%v of 20 connections succeeded through sectun", r.Sectun)
	}
	if r := rows["bulk up"]; r.Sectun <= 0 || r.Baseline == nil || *r.Baseline <= 0 {
		t.Errorf("bulk up row %+v", r)
	}

	// The text form of the same report.
	var text bytes.Buffer
	rep.printText(&text)
	for _, s := range []string{"== plain ws://", "bulk up", "targets met:"} {
		if !strings.Contains(text.String(), s) {
			t.Errorf("text report lacks %q:\n%s", s, text.String())
		}
	}
	t.Logf("\n%s", text.String())
}

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		transports string
		size       int64
		scenarios  string
		err        string
	}{
		{nil, "plain,tls", 256 << 20, "bulk,cpu,rtt,fair,conns,idle", ""},
		{[]string{"-tls"}, "tls", 256 << 20, "bulk,cpu,rtt,fair,conns,idle", ""},
		{[]string{"-plain", "-size", "1GiB"}, "plain", 1 << 30, "bulk,cpu,rtt,fair,conns,idle", ""},
		{[]string{"-plain", "-tls", "-size", "64"}, "plain,tls", 64 << 20, "bulk,cpu,rtt,fair,conns,idle", ""},
		{[]string{"-scenarios", "rtt, bulk,rtt"}, "plain,tls", 256 << 20, "rtt,bulk", ""},
		{[]string{"-scenarios", "speed"}, "", 0, "", "unknown scenario"},
		{[]string{"-size", "1KiB"}, "", 0, "", "at least 1MiB"},
		{[]string{"-size", "lots"}, "", 0, "", "not a size"},
		{[]string{"-conns", "0"}, "", 0, "", "-conns"},
		{[]string{"-verify", "md5"}, "", 0, "", "neither compare nor sha256"},
		{[]string{"extra"}, "", 0, "", "unexpected argument"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stderr bytes.Buffer
			cfg, err := parseFlags(tc.args, &stderr)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(cfg.Transports, ","); got != tc.transports {
				t.Errorf("transports %s, want %s", got, tc.transports)
			}
			if cfg.Size != tc.size {
				t.Errorf("size %d, want %d", cfg.Size, tc.size)
			}
			if got := strings.Join(cfg.Scenarios, ","); got != tc.scenarios {
				t.Errorf("scenarios %s, want %s", got, tc.scenarios)
			}
		})
	}
}

func TestPercentileMedian(t *testing.T) {
	d := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5}, {0.9, 9}, {0.99, 10}, {0.01, 1}, {1, 10}} {
		if got := percentile(d, tc.q); got != tc.want {
			t.Errorf("percentile(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median = %v, want 2", got)
	}
	if got := median([]float64{4, 1, 2, 3}); got != 2.5 {
		t.Errorf("median = %v, want 2.5", got)
	}
}

// TestVerifier checks that the bulk check catches a wrong, a missing and
// a repeated chunk, across the pattern's wrap-around, in both modes.
func TestVerifier(t *testing.T) {
	const size = 3*patternLen + 12345
	var good bytes.Buffer
	if err := sendStream(&good, seedUp, size); err != nil {
		t.Fatal(err)
	}
	data := good.Bytes()
	corrupt := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(data)) }
	for _, tc := range []struct {
		name    string
		data    []byte
		wantBad int64 // -1: intact
	}{
		{"intact", data, -1},
		{"flipped byte after the wrap", corrupt(func(b []byte) []byte { b[patternLen+7] ^= 1; return b }), patternLen + 7},
		{"chunk missing", corrupt(func(b []byte) []byte {
			return append(append(b[:1000:1000], b[1000+16384:]...), make([]byte, 16384)...)
		}), 1000},
		{"chunk repeated", corrupt(func(b []byte) []byte {
			return append(b[:50000:50000], b[50000-4096:]...)[:size:size]
		}), 50000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, mode := range []verifyMode{verifyCompare, verifySHA256} {
				v := newVerifier(mode, seedUp)
				if err := recvStream(bytes.NewReader(tc.data), v, size, nil); err != nil {
					t.Fatal(err)
				}
				err := check(mode, seedUp, size, v.bad, v.sum())
				if (err == nil) != (tc.wantBad < 0) {
					t.Errorf("mode %c: check = %v, want intact %v", mode, err, tc.wantBad < 0)
				}
				if mode == verifyCompare && v.bad != tc.wantBad && !(tc.wantBad >= 0 && v.bad >= tc.wantBad) {
					t.Errorf("first wrong byte at %d, want %d", v.bad, tc.wantBad)
				}
			}
		})
	}
}
