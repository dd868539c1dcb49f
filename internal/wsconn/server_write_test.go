package wsconn

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// serverVariant is a way tunneld's connections reach Accept: plain TCP,
// plain TCP behind a wrapper with a NetConn method (tunneld's connection
// limiter), and TLS over such a wrapper.
type serverVariant struct {
	name      string
	tls, wrap bool
}

var serverVariants = []serverVariant{
	{"ws", false, false},
	{"ws-wrapped", false, true},
	{"wss-wrapped", true, true},
}

// serveVariant starts a server of the variant that upgrades with Accept
// and hands the Conn to fn; it returns the URL and the client TLS config.
func serveVariant(t testing.TB, v serverVariant, fn func(*Conn)) (string, *tls.Config) {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := Accept(w, r, AcceptOptions{})
		if err != nil {
			return
		}
		fn(c)
	}))
	if v.wrap {
		srv.Listener = wrappingListener{srv.Listener}
	}
	var cfg *tls.Config
	if v.tls {
		srv.StartTLS()
		cfg = &tls.Config{InsecureSkipVerify: true}
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http"), cfg
}

// Server messages are framed by wsconn (one frame, one writev or one TLS
// write): a standard client reads every length class intact, with pings
// answered meanwhile, and the plain paths write to the TCP socket under
// a wrapper.
func TestServerMessagesFramed(t *testing.T) {
	sizes := []int{0, 1, 2, 125, 126, 127, 16383, 16384, 16385, 32768, 32770, 65535, 65536, 65537, 100000, MaxMessageSize}
	for _, v := range serverVariants {
		t.Run(v.name, func(t *testing.T) {
			var want [][]byte
			for round := range 3 {
				for _, n := range sizes {
					b := make([]byte, n)
					for i := range b {
						b[i] = byte(i*13 + n + round)
					}
					want = append(want, b)
				}
			}
			done := make(chan error, 1)
			u, cfg := serveVariant(t, v, func(c *Conn) {
				if v.tls == c.writev {
					done <- fmt.Errorf("TLS %v, but writev to the TCP socket %v", v.tls, c.writev)
					c.Close(CloseNormal, "")
					return
				}
				// Pings from the client are answered by the reader, which
				// ends with the client's close frame: closing earlier, with
				// pings unread, would reset the connection.
				c.SetLiveness(10 * time.Second)
				readDone := make(chan struct{})
				go func() { io.Copy(io.Discard, c); close(readDone) }()
				defer func() { <-readDone; c.Close(CloseNormal, "") }()
				for _, b := range want {
					orig := bytes.Clone(b)
					if err := c.WriteMessage(context.Background(), b); err != nil {
						done <- err
						return
					}
					if !bytes.Equal(b, orig) {
						done <- fmt.Errorf("WriteMessage changed its argument (%d bytes)", len(b))
						return
					}
				}
				done <- nil
			})
			d := websocket.Dialer{TLSClientConfig: cfg, HandshakeTimeout: 5 * time.Second}
			ws, _, err := d.Dial(u, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer ws.Close()
			ws.SetReadLimit(MaxMessageSize)
			ws.SetReadDeadline(time.Now().Add(10 * time.Second))
			var wg sync.WaitGroup
			stop := make(chan struct{})
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					case <-time.After(200 * time.Microsecond):
					}
					if ws.WriteControl(websocket.PingMessage, []byte("p"), time.Now().Add(time.Second)) != nil {
						return
					}
				}
			})
			for i, w := range want {
				typ, b, err := ws.ReadMessage()
				if err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
				if typ != websocket.BinaryMessage || !bytes.Equal(b, w) {
					t.Fatalf("message %d: type %d, %d bytes, want binary %d bytes", i, typ, len(b), len(w))
				}
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("server did not finish")
			}
			close(stop)
			wg.Wait()
			ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(CloseNormal, ""), time.Now().Add(time.Second))
			if _, _, err := ws.ReadMessage(); !websocket.IsCloseError(err, CloseNormal) {
				t.Fatalf("after the messages: %v, want the close reply", err)
			}
		})
	}
}

// Over TLS a server message of n bytes is ceil((n+header)/16384) records
// (gorilla's server write made a record of its 4 KiB write buffer, then
// the rest: one more for this size). The client counts TLS records on the
// raw connection.
func TestServerMessageTLSRecords(t *testing.T) {
	const msgs, size = 20, 4*16384 - 1000
	v := serverVariant{"wss", true, false}
	u, cfg := serveVariant(t, v, func(c *Conn) {
		msg := make([]byte, size)
		for range msgs {
			if c.WriteMessage(context.Background(), msg) != nil {
				break
			}
		}
		c.Close(CloseNormal, "")
	})
	var raw *countingConn
	d := websocket.Dialer{
		TLSClientConfig:  cfg,
		HandshakeTimeout: 5 * time.Second,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			raw = &countingConn{Conn: c}
			return raw, err
		},
	}
	ws, _, err := d.Dial(u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.SetReadLimit(MaxMessageSize)
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	raw.mu.Lock()
	raw.records = 0 // handshake records aside
	raw.mu.Unlock()
	for i := range msgs {
		if _, _, err := ws.ReadMessage(); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	raw.mu.Lock()
	got := raw.records
	raw.mu.Unlock()
	// crypto/tls sends small records first (dynamic record sizing, up to
	// 128 KiB sent), so allow the first message a few more.
	perMsg := (size + 4 + 16383) / 16384
	if maxRecords := msgs*perMsg + 10; got > maxRecords {
		t.Errorf("%d TLS records for %d messages of %d bytes; want at most %d (%d per message)", got, msgs, size, maxRecords, perMsg)
	}
	t.Logf("%d TLS records for %d messages of %d bytes", got, msgs, size)
}

// countingConn counts the TLS records read through it (it parses the
// record headers of the byte stream).
type countingConn struct {
	net.Conn
	mu      sync.Mutex
	records int
	skip    int // bytes left in the current record
	hdr     []byte
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	b := p[:n]
	for len(b) > 0 {
		if c.skip > 0 {
			k := min(c.skip, len(b))
			c.skip -= k
			b = b[k:]
			continue
		}
		need := 5 - len(c.hdr)
		k := min(need, len(b))
		c.hdr = append(c.hdr, b[:k]...)
		b = b[k:]
		if len(c.hdr) == 5 {
			c.records++
			c.skip = int(c.hdr[3])<<8 | int(c.hdr[4])
			c.hdr = c.hdr[:0]
		}
	}
	return n, err
}

// drainedServer returns the server end of a connection of variant v whose
// client discards everything it receives; done closes both ends and waits
// for the client's reader.
func drainedServer(tb testing.TB, v serverVariant) (c *Conn, done func()) {
	tb.Helper()
	conns := make(chan *Conn, 1)
	release := make(chan struct{})
	u, cfg := serveVariant(tb, v, func(c *Conn) {
		conns <- c
		<-release
	})
	d := websocket.Dialer{TLSClientConfig: cfg, HandshakeTimeout: 5 * time.Second}
	ws, _, err := d.Dial(u, nil)
	if err != nil {
		tb.Fatal(err)
	}
	drained := make(chan struct{})
	go func() { io.Copy(io.Discard, ws.NetConn()); close(drained) }()
	select {
	case c = <-conns:
	case <-time.After(5 * time.Second):
		ws.Close()
		close(release)
		tb.Fatal("the server did not accept within 5 s")
	}
	return c, func() {
		c.NetConn().Close()
		ws.Close()
		<-drained
		close(release)
	}
}

// BenchmarkServerWriteMessage: 131076-byte server messages to a client
// that drops the raw bytes, framed by wsconn.
func BenchmarkServerWriteMessage(b *testing.B) {
	for _, v := range serverVariants {
		b.Run(v.name, func(b *testing.B) {
			c, done := drainedServer(b, v)
			benchWrites(b, c)
			b.StopTimer()
			done()
		})
	}
}

// Server writes do not allocate.
func TestServerWriteAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop entries")
	}
	for _, v := range serverVariants {
		t.Run(v.name, func(t *testing.T) {
			c, done := drainedServer(t, v)
			defer done()
			msg := make([]byte, 1000)
			c.WriteMessage(context.Background(), msg) // warm the pools
			if a := testing.AllocsPerRun(100, func() {
				if err := c.WriteMessage(context.Background(), msg); err != nil {
					t.Fatal(err)
				}
			}); a > 0 {
				t.Errorf("%v allocations per server WriteMessage", a)
			}
		})
	}
}
