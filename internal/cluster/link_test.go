package cluster

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sectun/sectun/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// linkPair is two links over a real loopback TCP connection; b's received
// records go to got.
func linkPair(t *testing.T, ping time.Duration) (a, b *link, got chan []byte) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	ca, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cb := <-acc
	a = newLink(ca, ping, testLogger(t))
	b = newLink(cb, ping, testLogger(t))
	got = make(chan []byte, 1)
	copyBuf := make([]byte, maxRecord)
	b.deliver = func(p []byte) error {
		n := copy(copyBuf, p)
		got <- copyBuf[:n]
		return nil
	}
	a.deliver = func([]byte) error { return nil }
	close(a.ready)
	close(b.ready)
	done := make(chan struct{}, 2)
	go func() { a.run(); done <- struct{}{} }()
	go func() { b.run(); done <- struct{}{} }()
	t.Cleanup(func() {
		a.end()
		b.end()
		<-done
		<-done
	})
	return a, b, got
}

func frames(t *testing.T, n int) []byte {
	var out []byte
	for i := range n {
		var err error
		out, err = wire.AppendFrame(out, &wire.Message{Type: wire.TypeData, StreamID: 1, ConnectionID: 1, Payload: bytes.Repeat([]byte{byte(i)}, 1000)})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestLinkCarriesWholeFrames: what Send takes arrives whole, in order.
func TestLinkCarriesWholeFrames(t *testing.T) {
	a, _, got := linkPair(t, time.Second)
	for i := 1; i <= 20; i++ {
		msg := frames(t, i)
		if err := a.Send(msg); err != nil {
			t.Fatal(err)
		}
		select {
		case g := <-got:
			if !bytes.Equal(g, msg) {
				t.Fatalf("record %d: got %d bytes, want %d", i, len(g), len(msg))
			}
			if n := int(binary.BigEndian.Uint16(g)); n+2 > len(g) {
				t.Fatal("not a whole frame")
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("record %d not delivered", i)
		}
	}
	if err := a.Send(make([]byte, maxRecord+1)); err == nil {
		t.Fatal("Send of more than a record took it")
	}
}

// TestLinkAllocs: 0 allocations per relayed message, sender and receiver
// together (the receiver copies into a reused buffer, as Deliver does).
func TestLinkAllocs(t *testing.T) {
	a, _, got := linkPair(t, time.Hour)
	msg := frames(t, 8)
	for range 10 {
		a.Send(msg)
		<-got
	}
	allocs := testing.AllocsPerRun(500, func() {
		if err := a.Send(msg); err != nil {
			t.Fatal(err)
		}
		<-got
	})
	if allocs != 0 {
		t.Fatalf("%.2f allocations per relayed message, want 0", allocs)
	}
}

// TestLinkSilentEnds: a link whose other end stops sending (a frozen
// node: nothing read, no pings) ends after three ping intervals.
func TestLinkSilentEnds(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	release, frozen := make(chan struct{}), make(chan struct{})
	defer func() { close(release); <-frozen }()
	go func() {
		defer close(frozen)
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			<-release // frozen: reads and writes nothing
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	l := newLink(c, 100*time.Millisecond, testLogger(t))
	l.deliver = func([]byte) error { return nil }
	close(l.ready)
	start := time.Now()
	done := make(chan struct{})
	go func() { l.run(); close(done) }()
	select {
	case <-done:
	case <-time.After(4 * time.Second):
		t.Fatal("a silent link was not ended")
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("link ended after %v, before three ping intervals", d)
	}
}
