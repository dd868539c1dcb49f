package faultproxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const wait = 10 * time.Second

// server accepts connections on 127.0.0.1:0 and serves each with handle.
func server(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle(c)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// echo copies back until EOF, then half-closes.
func echo(c net.Conn) {
	io.Copy(c, c)
	c.(*net.TCPConn).CloseWrite()
}

func newProxy(t *testing.T, target string, f Faults) *Proxy {
	t.Helper()
	p, err := New(Config{Target: target, Faults: f})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(wait))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// roundTrip sends size random bytes through an echo and checks they come
// back identical, with the write side half-closed at the end.
func roundTrip(t *testing.T, c *net.TCPConn, size int) {
	t.Helper()
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{7}).Read(data)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("got %d bytes, want the %d sent, unchanged", len(got), len(data))
	}
}

func TestForwarding(t *testing.T) {
	target := server(t, echo)
	for _, tc := range []struct {
		name string
		f    Faults
		size int
	}{
		{"plain", Faults{}, 1 << 20},
		{"latency and jitter", Faults{Latency: 2 * time.Millisecond, Jitter: 5 * time.Millisecond}, 256 << 10},
		{"bandwidth", Faults{Bandwidth: 4 << 20}, 256 << 10},
		{"one-byte segments", Faults{Segment: 1}, 16 << 10},
		{"all at once", Faults{Latency: time.Millisecond, Jitter: time.Millisecond, Bandwidth: 8 << 20, Segment: 7}, 64 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newProxy(t, target, tc.f)
			roundTrip(t, dial(t, p.Addr()), tc.size)
			if s := p.Stats(); s.Up != int64(tc.size) || s.Down != int64(tc.size) {
				t.Errorf("stats %+v, want %d bytes each way", s, tc.size)
			}
		})
	}
}

// TestJitterKeepsOrder sends numbered small writes through heavy jitter.
func TestJitterKeepsOrder(t *testing.T) {
	target := server(t, echo)
	p := newProxy(t, target, Faults{Jitter: 3 * time.Millisecond})
	c := dial(t, p.Addr())
	const n = 300
	go func() {
		var b [4]byte
		for i := range n {
			binary.BigEndian.PutUint32(b[:], uint32(i))
			if _, err := c.Write(b[:]); err != nil {
				return
			}
		}
		c.CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4*n {
		t.Fatalf("got %d bytes, want %d", len(got), 4*n)
	}
	for i := range n {
		if v := binary.BigEndian.Uint32(got[4*i:]); v != uint32(i) {
			t.Fatalf("message %d is %d: reordered", i, v)
		}
	}
}

func TestLatency(t *testing.T) {
	target := server(t, echo)
	p := newProxy(t, target, Faults{Latency: 50 * time.Millisecond})
	c := dial(t, p.Addr())
	start := time.Now()
	c.Write([]byte("x"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(start); rtt < 100*time.Millisecond {
		t.Fatalf("round trip %v, want at least 2 x 50 ms", rtt)
	}
	p.SetFaults(Faults{})
	start = time.Now()
	c.Write([]byte("y"))
	io.ReadFull(c, make([]byte, 1))
	if rtt := time.Since(start); rtt > 90*time.Millisecond {
		t.Fatalf("round trip %v after the latency was removed", rtt)
	}
}

func TestBandwidthCap(t *testing.T) {
	target := server(t, echo)
	const rate, size = 1 << 20, 256 << 10
	p := newProxy(t, target, Faults{Bandwidth: rate})
	start := time.Now()
	roundTrip(t, dial(t, p.Addr()), size)
	// Each direction is capped separately and they overlap: the transfer
	// takes at least size/rate (minus the first burst).
	if d, min := time.Since(start), time.Duration(size-rate/20)*time.Second/rate; d < min {
		t.Fatalf("%d bytes at %d B/s took %v, want at least %v", size, rate, d, min)
	}
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func TestReset(t *testing.T) {
	serverErr := make(chan error, 1)
	target := server(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(wait))
		_, err := io.Copy(io.Discard, c)
		serverErr <- err
	})
	p := newProxy(t, target, Faults{})
	c := dial(t, p.Addr())
	c.Write(make([]byte, 1000))
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := p.WaitForwarded(ctx, 1000); err != nil {
		t.Fatal(err)
	}
	if n := p.Reset(); n != 1 {
		t.Fatalf("Reset affected %d connections, want 1", n)
	}
	if _, err := c.Read(make([]byte, 10)); !isReset(err) {
		t.Fatalf("client read after Reset: %v, want a connection reset", err)
	}
	if err := <-serverErr; !isReset(err) {
		t.Fatalf("server read after Reset: %v, want a connection reset", err)
	}
	// New connections still work.
	if s := p.Stats(); s.Resets != 1 {
		t.Errorf("stats %+v", s)
	}
}

func TestBlackhole(t *testing.T) {
	got := make(chan int, 16)
	target := server(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(wait))
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				got <- n
			}
			if err != nil {
				return
			}
		}
	})
	p := newProxy(t, target, Faults{})
	c := dial(t, p.Addr())
	c.Write([]byte("before"))
	<-got
	if n := p.Blackhole(); n != 1 {
		t.Fatalf("Blackhole affected %d connections", n)
	}
	// Writes vanish (and eventually block: nobody reads); nothing comes back,
	// nothing is closed.
	c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
	var written int
	for {
		n, err := c.Write(make([]byte, 64<<10))
		written += n
		if err != nil {
			if !os.IsTimeout(err) {
				t.Fatalf("write to a blackholed connection: %v, want it to block", err)
			}
			break
		}
	}
	select {
	case n := <-got:
		t.Fatalf("the server received %d bytes through a blackhole", n)
	default:
	}
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !os.IsTimeout(err) {
		t.Fatalf("read from a blackholed connection: %v, want a timeout", err)
	}
	t.Logf("%d bytes written into the blackhole before writes blocked", written)
	// New connections are not affected.
	c2 := dial(t, p.Addr())
	c2.Write([]byte("after"))
	select {
	case <-got:
	case <-time.After(wait):
		t.Fatal("a new connection does not get through")
	}
	if n := p.DropBlackholed(); n != 1 {
		t.Fatalf("DropBlackholed dropped %d", n)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	if _, err := c.Read(make([]byte, 1)); !isReset(err) {
		t.Fatalf("read after DropBlackholed: %v, want a reset", err)
	}
}

func TestModes(t *testing.T) {
	target := server(t, echo)
	p := newProxy(t, target, Faults{})
	p.SetMode(Refuse)
	if err := dialReset(p.Addr()); err != nil {
		t.Fatalf("Refuse: %v", err)
	}
	p.SetMode(Hole)
	c := dial(t, p.Addr())
	c.Write([]byte("hello"))
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !os.IsTimeout(err) {
		t.Fatalf("Hole: read %v, want a timeout", err)
	}
	p.SetMode(Pass)
	roundTrip(t, dial(t, p.Addr()), 1000)
	if s := p.Stats(); s.Accepted != 3 || s.Blackholed != 1 || s.Active < 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestTargetDown(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	p := newProxy(t, addr, Faults{})
	if err := dialReset(p.Addr()); err != nil {
		t.Fatal(err)
	}
}

// dialReset connects to addr and expects the connection to be reset, at
// once or at the first read (the reset may beat the end of connect).
func dialReset(addr string) error {
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		if isReset(err) {
			return nil
		}
		return err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(wait))
	if _, err := c.Read(make([]byte, 1)); !isReset(err) && err != io.EOF {
		return fmt.Errorf("read %v, want a reset", err)
	}
	return nil
}

// TestHalfClose: a FIN is forwarded while the other direction goes on.
func TestHalfClose(t *testing.T) {
	target := server(t, func(c net.Conn) {
		data, _ := io.ReadAll(c) // until the client's FIN
		c.Write(bytes.ToUpper(data))
	})
	p := newProxy(t, target, Faults{Latency: time.Millisecond})
	c := dial(t, p.Addr())
	c.Write([]byte("half"))
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "HALF" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestCloseWithLiveConnections(t *testing.T) {
	target := server(t, echo)
	p, err := New(Config{Target: target})
	if err != nil {
		t.Fatal(err)
	}
	c1 := dial(t, p.Addr())
	c1.Write([]byte("x"))
	io.ReadFull(c1, make([]byte, 1))
	c2 := dial(t, p.Addr())
	c2.Write([]byte("y"))
	io.ReadFull(c2, make([]byte, 1))
	p.Blackhole()
	p.Close()
	p.Close()
	for _, c := range []*net.TCPConn{c1, c2} {
		if _, err := c.Read(make([]byte, 1)); !isReset(err) && err != io.EOF {
			t.Fatalf("read after Close: %v", err)
		}
	}
}

func TestConfig(t *testing.T) {
	for _, cfg := range []Config{{}, {Target: "nope"}, {Target: "127.0.0.1:1", Faults: Faults{Latency: -1}}} {
		if _, err := New(cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("New(%+v): %v, want ErrConfig", cfg, err)
		}
	}
}

func BenchmarkForward(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	p, err := New(Config{Target: ln.Addr().String()})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 32<<10)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}
