package e2e

// Faults at the local ends of a tunnel: the destination service down, slow
// to accept, closing mid-stream or half-closing; the source's client
// closing mid-stream (FIN or RST) or half-closing. PROTOCOL.md: a local
// close or error is reported with CONNECTION_RESET (V3) and the receiver
// flushes what it received before closing; the protocol has no half-close,
// so a half-close ends the tunneled connection once the data written
// before it has been delivered.

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/tcptest"
)

// prompt bounds how long the far end may take to see a local end.
const prompt = 2 * time.Second

// sideEnd is what a test service saw of one connection.
type sideEnd struct {
	received *prefixCheck
	err      error
	at       time.Time
}

// gatedListener is a service whose accepts wait until the gate opens: the
// kernel completes the connection, the service does not pick it up.
type gatedListener struct {
	addr string
	gate chan struct{}
}

func startGated(t *testing.T) *gatedListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedListener{addr: ln.Addr().String(), gate: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-g.gate:
		case <-t.Context().Done():
			return
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(lpWait))
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return g
}

// TestFaultLocalEnds runs each local-end fault through one tunnel and
// checks both ends, promptly, and that no descriptor or goroutine is left.
func TestFaultLocalEnds(t *testing.T) {
	const (
		cutSize  = 300 << 10 // the service writes this much, then closes
		sinkSize = 1 << 20   // the client writes this much, then closes
	)
	// DOWN: nothing listens (yet).
	downLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downAddr := downLn.Addr().String()
	downLn.Close()
	slow := startGated(t)
	// CUT: reads a request, writes cutSize bytes, closes.
	cutClosed := make(chan time.Time, 1)
	cut := tcpService(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(lpWait))
		if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
			return
		}
		io.Copy(c, io.LimitReader(tcptest.Stream(seedDown), cutSize))
		c.Close()
		cutClosed <- time.Now()
	})
	// SINK: checks what it reads until the end.
	sinkEnds := make(chan sideEnd, 4)
	sink := tcpService(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(lpWait))
		chk := newPrefixCheck(seedUp)
		_, err := io.Copy(chk, c)
		sinkEnds <- sideEnd{received: chk, err: err, at: time.Now()}
	})
	// HALF: reads to the end, then answers (too late: nobody can get it).
	halfEnds := make(chan sideEnd, 1)
	half := tcpService(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(lpWait))
		chk := newPrefixCheck(seedUp)
		_, err := io.Copy(chk, c)
		halfEnds <- sideEnd{received: chk, err: err, at: time.Now()}
		c.Write([]byte("late answer"))
	})
	// SVCHALF: reads a request, answers, half-closes, then reads to the end.
	svcHalfEnds := make(chan sideEnd, 1)
	svcHalf := tcpService(t, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(lpWait))
		if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
			return
		}
		io.Copy(c, io.LimitReader(tcptest.Stream(seedDown), cutSize))
		c.(*net.TCPConn).CloseWrite()
		_, err := io.Copy(io.Discard, c)
		svcHalfEnds <- sideEnd{err: err, at: time.Now()}
	})

	d := startTunneld(t, "--mqtt-listen", "off", "--max-services", "6")
	tun := d.openTunnel(t, "thing1", "DOWN", "SLOW", "CUT", "SINK", "HALF", "SVCHALF")
	settings := proxySettings(t, rigPing, rigRetry) // one dial retry after 100 ms
	dst := startDestination(t, d.wsURL, tun.DestinationAccessToken,
		"DOWN="+downAddr+",SLOW="+slow.addr+",CUT="+cut+",SINK="+sink+",HALF="+half+",SVCHALF="+svcHalf, "--settings-json", settings)
	src, addrs := startSource(t, d.wsURL, tun.SourceAccessToken, "DOWN=0,SLOW=0,CUT=0,SINK=0,HALF=0,SVCHALF=0", 6, "--settings-json", settings)
	leaks := watchLeaks(t, d, src, dst)
	var figs figures
	defer figs.log(t)

	t.Run("service down", func(t *testing.T) {
		c := dialTCP(t, addrs["DOWN"])
		t0 := time.Now()
		io.WriteString(c, "hello")
		expectClosed(t, c, 5*time.Second)
		took := time.Since(t0)
		dst.waitLine(`rejected a connection: cannot connect to the local service.*service_id=DOWN`, lpWait)
		// The service comes up on its address: the next connection works.
		ln, err := net.Listen("tcp", downAddr)
		if err != nil {
			t.Skipf("cannot listen on %s again: %v", downAddr, err)
		}
		up := make(chan struct{})
		go func() {
			defer close(up)
			c, err := ln.Accept()
			if err == nil {
				c.SetDeadline(time.Now().Add(lpWait))
				io.CopyN(c, c, 5)
				c.Close()
			}
		}()
		t.Cleanup(func() { ln.Close(); <-up })
		echoRoundTrip(t, dialTCP(t, addrs["DOWN"]), "again")
		figs.add("service down: the client's connection closed %v after it connected (tcp.connection_retry_count 1, delay 100 ms; the default 5 x 2.5 s makes it 12.5 s, as the reference); works once the service is up", ms(took))
	})

	t.Run("service slow to accept", func(t *testing.T) {
		c := dialTCP(t, addrs["SLOW"])
		io.WriteString(c, "hello")
		c.SetReadDeadline(time.Now().Add(time.Second))
		if n, err := c.Read(make([]byte, 1)); !isTimeout(err) {
			t.Fatalf("before the service accepts: read %d, %v; want nothing yet", n, err)
		}
		close(slow.gate)
		c.SetReadDeadline(time.Now().Add(lpWait))
		got := make([]byte, 5)
		if _, err := io.ReadFull(c, got); err != nil || string(got) != "hello" {
			t.Fatalf("after the service accepted: %q, %v", got, err)
		}
		echoRoundTrip(t, c, "and more")
		figs.add("service slow to accept (1 s): the connection waits, nothing lost, echo works once accepted")
	})

	t.Run("service closes mid-stream", func(t *testing.T) {
		c := dialTCP(t, addrs["CUT"])
		io.WriteString(c, "hello")
		chk := newPrefixCheck(seedDown)
		_, err := io.Copy(chk, c)
		end := time.Now()
		closedAt := within(t, cutClosed, lpWait)
		if err != nil || chk.n != cutSize || !chk.intact() {
			t.Fatalf("client got %v (%v), want all %d bytes then EOF", chk, err, cutSize)
		}
		if lag := end.Sub(closedAt); lag > prompt {
			t.Fatalf("the client saw the end %v after the service closed", lag)
		}
		figs.add("service closes mid-stream: the client got all %d KiB intact, then EOF %v after the service's close", cutSize>>10, ms(end.Sub(closedAt)))
	})

	t.Run("client closes mid-stream", func(t *testing.T) {
		c := dialTCP(t, addrs["SINK"])
		if _, err := io.Copy(c, io.LimitReader(tcptest.Stream(seedUp), sinkSize)); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		c.Close()
		e := within(t, sinkEnds, lpWait)
		if e.err != nil || e.received.n != sinkSize || !e.received.intact() {
			t.Fatalf("the service got %v (%v), want all %d bytes then EOF", e.received, e.err, sinkSize)
		}
		if lag := e.at.Sub(t0); lag > prompt {
			t.Fatalf("the service saw the end %v after the client closed", lag)
		}
		figs.add("client closes mid-stream (FIN): the service got all %d KiB intact, then EOF %v after the close", sinkSize>>10, ms(e.at.Sub(t0)))
	})

	t.Run("client resets mid-stream", func(t *testing.T) {
		c := dialTCP(t, addrs["SINK"]).(*net.TCPConn)
		if _, err := io.Copy(c, io.LimitReader(tcptest.Stream(seedUp), 256<<10)); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		c.SetLinger(0)
		c.Close()
		e := within(t, sinkEnds, lpWait)
		if !e.received.intact() {
			t.Fatalf("the service got %v", e.received)
		}
		if lag := e.at.Sub(t0); lag > prompt {
			t.Fatalf("the service saw the end %v after the client's reset", lag)
		}
		figs.add("client resets mid-stream (RST): the service got an intact %v, then its connection ended (%v) %v after the reset", e.received, e.err, ms(e.at.Sub(t0)))
	})

	t.Run("client half-closes", func(t *testing.T) {
		c := dialTCP(t, addrs["HALF"]).(*net.TCPConn)
		io.Copy(c, io.LimitReader(tcptest.Stream(seedUp), 64<<10))
		t0 := time.Now()
		c.CloseWrite()
		// No half-close in the protocol: the connection ends, after the
		// service got everything.
		e := within(t, halfEnds, lpWait)
		if e.err != nil || e.received.n != 64<<10 || !e.received.intact() {
			t.Fatalf("the service got %v (%v)", e.received, e.err)
		}
		n, err := io.Copy(io.Discard, c)
		end := time.Since(t0)
		if err != nil && !isReset(err) {
			t.Fatalf("client: %v", err)
		}
		if end > prompt {
			t.Fatalf("the client's connection ended %v after its half-close", end)
		}
		figs.add("client half-closes: the service got all 64 KiB and EOF %v after, the client's connection ended %v after (%d bytes of a late answer, which cannot be delivered)", ms(e.at.Sub(t0)), ms(end), n)
	})

	t.Run("service half-closes", func(t *testing.T) {
		c := dialTCP(t, addrs["SVCHALF"])
		io.WriteString(c, "hello")
		chk := newPrefixCheck(seedDown)
		_, err := io.Copy(chk, c)
		clientEnd := time.Now()
		if err != nil || chk.n != cutSize || !chk.intact() {
			t.Fatalf("client got %v (%v), want all %d bytes then EOF", chk, err, cutSize)
		}
		e := within(t, svcHalfEnds, lpWait)
		if lag := e.at.Sub(clientEnd); lag > prompt {
			t.Fatalf("the service's read side ended %v after the client's", lag)
		}
		figs.add("service half-closes after its answer: the client got all %d KiB and EOF; the service's connection ended %v later", cutSize>>10, ms(e.at.Sub(clientEnd)))
	})

	// Everything still works, and nothing was left behind.
	c := dialTCP(t, addrs["SLOW"])
	echoRoundTrip(t, c, "still fine")
	c.Close()
	leaks.check(10 * time.Second)
}

// within receives from ch, failing the test after timeout.
func within[T any](t *testing.T, ch <-chan T, timeout time.Duration) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(timeout):
		t.Fatalf("nothing received within %v", timeout)
		var zero T
		return zero
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
