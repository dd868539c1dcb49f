package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/tcptest"
	"github.com/sectun/sectun/tunnel"
)

// rig is a Source and a Destination joined by a tunnel through the relay.
type rig struct {
	w        *world
	src, dst *tunnel.Session
	source   *Source
	dest     *Destination
}

type rigOpts struct {
	services []string          // the tunnel's service IDs
	targets  map[string]string // service ID -> local service address (tcp)
	dstSvcs  []Service         // overrides targets
	srcCfg   SourceConfig
	dstCfg   DestinationConfig
	srcTweak func(*tunnel.Config)
}

func newRig(t *testing.T, o rigOpts) *rig {
	t.Helper()
	w := newWorld(t)
	st, dt := w.open(o.services...)
	r := &rig{w: w}
	r.dst = w.connect(t, tunnel.ModeDestination, dt, nil)
	r.src = w.connect(t, tunnel.ModeSource, st, o.srcTweak)

	dcfg := o.dstCfg
	dcfg.Services = o.dstSvcs
	if dcfg.Services == nil {
		for id, addr := range o.targets {
			dcfg.Services = append(dcfg.Services, Service{ServiceID: id, Address: addr})
		}
	}
	if dcfg.Logger == nil {
		dcfg.Logger = testLogger(t).With("side", "destination")
	}
	d, err := NewDestination(r.dst, dcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	r.dest = d

	scfg := o.srcCfg
	if scfg.Services == nil {
		ids := o.services
		if len(ids) == 0 {
			ids = []string{""}
		}
		for _, id := range ids {
			scfg.Services = append(scfg.Services, Service{ServiceID: id, Address: "127.0.0.1:0"})
		}
	}
	if scfg.Logger == nil {
		scfg.Logger = testLogger(t).With("side", "source")
	}
	s, err := NewSource(testCtx(t), r.src, scfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	r.source = s
	return r
}

// roundTrip writes msg and reads the echo.
func roundTrip(t testing.TB, c net.Conn, msg []byte) {
	t.Helper()
	if err := tcptest.RoundTrip(context.Background(), c, msg); err != nil {
		t.Fatal(err)
	}
}

func TestManyConnectionsTwoServices(t *testing.T) {
	a := tcptest.EchoServer(t)
	b := tcptest.EchoServer(t)
	r := newRig(t, rigOpts{
		services: []string{"A", "B"},
		targets:  map[string]string{"A": a.Addr(), "B": b.Addr()},
	})
	const perService = 12
	var wg sync.WaitGroup
	errs := make(chan error, 2*perService)
	for _, svc := range []string{"A", "B"} {
		for i := range perService {
			wg.Add(1)
			go func() {
				defer wg.Done()
				addr := r.source.Addrs()[svc]
				c, err := net.DialTimeout("tcp", addr.String(), testTimeout)
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(testTimeout))
				for j := range 5 {
					msg := fmt.Appendf(nil, "%s-%d-%d-%s", svc, i, j, bytes.Repeat([]byte{'x'}, 1000*j))
					if _, err := c.Write(msg); err != nil {
						errs <- err
						return
					}
					got := make([]byte, len(msg))
					if _, err := io.ReadFull(c, got); err != nil {
						errs <- fmt.Errorf("%s conn %d: %w", svc, i, err)
						return
					}
					if !bytes.Equal(got, msg) {
						errs <- fmt.Errorf("%s conn %d: echo mismatch", svc, i)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if a.Accepted() != perService || b.Accepted() != perService {
		t.Errorf("services accepted %d and %d connections, want %d each", a.Accepted(), b.Accepted(), perService)
	}
	waitFor(t, "connections to end", func() bool { return r.source.Active() == 0 && r.dest.Active() == 0 })
}

// hashServer reads everything, then answers with the SHA-256 of what it
// read followed by n bytes of its own, whose hash the client checks.
func TestLargeTransferBothWays(t *testing.T) {
	const size = 8 << 20
	reply := make([]byte, size)
	rand.Read(reply)
	replySum := sha256.Sum256(reply)
	svc := tcptest.NewServer(t, func(c net.Conn) {
		// Send and receive at once: both directions loaded together.
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.Write(reply)
		}()
		h := sha256.New()
		io.CopyN(h, c, size)
		<-done
		c.Write(h.Sum(nil))
		io.Copy(io.Discard, c)
	})
	r := newRig(t, rigOpts{services: []string{"BULK", "OTHER"}, targets: map[string]string{"BULK": svc.Addr(), "OTHER": svc.Addr()}})
	c := dialLocal(t, r.source, "BULK")
	data := make([]byte, size)
	rand.Read(data)
	sum := sha256.Sum256(data)
	start := time.Now()
	// Deadlines that run while nothing moves, not over the whole transfer:
	// with -race at load 23 it takes 11-15 s, and over 20 s beside other
	// packages' tests.
	c.SetDeadline(time.Time{})
	go func() {
		for p := data; len(p) > 0; {
			c.SetWriteDeadline(time.Now().Add(testTimeout))
			n, err := c.Write(p[:min(len(p), 64<<10)])
			if err != nil {
				return
			}
			p = p[n:]
		}
	}()
	h := sha256.New()
	buf := make([]byte, 64<<10)
	for got := 0; got < size; {
		c.SetReadDeadline(time.Now().Add(testTimeout))
		n, err := c.Read(buf[:min(len(buf), size-got)])
		h.Write(buf[:n])
		got += n
		if err != nil {
			t.Fatalf("reading reply after %d bytes: %v", got, err)
		}
	}
	c.SetReadDeadline(time.Now().Add(testTimeout))
	if !bytes.Equal(h.Sum(nil), replySum[:]) {
		t.Fatal("reply checksum mismatch")
	}
	got := make([]byte, sha256.Size)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading checksum: %v", err)
	}
	if !bytes.Equal(got, sum[:]) {
		t.Fatal("the service received different data")
	}
	t.Logf("%d MiB each way in %v", size>>20, time.Since(start))
}

func TestMaxConnsRefusesCleanly(t *testing.T) {
	svc := tcptest.EchoServer(t)
	r := newRig(t, rigOpts{
		services: []string{"S"},
		targets:  map[string]string{"S": svc.Addr()},
		srcCfg:   SourceConfig{MaxConns: 2},
	})
	c1 := dialLocal(t, r.source, "S")
	roundTrip(t, c1, []byte("one"))
	c2 := dialLocal(t, r.source, "S")
	roundTrip(t, c2, []byte("two"))

	c3 := dialLocal(t, r.source, "S")
	expectEOF(t, c3, 5*time.Second)

	// The first two still work.
	roundTrip(t, c1, []byte("one again"))
	roundTrip(t, c2, []byte("two again"))

	// Room again once one ends.
	c1.Close()
	waitFor(t, "a slot to free up", func() bool { return r.source.Active() < 2 })
	c4 := dialLocal(t, r.source, "S")
	roundTrip(t, c4, []byte("four"))
}

func TestDestinationDialFailureGivesEOF(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close() // nothing listens there now: connection refused
	r := newRig(t, rigOpts{services: []string{"S"}, targets: map[string]string{"S": closed}})
	start := time.Now()
	c := dialLocal(t, r.source, "S")
	c.Write([]byte("hello?"))
	expectEOF(t, c, 5*time.Second)
	t.Logf("EOF after %v", time.Since(start))
}

func TestDestinationDialRetries(t *testing.T) {
	// The service appears only after the first attempt failed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	retrying := make(chan struct{}, 100)
	log := slog.New(&notifyHandler{Handler: testLogger(t).Handler(), match: "retrying", ch: retrying})
	r := newRig(t, rigOpts{
		services: []string{"S"},
		targets:  map[string]string{"S": addr},
		dstCfg:   DestinationConfig{DialRetries: 200, DialRetryDelay: 20 * time.Millisecond, Logger: log},
	})
	c := dialLocal(t, r.source, "S")
	c.Write([]byte("early data"))
	select {
	case <-retrying:
	case <-time.After(testTimeout):
		t.Fatal("the destination did not retry")
	}
	tcptest.Serve(t, listenAt(t, "tcp", addr), tcptest.Echo)
	got := make([]byte, len("early data"))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(got) != "early data" {
		t.Fatalf("got %q", got)
	}
}

func TestLocalCloseReachesService(t *testing.T) {
	got := make(chan []byte, 1)
	svc := tcptest.NewServer(t, func(c net.Conn) {
		b, _ := io.ReadAll(c) // ends at the reset that follows our FIN
		got <- b
	})
	r := newRig(t, rigOpts{services: []string{"S"}, targets: map[string]string{"S": svc.Addr()}})
	c := dialLocal(t, r.source, "S")
	msg := bytes.Repeat([]byte("half-close "), 50000)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	select {
	case b := <-got:
		if !bytes.Equal(b, msg) {
			t.Fatalf("service got %d bytes, want %d", len(b), len(msg))
		}
	case <-time.After(testTimeout):
		t.Fatal("the service did not see end of file")
	}
	// And the source closes our socket.
	expectEOF(t, c, 5*time.Second)
}

func TestServiceCloseFlushes(t *testing.T) {
	payload := make([]byte, 3<<20)
	rand.Read(payload)
	svc := tcptest.NewServer(t, func(c net.Conn) {
		c.Write(payload)
	})
	r := newRig(t, rigOpts{services: []string{"S"}, targets: map[string]string{"S": svc.Addr()}})
	c := dialLocal(t, r.source, "S")
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(b, payload) {
		t.Fatalf("got %d bytes, want %d", len(b), len(payload))
	}
}

func TestReconnectClosesConnectionsAndServesNewOnes(t *testing.T) {
	svc := tcptest.EchoServer(t)
	r := newRig(t, rigOpts{services: []string{"S"}, targets: map[string]string{"S": svc.Addr()}})
	c := dialLocal(t, r.source, "S")
	roundTrip(t, c, []byte("before"))

	r.w.fwd.cut() // both WebSockets drop; the sessions reconnect
	expectEOF(t, c, 10*time.Second)

	// A new connection works once the sessions are back; it may have been
	// dialed before the destination reconnected, so retry a few times.
	deadline := time.Now().Add(testTimeout)
	for {
		c2 := dialLocal(t, r.source, "S")
		c2.SetDeadline(time.Now().Add(3 * time.Second))
		_, werr := c2.Write([]byte("after"))
		got := make([]byte, 5)
		_, rerr := io.ReadFull(c2, got)
		c2.Close()
		if werr == nil && rerr == nil && string(got) == "after" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no working connection after the reconnect: %v %v", werr, rerr)
		}
	}
}

func TestUnixSocketDestination(t *testing.T) {
	path := filepath.Join(t.TempDir(), "svc.sock")
	tcptest.Serve(t, listenAt(t, "unix", path), tcptest.Echo)
	r := newRig(t, rigOpts{services: []string{"U"}, dstSvcs: []Service{{ServiceID: "U", Network: "unix", Address: path}}})
	c := dialLocal(t, r.source, "U")
	roundTrip(t, c, []byte("over a unix socket"))
}

func TestUnixSocketSource(t *testing.T) {
	svc := tcptest.EchoServer(t)
	path := filepath.Join(t.TempDir(), "src.sock")
	r := newRig(t, rigOpts{
		services: []string{"U"},
		targets:  map[string]string{"U": svc.Addr()},
		srcCfg:   SourceConfig{Services: []Service{{ServiceID: "U", Network: "unix", Address: path}}},
	})
	c := dialLocal(t, r.source, "U")
	roundTrip(t, c, []byte("from a unix socket"))
}

func TestAnonymousTunnel(t *testing.T) {
	svc := tcptest.EchoServer(t)
	r := newRig(t, rigOpts{targets: map[string]string{"": svc.Addr()}})
	c := dialLocal(t, r.source, "")
	roundTrip(t, c, []byte("no service IDs"))
}

func TestSingleMappingServesNamedService(t *testing.T) {
	svc := tcptest.EchoServer(t)
	r := newRig(t, rigOpts{services: []string{"SSH"}, targets: map[string]string{"": svc.Addr()}})
	c := dialLocal(t, r.source, "SSH")
	roundTrip(t, c, []byte("anonymous mapping"))
}

func TestUnmappedServiceRejected(t *testing.T) {
	a := tcptest.EchoServer(t)
	r := newRig(t, rigOpts{services: []string{"A", "B"}, targets: map[string]string{"A": a.Addr()}})
	c := dialLocal(t, r.source, "B")
	c.Write([]byte("x"))
	expectEOF(t, c, 5*time.Second)
	c2 := dialLocal(t, r.source, "A")
	roundTrip(t, c2, []byte("A still works"))
}

func TestCloseEndsConnections(t *testing.T) {
	svc := tcptest.EchoServer(t)
	r := newRig(t, rigOpts{services: []string{"S"}, targets: map[string]string{"S": svc.Addr()}})
	c := dialLocal(t, r.source, "S")
	roundTrip(t, c, []byte("x"))
	addr := r.source.Addrs()["S"]
	r.source.Close()
	expectEOF(t, c, 5*time.Second)
	if c, err := net.DialTimeout("tcp", addr.String(), time.Second); err == nil {
		c.Close()
		t.Fatal("still listening after Close")
	}
	r.source.Close() // idempotent
	r.dest.Close()
	select {
	case <-r.dest.Done():
	default:
		t.Fatal("Destination.Done open after Close")
	}
	if err := r.dest.Err(); err != nil {
		t.Fatalf("Destination.Err after Close: %v", err)
	}
}

func TestDestinationEndsWithSession(t *testing.T) {
	svc := tcptest.EchoServer(t)
	r := newRig(t, rigOpts{services: []string{"S"}, targets: map[string]string{"S": svc.Addr()}})
	r.dst.Close()
	select {
	case <-r.dest.Done():
	case <-time.After(testTimeout):
		t.Fatal("Destination did not end with its session")
	}
	if !errors.Is(r.dest.Err(), tunnel.ErrSessionClosed) {
		t.Fatalf("Err = %v, want ErrSessionClosed", r.dest.Err())
	}
}

func TestListenFailure(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	w := newWorld(t)
	st, _ := w.open("S")
	src := w.connect(t, tunnel.ModeSource, st, nil)
	_, err = NewSource(testCtx(t), src, SourceConfig{
		Services:         []Service{{ServiceID: "S", Address: busy.Addr().String()}},
		ListenRetries:    2,
		ListenRetryDelay: time.Millisecond,
		Logger:           testLogger(t),
	})
	if !errors.Is(err, ErrListen) {
		t.Fatalf("err = %v, want ErrListen", err)
	}
}

func TestConfigErrors(t *testing.T) {
	w := newWorld(t)
	st, dt := w.open("S")
	src := w.connect(t, tunnel.ModeSource, st, nil)
	dst := w.connect(t, tunnel.ModeDestination, dt, nil)
	for _, tc := range []struct {
		name string
		svcs []Service
	}{
		{"none", nil},
		{"bad network", []Service{{ServiceID: "S", Network: "udp", Address: "127.0.0.1:0"}}},
		{"no address", []Service{{ServiceID: "S"}}},
		{"twice", []Service{{ServiceID: "S", Address: "127.0.0.1:0"}, {ServiceID: "S", Address: "127.0.0.1:0"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewSource(testCtx(t), src, SourceConfig{Services: tc.svcs}); !errors.Is(err, ErrConfig) {
				t.Errorf("NewSource: %v, want ErrConfig", err)
			}
			if _, err := NewDestination(dst, DestinationConfig{Services: tc.svcs}); !errors.Is(err, ErrConfig) {
				t.Errorf("NewDestination: %v, want ErrConfig", err)
			}
		})
	}
	if _, err := NewDestination(dst, DestinationConfig{
		Services:    []Service{{ServiceID: "S", Address: "127.0.0.1:1"}},
		BindAddress: "no-such-host.invalid",
	}); !errors.Is(err, ErrConfig) {
		t.Errorf("bad bind address: %v, want ErrConfig", err)
	}
}

func TestBindAddress(t *testing.T) {
	peer := make(chan string, 1)
	svc := tcptest.NewServer(t, func(c net.Conn) {
		peer <- c.RemoteAddr().(*net.TCPAddr).IP.String()
		io.Copy(c, c)
	})
	r := newRig(t, rigOpts{
		services: []string{"S"},
		targets:  map[string]string{"S": svc.Addr()},
		dstCfg:   DestinationConfig{BindAddress: "127.0.0.1"},
	})
	c := dialLocal(t, r.source, "S")
	roundTrip(t, c, []byte("bound"))
	if ip := <-peer; ip != "127.0.0.1" {
		t.Fatalf("connected from %s", ip)
	}
}

func TestV2PeerOneConnectionPerService(t *testing.T) {
	svc := tcptest.EchoServer(t)
	r := newRig(t, rigOpts{
		services: []string{"S"},
		targets:  map[string]string{"S": svc.Addr()},
		srcTweak: func(c *tunnel.Config) { c.PeerVersion = 2 },
	})
	c1 := dialLocal(t, r.source, "S")
	roundTrip(t, c1, []byte("first"))
	c2 := dialLocal(t, r.source, "S")
	roundTrip(t, c2, []byte("second replaces the first"))
	expectEOF(t, c1, 5*time.Second)
}

// TestSourceSaysWhyBeforeReply: the source's log says that the
// destination's service refused, or that no destination is connected,
// rather than only that the connection closed.
func TestSourceSaysWhyBeforeReply(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	t.Run("refused", func(t *testing.T) {
		ch := make(chan struct{}, 1)
		r := newRig(t, rigOpts{services: []string{"S"}, targets: map[string]string{"S": closed},
			srcCfg: SourceConfig{Logger: slog.New(&notifyHandler{Handler: testLogger(t).Handler(), match: "could not connect to its service (connection refused? check its mapping", ch: ch})}})
		c := dialLocal(t, r.source, "S")
		c.Write([]byte("hello?"))
		expectEOF(t, c, 5*time.Second)
		select {
		case <-ch:
		case <-time.After(testTimeout):
			t.Fatal("no log line saying the destination's service refused")
		}
	})
	t.Run("no destination", func(t *testing.T) {
		w := newWorld(t)
		st, _ := w.open("S")
		src := w.connect(t, tunnel.ModeSource, st, nil)
		ch := make(chan struct{}, 1)
		s, err := NewSource(testCtx(t), src, SourceConfig{
			Services: []Service{{ServiceID: "S", Address: "127.0.0.1:0"}},
			Logger:   slog.New(&notifyHandler{Handler: testLogger(t).Handler(), match: "the destination is not connected", ch: ch}),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		c := dialLocal(t, s, "S")
		c.Write([]byte("hello?"))
		expectEOF(t, c, 5*time.Second)
		select {
		case <-ch:
		case <-time.After(testTimeout):
			t.Fatal("no log line saying the destination is not connected")
		}
	})
}
