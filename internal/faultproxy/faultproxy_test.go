package faultproxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sectun/sectun/internal/tcptest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const wait = 10 * time.Second

// server serves each connection with handle on 127.0.0.1:0 until the
// test ends.
func server(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	return tcptest.NewServer(t, handle).Addr()
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

// roundTrip sends size bytes through an echo, half-closes, and checks
// that they come back identical, followed by EOF.
func roundTrip(t *testing.T, c *net.TCPConn, size int) {
	t.Helper()
	if err := tcptest.EchoedToEOF(t.Context(), c, int64(size), 7); err != nil {
		t.Fatal(err)
	}
}

func TestForwarding(t *testing.T) {
	target := server(t, tcptest.Echo)
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
			roundTrip(t, tcptest.Dial(t, p.Addr()), tc.size)
			if s := p.Stats(); s.Up != int64(tc.size) || s.Down != int64(tc.size) {
				t.Errorf("stats %+v, want %d bytes each way", s, tc.size)
			}
		})
	}
}

// TestJitterKeepsOrder sends numbered small writes through heavy jitter.
func TestJitterKeepsOrder(t *testing.T) {
	target := server(t, tcptest.Echo)
	p := newProxy(t, target, Faults{Jitter: 3 * time.Millisecond})
	c := tcptest.Dial(t, p.Addr())
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
	target := server(t, tcptest.Echo)
	p := newProxy(t, target, Faults{Latency: 50 * time.Millisecond})
	c := tcptest.Dial(t, p.Addr())
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
	target := server(t, tcptest.Echo)
	const rate, size = 1 << 20, 256 << 10
	p := newProxy(t, target, Faults{Bandwidth: rate})
	start := time.Now()
	roundTrip(t, tcptest.Dial(t, p.Addr()), size)
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
	c := tcptest.Dial(t, p.Addr())
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
	c := tcptest.Dial(t, p.Addr())
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
	c2 := tcptest.Dial(t, p.Addr())
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
	target := server(t, tcptest.Echo)
	p := newProxy(t, target, Faults{})
	p.SetMode(Refuse)
	if err := dialReset(p.Addr()); err != nil {
		t.Fatalf("Refuse: %v", err)
	}
	p.SetMode(Hole)
	c := tcptest.Dial(t, p.Addr())
	c.Write([]byte("hello"))
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !os.IsTimeout(err) {
		t.Fatalf("Hole: read %v, want a timeout", err)
	}
	p.SetMode(Pass)
	roundTrip(t, tcptest.Dial(t, p.Addr()), 1000)
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
	c := tcptest.Dial(t, p.Addr())
	c.Write([]byte("half"))
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "HALF" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestCloseWithLiveConnections(t *testing.T) {
	target := server(t, tcptest.Echo)
	p, err := New(Config{Target: target})
	if err != nil {
		t.Fatal(err)
	}
	c1 := tcptest.Dial(t, p.Addr())
	c1.Write([]byte("x"))
	io.ReadFull(c1, make([]byte, 1))
	c2 := tcptest.Dial(t, p.Addr())
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
	target := tcptest.NewServer(b, func(c net.Conn) { io.Copy(io.Discard, c) })
	p, err := New(Config{Target: target.Addr()})
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
