package broker

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func TestConnListener(t *testing.T) {
	l := NewConnListener(nil, 1)
	if l.Addr().String() != "handed-over" {
		t.Fatalf("Addr() = %v", l.Addr())
	}
	a1, b1 := net.Pipe()
	defer b1.Close()
	if err := l.Deliver(t.Context(), a1); err != nil {
		t.Fatal(err)
	}
	got, err := l.Accept()
	if err != nil || got != a1 {
		t.Fatalf("Accept() = %v, %v", got, err)
	}
	got.Close()

	// A full backlog makes Deliver wait, until its ctx ends.
	a2, b2 := net.Pipe()
	defer b2.Close()
	if err := l.Deliver(t.Context(), a2); err != nil {
		t.Fatal(err)
	}
	a3, b3 := net.Pipe()
	defer a3.Close()
	defer b3.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := l.Deliver(ctx, a3); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Deliver on a full backlog: %v", err)
	}

	// A Deliver blocked on a full backlog returns when the listener closes.
	blocked := make(chan error, 1)
	go func() { blocked <- l.Deliver(context.Background(), a3) }()
	accepted := make(chan error, 1)
	l.Close()
	select {
	case err := <-blocked:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("blocked Deliver: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Deliver still blocked after Close")
	}
	go func() { _, err := l.Accept(); accepted <- err }()
	select {
	case err := <-accepted:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Accept blocked after Close")
	}
	// a2 was delivered but never accepted: Close closed it.
	b2.SetReadDeadline(time.Now().Add(wait))
	if _, err := b2.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("unaccepted conn after Close: read %v, want EOF", err)
	}
	if err := l.Deliver(t.Context(), a3); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Deliver after Close: %v", err)
	}
	l.Close()
}

// A device with a persistent session gets, on reconnecting, the
// notification published while it was away.
func TestPersistentSessionQueues(t *testing.T) {
	b, _ := startBroker(t, Config{})
	topic := "$aws/things/dev-p/tunnels/notify"
	c1 := mustDial(t, clientOpts{url: tcpURL(b), id: "dev-p", persistent: true})
	c1.subscribe(t, topic)
	c1.Disconnect(100)
	mustNotify(t, b, note("dev-p"))
	c2 := mustDial(t, clientOpts{url: tcpURL(b), id: "dev-p", persistent: true})
	m := c2.expectOnly(t, topic)
	if m.Qos() != 1 {
		t.Fatalf("qos %d", m.Qos())
	}
}
