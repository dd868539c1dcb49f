package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/tcptest"
)

// TestClusterBench measures same-node against cross-node tunnels, with a
// plaintext and a TLS link, interleaved: bulk both ways at once (64 MiB
// each way, byte-verified) and round-trip time on an idle tunnel. It runs
// only with SECTUN_CLUSTER_BENCH=1 (minutes of CPU); the figures are in
// the log and docs/cluster.md.
func TestClusterBench(t *testing.T) {
	if os.Getenv("SECTUN_CLUSTER_BENCH") == "" {
		t.Skip("set SECTUN_CLUSTER_BENCH=1 to measure the cluster")
	}
	const size = 64 << 20
	const runs = 3
	for _, link := range []string{"plain", "tls"} {
		var extra []string
		if link == "plain" {
			extra = []string{"--cluster-plaintext", "--log-level", "info"}
		} else {
			extra = []string{"--log-level", "info"}
		}
		r := newClusterRig(t, 2, extra...)
		type path struct {
			name     string
			dst, src int
			addrs    map[string]string
		}
		paths := []*path{{name: "same-node", dst: 0, src: 0}, {name: "cross-node", dst: 0, src: 1}}
		for _, p := range paths {
			tun := r.nodes[0].openTunnel(t, "", "BULK", "ECHO")
			startDestination(t, r.nodes[p.dst].wsURL, tun.DestinationAccessToken, "BULK="+tcpService(t, tcptest.BulkHandler(size, 2))+",ECHO="+echoService(t))
			_, p.addrs = startSource(t, r.nodes[p.src].wsURL, tun.SourceAccessToken, "BULK=0,ECHO=0", 2)
		}
		bulk := map[string][]float64{}
		rtt := map[string][]time.Duration{}
		for range runs {
			for _, p := range paths { // interleaved
				d := transfer(t, p.addrs["BULK"], size)
				bulk[p.name] = append(bulk[p.name], float64(2*size)/d.Seconds()/1e6)
				rtt[p.name] = append(rtt[p.name], rttP50(t, p.addrs["ECHO"], 300))
			}
		}
		med := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
		medD := func(v []time.Duration) time.Duration { slices.Sort(v); return v[len(v)/2] }
		same, cross := med(bulk["same-node"]), med(bulk["cross-node"])
		rs, rc := medD(rtt["same-node"]), medD(rtt["cross-node"])
		t.Logf("link %s: bulk both ways (MB/s, both directions summed, median of %d): same-node %.0f, cross-node %.0f, ratio %.2f; rtt p50 idle: same-node %v, cross-node %v (+%v)",
			link, runs, same, cross, cross/same, rs, rc, rc-rs)
	}
}

// rttP50 is the median round trip of n 64-byte echoes on one connection.
func rttP50(t *testing.T, addr string, n int) time.Duration {
	t.Helper()
	c := dialTCP(t, addr)
	defer c.Close()
	msg := make([]byte, 64)
	ds := make([]time.Duration, n)
	for i := range n {
		start := time.Now()
		if err := tcptest.RoundTrip(context.Background(), c, msg); err != nil {
			t.Fatal(err)
		}
		ds[i] = time.Since(start)
	}
	slices.Sort(ds)
	return ds[n/2]
}

var _ = fmt.Sprint
