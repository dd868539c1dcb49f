package proxy

import (
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/tcptest"
)

// TestRelistenAfterListenerError breaks a listening socket (shutdown(2)
// makes accept fail on Linux) and checks the Source listens again on the
// same address.
func TestRelistenAfterListenerError(t *testing.T) {
	svc := tcptest.EchoServer(t)
	r := newRig(t, rigOpts{
		services: []string{"S"},
		targets:  map[string]string{"S": svc.Addr()},
	})
	addr := r.source.Addrs()["S"].String()

	r.source.mu.Lock()
	ln := r.source.listeners[0].ln.(*net.TCPListener)
	r.source.mu.Unlock()
	sc, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	sc.Control(func(fd uintptr) { syscall.Shutdown(int(fd), syscall.SHUT_RD) })

	waitFor(t, "a new listener", func() bool {
		r.source.mu.Lock()
		defer r.source.mu.Unlock()
		return r.source.listeners[0].ln != net.Listener(ln)
	})
	if got := r.source.Addrs()["S"].String(); got != addr {
		t.Fatalf("listening on %s, was %s", got, addr)
	}
	c := dialLocal(t, r.source, "S")
	c.SetDeadline(time.Now().Add(testTimeout))
	roundTrip(t, c, []byte("after the listener failed"))
	select {
	case <-r.source.Done():
		t.Fatalf("Source ended: %v", r.source.Err())
	default:
	}
}
