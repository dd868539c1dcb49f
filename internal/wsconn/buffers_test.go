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
				c.WriteMessage(context.Background(), []byte("x"))
				c.Close(CloseNormal, "")
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
			defer c.Close(CloseNormal, "")
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

// TestLargestMessageIntact: a 131076-byte message from a client arrives
// intact.
func TestLargestMessageIntact(t *testing.T) {
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
		c.WriteMessage(context.Background(), []byte("ok"))
		c.Close(CloseNormal, "")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := Dial(ctx, u, DialOptions{Proxy: noProxy})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(CloseNormal, "")
	msg := make([]byte, size)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	if err := c.WriteMessage(context.Background(), msg); err != nil {
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
