package wsconn

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// queueOpts are the socket options the short-queue policy sets.
type queueOpts struct{ sndbuf, rcvbuf, lowat int }

func readQueueOpts(t *testing.T, c *Conn) queueOpts {
	t.Helper()
	tcp, err := c.tcpConn()
	if err != nil {
		t.Error(err)
		return queueOpts{}
	}
	rc, err := tcp.SyscallConn()
	if err != nil {
		t.Error(err)
		return queueOpts{}
	}
	var q queueOpts
	var errs [3]error
	rc.Control(func(fd uintptr) {
		q.sndbuf, errs[0] = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
		q.rcvbuf, errs[1] = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
		q.lowat, errs[2] = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT)
	})
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	return q
}

// Dial and Accept give the connection short kernel queues unless told to
// keep the kernel's buffers, over ws:// and wss:// alike (the options are
// read back from the kernel).
func TestShortQueues(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tls   bool
		keep  bool
		wrap  bool // the server's connections are wrapped (NetConn method)
		short bool
	}{
		{"ws", false, false, false, true},
		{"wss", true, false, false, true},
		{"ws/keep", false, true, false, false},
		{"wss/keep", true, true, false, false},
		{"ws/wrapped", false, false, true, true},
		{"wss/wrapped", true, false, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			server := make(chan queueOpts, 1)
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				c, err := Accept(w, r, AcceptOptions{KeepSocketBuffers: tc.keep})
				if err != nil {
					return
				}
				server <- readQueueOpts(t, c)
				c.SetLiveness(5 * time.Second)
				c.Read(make([]byte, 1)) // until the client closes
				c.Close(CloseNormal, "")
			})
			srv := httptest.NewUnstartedServer(h)
			if tc.wrap {
				srv.Listener = wrappingListener{srv.Listener}
			}
			var cfg *tls.Config
			if tc.tls {
				srv.StartTLS()
				cfg = &tls.Config{InsecureSkipVerify: true}
			} else {
				srv.Start()
			}
			t.Cleanup(srv.Close)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, _, err := Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), DialOptions{TLS: cfg, Proxy: noProxy, KeepSocketBuffers: tc.keep})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(CloseNormal, "")
			client := readQueueOpts(t, c)
			var srvOpts queueOpts
			select {
			case srvOpts = <-server:
			case <-ctx.Done():
				t.Fatal("no server connection")
			}
			for side, q := range map[string]queueOpts{"client": client, "server": srvOpts} {
				// Linux doubles the buffer sizes set, for its bookkeeping;
				// loopback's round trip is far below 8 ms, so the sizes are
				// the floor.
				short := q.lowat == notsentLowat && q.sndbuf == 2*minSocketBuffer && q.rcvbuf == 2*minSocketBuffer
				if short != tc.short {
					t.Errorf("%s: SO_SNDBUF %d, SO_RCVBUF %d, TCP_NOTSENT_LOWAT %d; want short queues: %v", side, q.sndbuf, q.rcvbuf, q.lowat, tc.short)
				}
			}
		})
	}
}

// wrappingListener wraps each accepted connection in a type that exposes
// it only through a NetConn method, as tunneld's connection limiter does.
type wrappingListener struct{ net.Listener }

type wrappedConn struct{ net.Conn }

func (c wrappedConn) NetConn() net.Conn { return c.Conn }

func (l wrappingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return wrappedConn{c}, nil
}

// tcpMinRTT reads the round trip of a loopback connection: tens of
// microseconds, not zero (the size policy depends on it).
func TestTCPMinRTT(t *testing.T) {
	u := serve(t, func(c *Conn) {
		c.SetLiveness(5 * time.Second)
		c.Read(make([]byte, 1))
	})
	c, _ := dialT(t, u)
	tcp, err := c.tcpConn()
	if err != nil {
		t.Fatal(err)
	}
	rtt, err := tcpMinRTT(tcp)
	if err != nil {
		t.Fatal(err)
	}
	if rtt <= 0 || rtt > time.Second {
		t.Fatalf("loopback min RTT %v", rtt)
	}
	t.Logf("loopback min RTT %v", rtt)
}

func TestBufferSize(t *testing.T) {
	for _, tc := range []struct {
		rtt  time.Duration
		want int
	}{
		{0, minSocketBuffer},
		{7 * time.Microsecond, minSocketBuffer}, // loopback
		{200 * time.Microsecond, max(minSocketBuffer, 100000)},
		{time.Millisecond, 500000},      // a LAN: twice 2 Gbit/s x 1 ms
		{8 * time.Millisecond, 4000000}, // just under the cap
		{9 * time.Millisecond, 0},       // autotuning from here on
		{80 * time.Millisecond, 0},
	} {
		if got := bufferSize(tc.rtt); got != tc.want {
			t.Errorf("bufferSize(%v) = %d, want %d", tc.rtt, got, tc.want)
		}
	}
}

// Dialed connections announce a segment size of at most maxSegment
// (loopback would use 64 KiB segments), which then holds both ways.
func TestDialCapsSegmentSize(t *testing.T) {
	if maxSegment == 0 {
		t.Skip("no segment cap")
	}
	for _, keep := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "keep"}[keep], func(t *testing.T) {
			mss := make(chan int, 1)
			u := serve(t, func(c *Conn) {
				tcp, _ := c.tcpConn()
				n, err := tcpMSS(tcp)
				if err != nil {
					t.Error(err)
				}
				mss <- n
				c.SetLiveness(5 * time.Second)
				c.Read(make([]byte, 1))
			})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, _, err := Dial(ctx, u, DialOptions{Proxy: noProxy, KeepSocketBuffers: keep})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(CloseNormal, "")
			tcp, _ := c.tcpConn()
			client, err := tcpMSS(tcp)
			if err != nil {
				t.Fatal(err)
			}
			var server int
			select {
			case server = <-mss:
			case <-ctx.Done():
				t.Fatal("no server connection")
			}
			if capped := client <= maxSegment && server <= maxSegment; capped == keep {
				t.Fatalf("segment sizes client %d, server %d; want capped at %d: %v", client, server, maxSegment, !keep)
			}
		})
	}
}

// Accept sizes the buffers for a client that did not cap its segments
// (64 KiB on loopback) at two segments at least: smaller buffers stall.
func TestAcceptUncappedPeer(t *testing.T) {
	got := make(chan [2]int, 1)
	u := serve(t, func(c *Conn) {
		tcp, _ := c.tcpConn()
		mss, err := tcpMSS(tcp)
		if err != nil {
			t.Error(err)
		}
		got <- [2]int{mss, readQueueOpts(t, c).rcvbuf}
		c.SetLiveness(5 * time.Second)
		c.Read(make([]byte, 1))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := Dial(ctx, u, DialOptions{Proxy: noProxy, KeepSocketBuffers: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(CloseNormal, "")
	select {
	case g := <-got:
		mss, rcvbuf := g[0], g[1]
		if rcvbuf < 2*2*mss { // the kernel doubles what was set
			t.Fatalf("server SO_RCVBUF %d with %d-byte segments", rcvbuf, mss)
		}
		t.Logf("segment %d, SO_RCVBUF %d", mss, rcvbuf)
	case <-ctx.Done():
		t.Fatal("no server connection")
	}
}

// Through an HTTP CONNECT proxy the round trip the kernel measures is the
// proxy's: the buffers keep autotuning, the unsent-data bound applies.
func TestShortQueuesThroughProxy(t *testing.T) {
	u := serve(t, func(c *Conn) {
		c.SetLiveness(5 * time.Second)
		c.Read(make([]byte, 1))
		c.Close(CloseNormal, "")
	})
	proxyURL, _ := testConnectProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := Dial(ctx, u, DialOptions{Proxy: func(*url.URL) (*url.URL, error) { return proxyURL, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(CloseNormal, "")
	q := readQueueOpts(t, c)
	if q.lowat != notsentLowat || q.rcvbuf == 2*minSocketBuffer || q.sndbuf == 2*minSocketBuffer {
		t.Fatalf("through a proxy: SO_SNDBUF %d, SO_RCVBUF %d, TCP_NOTSENT_LOWAT %d; want autotuned buffers and %d", q.sndbuf, q.rcvbuf, q.lowat, notsentLowat)
	}
}
