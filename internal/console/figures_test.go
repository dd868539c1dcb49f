package console_test

import (
	"os"
	"sort"
	"sync"
	"testing"
	"time"
)

// TestFigures10kTunnels measures the console's answers on loopback with
// 10,000 tunnels (half closed). It takes a while to fill the store, so
// it runs only with SECTUN_CONSOLE_FIGURES=1; docs/console.md has the
// numbers.
func TestFigures10kTunnels(t *testing.T) {
	if os.Getenv("SECTUN_CONSOLE_FIGURES") == "" {
		t.Skip("set SECTUN_CONSOLE_FIGURES=1 to measure with 10,000 tunnels")
	}
	e := newEnv(t, nil)
	b := e.browser()
	b.signIn(e.akid, e.secret)
	const n = 10000
	start := time.Now()
	var wg sync.WaitGroup
	work := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := e.browser()
			w.signIn(e.akid, e.secret)
			for i := range work {
				things := []string{"pi-1", "pi-2", "gw-7", "cam-3"}
				a := w.op("OpenTunnel", map[string]any{"destinationConfig": map[string]any{"thingName": things[i%4], "services": []string{"SSH"}}}, nil)
				if i%2 == 0 {
					w.op("CloseTunnel", map[string]any{"tunnelId": decode(t, a.body)["tunnelId"]}, nil)
				}
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	t.Logf("filled %d tunnels in %v", n, time.Since(start))
	for _, p := range []string{"/console/", "/console/static/app.js", "/console/api/overview", "/console/api/tunnels", "/console/api/tunnels?status=OPEN",
		"/console/api/tunnels?thing=pi-2&status=CLOSED", "/console/api/devices", "/console/terminal", "/console/static/sshclient.wasm"} {
		var d []time.Duration
		size := 0
		for range 20 {
			t0 := time.Now()
			a := b.do("GET", p, nil, nil)
			d = append(d, time.Since(t0))
			if a.status != 200 {
				t.Fatalf("%s: %d", p, a.status)
			}
			size = len(a.body)
		}
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		t.Logf("FIGURE GET %s: %d bytes, median %v, p90 %v (20 requests)", p, size, d[10], d[18])
	}
}
