//go:build linux

package wsconn

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sockopt reads an integer socket option of the TCP connection under c.
func sockopt(t *testing.T, c *Conn, opt int) int {
	t.Helper()
	nc := c.NetConn()
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	rc, err := nc.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) { v, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, opt) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return v
}

func TestSetSocketBuffers(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "ws", true: "wss"}[useTLS], func(t *testing.T) {
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				c, err := Accept(w, r, AcceptOptions{})
				if err != nil {
					return
				}
				if err := c.SetSocketBuffers(96<<10, 48<<10); err != nil {
					t.Error(err)
				}
				c.WriteMessage([]byte("x"))
				c.Close()
			})
			var srv *httptest.Server
			var cfg *tls.Config
			if useTLS {
				srv = httptest.NewTLSServer(h)
				cfg = &tls.Config{InsecureSkipVerify: true}
			} else {
				srv = httptest.NewServer(h)
			}
			t.Cleanup(srv.Close)
			u := "ws" + strings.TrimPrefix(srv.URL, "http")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, _, err := Dial(ctx, u, DialOptions{TLS: cfg, Proxy: noProxy})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.SetSocketBuffers(64<<10, 32<<10); err != nil {
				t.Fatal(err)
			}
			// Linux doubles the value for its bookkeeping.
			if snd, rcv := sockopt(t, c, syscall.SO_SNDBUF), sockopt(t, c, syscall.SO_RCVBUF); snd < 64<<10 || snd > 128<<10 || rcv < 32<<10 || rcv > 64<<10 {
				t.Fatalf("SO_SNDBUF %d, SO_RCVBUF %d after asking 64 KiB and 32 KiB", snd, rcv)
			}
			c.SetLiveness(5 * time.Second)
			b := make([]byte, 1)
			if _, err := c.Read(b); err != nil || b[0] != 'x' {
				t.Fatalf("read %q, %v", b, err)
			}
		})
	}
}

// TestWriteBufferSizesDoNotMix: connections with different write buffer
// sizes in one process each get their own size (a 131076-byte message from
// a client configured for it is one frame), and messages arrive intact.
func TestWriteBufferSizesDoNotMix(t *testing.T) {
	const size = MaxMessageSize
	got := make(chan []byte, 1)
	u := serve(t, func(c *Conn) {
		c.SetLiveness(5 * time.Second)
		b := make([]byte, size)
		n := 0
		for n < size {
			k, err := c.Read(b[n:])
			if err != nil {
				break
			}
			n += k
		}
		got <- b[:n]
		c.WriteMessage([]byte("ok"))
		c.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := Dial(ctx, u, DialOptions{Proxy: noProxy, WriteBufferSize: size})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := writePool(size); p == writePool(16<<10) {
		t.Fatal("one pool for two sizes")
	}
	msg := make([]byte, size)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	if err := c.WriteMessage(msg); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if string(b) != string(msg) {
			t.Fatalf("received %d bytes, not the message", len(b))
		}
	case <-ctx.Done():
		t.Fatal("timeout")
	}
}

// On loopback the round trip is tens of microseconds: the buffers get the
// floor size, not the megabytes of autotuning.
func TestLimitSocketBuffersLoopback(t *testing.T) {
	u := serve(t, func(c *Conn) {
		c.SetLiveness(5 * time.Second)
		c.Read(make([]byte, 1)) // until the client closes
	})
	c, _ := dial(t, u)
	size, err := c.LimitSocketBuffers()
	if err != nil {
		t.Fatal(err)
	}
	if size < minSocketBuffer || size > maxSocketBuffer {
		t.Fatalf("size %d on loopback", size)
	}
	if rcv := sockopt(t, c, syscall.SO_RCVBUF); rcv < size || rcv > 2*size {
		t.Fatalf("SO_RCVBUF %d after setting %d", rcv, size)
	}
}

// Dialed connections announce a segment size of at most 16 KiB (loopback
// would use 64 KiB segments), in both directions.
func TestDialCapsSegmentSize(t *testing.T) {
	mss := make(chan int, 1)
	u := serve(t, func(c *Conn) {
		mss <- sockoptTCP(t, c, syscall.TCP_MAXSEG)
		c.SetLiveness(5 * time.Second)
		c.Read(make([]byte, 1))
	})
	c, _ := dial(t, u)
	if got := sockoptTCP(t, c, syscall.TCP_MAXSEG); got > maxSegment {
		t.Fatalf("client segment size %d, want at most %d", got, maxSegment)
	}
	select {
	case got := <-mss:
		if got > maxSegment {
			t.Fatalf("server segment size %d, want at most %d", got, maxSegment)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no server connection")
	}
}

func sockoptTCP(t *testing.T, c *Conn, opt int) int {
	t.Helper()
	tcp, err := c.tcpConn()
	if err != nil {
		t.Error(err)
		return 0
	}
	rc, err := tcp.SyscallConn()
	if err != nil {
		t.Error(err)
		return 0
	}
	var v int
	var serr error
	rc.Control(func(fd uintptr) { v, serr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, opt) })
	if serr != nil {
		t.Error(serr)
	}
	return v
}
