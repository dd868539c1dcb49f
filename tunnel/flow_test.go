package tunnel

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sectun/sectun/tunnel/internal/fakeservice"
	"github.com/sectun/sectun/wire"
)

// TestSlowReaderBounded: a connection that is not read holds at most its
// receive window at the destination and its send buffer at the source; the
// writer blocks meanwhile, and nothing is lost.
func TestSlowReaderBounded(t *testing.T) {
	const window = 64 << 10
	_, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, func(s, d *Config) {
		s.SendBuffer, d.ReceiveBuffer = window, window
		d.StallTimeout = -1
	})
	a, b := dialAccept(t, src, dst, "SSH1")
	data := make([]byte, 48<<20) // more than the kernel and relay buffers hold
	rand.Read(data)
	var written atomic.Int64
	werr := make(chan error, 1)
	go func() {
		for p := data; len(p) > 0; {
			n, err := a.Write(p[:min(len(p), 32<<10)])
			written.Add(int64(n))
			if err != nil {
				werr <- err
				return
			}
			p = p[n:]
		}
		werr <- nil
	}()
	// Wait until the pipeline is full: the destination's window is full and
	// the writer makes no more progress.
	deadline := time.Now().Add(testTimeout)
	for {
		recv, _ := b.buffered()
		before := written.Load()
		time.Sleep(50 * time.Millisecond)
		if recv == window && written.Load() == before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pipeline never filled: recv %d, written %d", recv, written.Load())
		}
	}
	if w := written.Load(); w == int64(len(data)) {
		t.Fatalf("the writer was never held back")
	}
	for range 5 {
		recv, _ := b.buffered()
		_, send := a.buffered()
		if recv > window || send > window {
			t.Fatalf("buffers over their bounds: recv %d, send %d", recv, send)
		}
		time.Sleep(10 * time.Millisecond)
	}
	got := readN(t, b, len(data))
	if !bytes.Equal(got, data) {
		t.Fatal("data differs")
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if recv, _ := b.buffered(); recv != 0 {
		t.Fatalf("%d bytes left", recv)
	}
}

// TestStallResetsConn: a connection whose reader stalls longer than
// StallTimeout is reset so that the others can go on.
func TestStallResetsConn(t *testing.T) {
	_, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1", "HTTP1"}}, func(s, d *Config) {
		d.ReceiveBuffer = 64 << 10
		d.StallTimeout = 300 * time.Millisecond
	})
	a, b := dialAccept(t, src, dst, "SSH1")
	c, d := dialAccept(t, src, dst, "HTTP1")
	go func() {
		buf := make([]byte, 32<<10)
		for {
			if _, err := a.Write(buf); err != nil {
				return
			}
		}
	}()
	// Wait until b's window is full and the session's reader blocks on it.
	for {
		if recv, _ := b.buffered(); recv == 64<<10 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// c/d work again once b has been reset.
	writeAll(t, c, []byte("hello"))
	if got := readN(t, d, 5); string(got) != "hello" {
		t.Fatalf("got %q", got)
	}
	n := 0
	b.SetReadDeadline(time.Now().Add(testTimeout))
	buf := make([]byte, 4096)
	var err error
	for err == nil {
		var k int
		k, err = b.Read(buf)
		n += k
	}
	if !errors.Is(err, ErrStreamReset) || n == 0 {
		t.Fatalf("stalled conn: read %d then %v", n, err)
	}
	// The source side learns of the reset.
	if _, err := readAll(t, a); err != nil {
		t.Fatalf("source conn: %v", err)
	}
}

// TestFairness: a small request/response exchange completes quickly while
// another connection of the same session pushes bulk data.
func TestFairness(t *testing.T) {
	_, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1", "HTTP1"}}, nil)
	bulkA, bulkB := dialAccept(t, src, dst, "HTTP1")
	pingA, pingB := dialAccept(t, src, dst, "SSH1")
	var moved atomic.Int64
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := bulkB.Read(buf)
			moved.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := bulkA.Write(buf); err != nil {
				return
			}
		}
	}()
	go io.Copy(pingB, pingB)
	for moved.Load() < 8<<20 {
		time.Sleep(5 * time.Millisecond)
	}
	start := moved.Load()
	rtts := make([]time.Duration, 0, 40)
	msg := make([]byte, 64)
	for range 40 {
		t0 := time.Now()
		writeAll(t, pingA, msg)
		readN(t, pingA, len(msg))
		rtts = append(rtts, time.Since(t0))
	}
	slices.Sort(rtts)
	bulk := moved.Load() - start
	t.Logf("64 B round trips beside bulk: p50 %v p95 %v max %v; bulk moved %d MB meanwhile",
		rtts[20], rtts[38], rtts[39], bulk>>20)
	if rtts[38] > 2*time.Second {
		t.Fatalf("p95 round trip %v beside bulk transfer", rtts[38])
	}
	if bulk == 0 {
		t.Fatal("bulk transfer stopped")
	}
}

// TestPeerSilentWarning: a destination that never answers is reported once.
func TestPeerSilentWarning(t *testing.T) {
	svc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1"}})
	dst := rawPeer(t, svc, ModeDestination, 3)
	ev := newEvents()
	cfg := baseConfig(t, svc, ModeSource)
	cfg.OnEvent = ev.add
	cfg.NoReplyWarning = 100 * time.Millisecond
	src := connect(t, cfg)
	for range 2 {
		a, _ := src.Dial(testCtx(t), "SSH1")
		writeAll(t, a, []byte("hello?"))
		defer a.Close()
	}
	p := waitEvent[PeerSilent](t, ev, nil)
	if p.ServiceID != "SSH1" || p.StreamID != 1 {
		t.Fatalf("event %+v", p)
	}
	time.Sleep(300 * time.Millisecond)
	waitCount[PeerSilent](t, ev, 1)
	if n := len(slices.DeleteFunc(ev.list(), func(e Event) bool { _, ok := e.(PeerSilent); return !ok })); n != 1 {
		t.Fatalf("%d PeerSilent events, want 1", n)
	}
	_ = dst
	_ = wire.TypeData
}
