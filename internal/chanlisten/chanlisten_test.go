package chanlisten

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// wait bounds every wait for something that should happen at once.
const wait = 5 * time.Second

func TestAddr(t *testing.T) {
	tcp := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 443}
	tests := []struct {
		name          string
		addr          net.Addr
		network, want string
	}{
		{"nil", nil, "conn", "handed-over"},
		{"given", tcp, "tcp", "127.0.0.1:443"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := New(tt.addr, 1)
			defer l.Close()
			if a := l.Addr(); a.Network() != tt.network || a.String() != tt.want {
				t.Fatalf("Addr() = %s %s, want %s %s", a.Network(), a, tt.network, tt.want)
			}
		})
	}
}

func pipe(t *testing.T) (net.Conn, net.Conn) {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestDeliverAccept(t *testing.T) {
	for _, backlog := range []int{-1, 0, 1, 3} {
		l := New(nil, backlog)
		n := max(backlog, 1)
		var sent []net.Conn
		for range n {
			a, _ := pipe(t)
			if err := l.Deliver(t.Context(), a); err != nil {
				t.Fatalf("backlog %d: Deliver: %v", backlog, err)
			}
			sent = append(sent, a)
		}
		for i, want := range sent {
			got, err := l.Accept()
			if err != nil || got != want {
				t.Fatalf("backlog %d: Accept #%d = %v, %v; want the delivered conns in order", backlog, i, got, err)
			}
		}
		l.Close()
	}
}

func TestFullBacklog(t *testing.T) {
	l := New(nil, 1)
	defer l.Close()
	a1, _ := pipe(t)
	if err := l.Deliver(t.Context(), a1); err != nil {
		t.Fatal(err)
	}
	// A full backlog makes Deliver wait, until its ctx ends.
	a2, _ := pipe(t)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := l.Deliver(ctx, a2); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Deliver on a full backlog: %v, want DeadlineExceeded", err)
	}
	// Accepting makes room for a waiting Deliver.
	done := make(chan error, 1)
	go func() { done <- l.Deliver(t.Context(), a2) }()
	if c, err := l.Accept(); err != nil || c != a1 {
		t.Fatalf("Accept = %v, %v", c, err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Deliver after Accept made room: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Deliver still blocked after Accept made room")
	}
}

func TestClose(t *testing.T) { synctest.Test(t, testClose) }

func testClose(t *testing.T) {
	l := New(nil, 1)
	a1, b1 := pipe(t)
	if err := l.Deliver(t.Context(), a1); err != nil {
		t.Fatal(err)
	}
	// A Deliver blocked on a full backlog returns when the listener closes,
	// and its caller still owns the connection.
	a2, b2 := pipe(t)
	blocked := make(chan error, 1)
	go func() { blocked <- l.Deliver(context.Background(), a2) }()
	// In the bubble, Wait returns once that Deliver is blocked on the full
	// backlog: Close must wake it, not find it not yet started.
	synctest.Wait()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-blocked:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("blocked Deliver: %v, want net.ErrClosed", err)
		}
	case <-time.After(wait):
		t.Fatal("Deliver still blocked after Close")
	}
	accepted := make(chan error, 1)
	go func() { _, err := l.Accept(); accepted <- err }()
	select {
	case err := <-accepted:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(wait):
		t.Fatal("Accept blocked after Close")
	}
	// a1 was delivered but never accepted: Close closed it.
	b1.SetReadDeadline(time.Now().Add(wait))
	if _, err := b1.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("unaccepted conn after Close: read %v, want EOF", err)
	}
	// a2 was refused: still open.
	go a2.Write([]byte{1})
	b2.SetReadDeadline(time.Now().Add(wait))
	if _, err := b2.Read(make([]byte, 1)); err != nil {
		t.Fatalf("refused conn after Close: read %v, want it still open", err)
	}
	if err := l.Deliver(t.Context(), a2); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Deliver after Close: %v, want net.ErrClosed", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// countConn counts Close calls.
type countConn struct {
	net.Conn
	closes *atomic.Int64
}

func (c countConn) Close() error { c.closes.Add(1); return nil }

// Every delivered connection ends up either accepted, refused to its
// deliverer, or closed by Close: none is lost or closed twice, whatever
// the interleaving of Deliver, Accept and Close.
func TestConcurrentNoLoss(t *testing.T) {
	for range 20 {
		l := New(nil, 4)
		var (
			closes             atomic.Int64
			delivered, refused atomic.Int64
			accepted           atomic.Int64
			wg                 sync.WaitGroup
		)
		for range 8 {
			wg.Go(func() {
				for range 50 {
					c := countConn{closes: &closes}
					if err := l.Deliver(context.Background(), c); err != nil {
						if !errors.Is(err, net.ErrClosed) {
							t.Errorf("Deliver: %v", err)
						}
						refused.Add(1)
						return
					}
					delivered.Add(1)
				}
			})
		}
		acceptDone := make(chan struct{})
		go func() {
			defer close(acceptDone)
			for {
				if _, err := l.Accept(); err != nil {
					return
				}
				if accepted.Add(1) == 100 {
					l.Close()
				}
			}
		}()
		wg.Wait()
		l.Close() // if every Deliver finished before 100 accepts
		select {
		case <-acceptDone:
		case <-time.After(wait):
			t.Fatal("Accept still blocked after Close")
		}
		if got, want := accepted.Load()+closes.Load(), delivered.Load(); got != want {
			t.Fatalf("accepted %d + closed by Close %d != delivered %d", accepted.Load(), closes.Load(), want)
		}
	}
}

func BenchmarkDeliverAccept(b *testing.B) {
	l := New(nil, 64)
	defer l.Close()
	c, _ := net.Pipe()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := l.Deliver(ctx, c); err != nil {
			b.Fatal(err)
		}
		if _, err := l.Accept(); err != nil {
			b.Fatal(err)
		}
	}
}
