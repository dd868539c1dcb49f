package tunnel

import (
	"crypto/tls"
	"io"
	"net"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sectun/sectun/tunnel/internal/fakeservice"
)

// Benchmarks run a source and a destination Session through the fake
// service over real 127.0.0.1 WebSockets ("tunnel", "tunnel-tls"), against
// the same traffic through a plain TCP relay ("tcp-relay": client ->
// relay -> server, io.Copy both ways), the floor any relay can reach here.

// connPair makes connected conns: a is the client side, b the server side.
type connPair func(b *testing.B) (a, bb net.Conn)

func tunnelPairs(b *testing.B, useTLS bool) connPair {
	opts := fakeservice.Options{Services: []string{"SSH1", "HTTP1"}}
	var tlsCfg *tls.Config
	if useTLS {
		caPEM, cert := testPKI(&testing.T{})
		opts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		dir := b.TempDir()
		writeFile(b, dir+"/ca.pem", caPEM)
		var err error
		if tlsCfg, err = TLSConfig(dir+"/ca.pem", false); err != nil {
			b.Fatal(err)
		}
	}
	_, src, dst := pair(b, opts, func(s, d *Config) { s.TLS, d.TLS = tlsCfg, tlsCfg })
	return func(b *testing.B) (net.Conn, net.Conn) {
		x, y := dialAccept(b, src, dst, "SSH1")
		return x, y
	}
}

func tcpRelayPairs(b *testing.B) connPair {
	srv := listen(b)
	relay := listen(b)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	track := func(c net.Conn) { mu.Lock(); conns = append(conns, c); mu.Unlock() }
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := relay.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", srv.Addr().String())
			if err != nil {
				c.Close()
				return
			}
			track(c)
			track(up)
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(up, c); up.Close() }()
			go func() { defer wg.Done(); io.Copy(c, up); c.Close() }()
		}
	}()
	b.Cleanup(func() {
		relay.Close()
		srv.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return func(b *testing.B) (net.Conn, net.Conn) {
		a, err := net.Dial("tcp", relay.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		s, err := srv.Accept()
		if err != nil {
			b.Fatal(err)
		}
		track(a)
		track(s)
		return a, s
	}
}

func listen(b *testing.B) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	return ln
}

func variants(b *testing.B, f func(b *testing.B, mk connPair)) {
	b.Run("tunnel", func(b *testing.B) { f(b, tunnelPairs(b, false)) })
	b.Run("tunnel-tls", func(b *testing.B) { f(b, tunnelPairs(b, true)) })
	b.Run("tcp-relay", func(b *testing.B) { f(b, tcpRelayPairs(b)) })
}

// BenchmarkThroughput: one connection, 64 KiB writes from the source,
// read at the destination.
func BenchmarkThroughput(b *testing.B) {
	variants(b, func(b *testing.B, mk connPair) {
		a, z := mk(b)
		const size = 64 << 10
		buf := make([]byte, size)
		done := make(chan int64)
		go func() {
			n, _ := io.Copy(io.Discard, z)
			done <- n
		}()
		b.SetBytes(size)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if _, err := a.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		a.Close()
		n := <-done
		b.StopTimer()
		if n != int64(b.N)*size {
			b.Fatalf("received %d of %d", n, int64(b.N)*size)
		}
	})
}

func echo(c net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		if _, err := c.Write(buf[:n]); err != nil {
			return
		}
	}
}

// BenchmarkPingPong64: 64-byte round trips (ns/op is the round trip).
func BenchmarkPingPong64(b *testing.B) {
	variants(b, func(b *testing.B, mk connPair) {
		a, z := mk(b)
		go echo(z)
		msg := make([]byte, 64)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if _, err := a.Write(msg); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(a, msg); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkPingPongUnderLoad: 64-byte round trips on one connection while
// another connection of the same session (or relay) carries bulk data from
// source to destination. Reports p50/p99 round trip and the bulk rate.
func BenchmarkPingPongUnderLoad(b *testing.B) {
	variants(b, func(b *testing.B, mk connPair) {
		bulkA, bulkZ := mk(b)
		a, z := mk(b)
		go echo(z)
		var moved int64
		readerDone := make(chan struct{})
		go func() {
			defer close(readerDone)
			moved, _ = io.Copy(io.Discard, bulkZ)
		}()
		stop := make(chan struct{})
		writerDone := make(chan struct{})
		go func() {
			defer close(writerDone)
			buf := make([]byte, 64<<10)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := bulkA.Write(buf); err != nil {
					return
				}
			}
		}()
		time.Sleep(100 * time.Millisecond) // let the bulk transfer fill the pipes
		msg := make([]byte, 64)
		rtts := make([]time.Duration, 0, b.N)
		// pickups: from Write's return until the session's writer has
		// taken the frame from the send buffer, the part of the wait spent
		// behind other connections in our own process (tunnel only).
		tc, _ := a.(*Conn)
		pickups := make([]time.Duration, 0, b.N)
		b.ReportAllocs()
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			t0 := time.Now()
			if _, err := a.Write(msg); err != nil {
				b.Fatal(err)
			}
			if tc != nil {
				t1 := time.Now()
				for {
					if _, send := tc.buffered(); send == 0 {
						break
					}
					runtime.Gosched()
				}
				pickups = append(pickups, time.Since(t1))
			}
			if _, err := io.ReadFull(a, msg); err != nil {
				b.Fatal(err)
			}
			rtts = append(rtts, time.Since(t0))
		}
		elapsed := time.Since(start)
		b.StopTimer()
		close(stop)
		bulkA.Close()
		<-writerDone
		<-readerDone
		slices.Sort(rtts)
		if len(pickups) > 0 {
			slices.Sort(pickups)
			b.ReportMetric(float64(pickups[len(pickups)/2].Microseconds()), "pickup-p50-µs")
			b.ReportMetric(float64(pickups[len(pickups)*99/100].Microseconds()), "pickup-p99-µs")
		}
		b.ReportMetric(float64(rtts[len(rtts)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(rtts[len(rtts)*99/100].Microseconds()), "p99-µs")
		b.ReportMetric(float64(moved)/elapsed.Seconds()/1e6, "bulk-MB/s")
	})
}
