package wsconn

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// rawServer starts a plain gorilla server (no wsconn on that side) and
// hands each connection to fn.
func rawServer(t *testing.T, fn func(*websocket.Conn)) string {
	t.Helper()
	up := websocket.Upgrader{ReadBufferSize: 4096, WriteBufferSize: 4096}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		ws.SetReadLimit(MaxMessageSize)
		fn(ws)
	}))
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http")
}

// Client messages are framed by wsconn itself (masked, one write call):
// a standard server reads every length class intact, with pings written
// concurrently from another goroutine.
func TestClientMessagesFramed(t *testing.T) {
	sizes := []int{1, 2, 125, 126, 127, 65535, 65536, 65537, 100000, MaxMessageSize}
	type msg struct {
		typ int
		b   []byte
	}
	got := make(chan msg, len(sizes)*3)
	u := rawServer(t, func(ws *websocket.Conn) {
		ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			typ, b, err := ws.ReadMessage()
			if err != nil {
				close(got)
				return
			}
			got <- msg{typ, b}
		}
	})
	c, _ := dialT(t, u)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if c.Ping(context.Background()) != nil {
				return
			}
			time.Sleep(100 * time.Microsecond)
		}
	})
	var want [][]byte
	for round := range 3 {
		for _, n := range sizes {
			b := make([]byte, n)
			for i := range b {
				b[i] = byte(i*13 + n + round)
			}
			orig := bytes.Clone(b)
			if err := c.WriteMessage(context.Background(), b); err != nil {
				t.Fatalf("write %d bytes: %v", n, err)
			}
			if !bytes.Equal(b, orig) {
				t.Fatalf("WriteMessage changed its argument (%d bytes)", n)
			}
			want = append(want, orig)
		}
	}
	close(stop)
	wg.Wait()
	// The closing handshake: closing at once, with the server's pongs
	// unread, would reset the connection and destroy data the server has
	// not read yet.
	c.SendClose(CloseNormal, "")
	c.SetLiveness(10 * time.Second)
	for {
		if _, err := c.Read(make([]byte, 1024)); err != nil {
			break
		}
	}
	c.Close(CloseNormal, "")
	i := 0
	for m := range got {
		if i >= len(want) {
			t.Fatalf("extra message of %d bytes", len(m.b))
		}
		if m.typ != websocket.BinaryMessage || !bytes.Equal(m.b, want[i]) {
			t.Fatalf("message %d: type %d, %d bytes, want binary %d bytes", i, m.typ, len(m.b), len(want[i]))
		}
		i++
	}
	if i != len(want) {
		t.Fatalf("received %d messages, want %d", i, len(want))
	}
}

// No data message follows a close frame, and the context's deadline
// applies to client messages; so does cancelling it.
func TestClientWriteAfterCloseAndDeadline(t *testing.T) {
	release := make(chan struct{})
	u := rawServer(t, func(ws *websocket.Conn) {
		<-release // never reads before the test ends
	})
	t.Cleanup(func() { close(release) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := Dial(ctx, u, DialOptions{Proxy: noProxy})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(CloseNormal, "")
	if err := c.SetSocketBuffers(16<<10, 16<<10); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer wcancel()
	big := make([]byte, MaxMessageSize)
	start := time.Now()
	for err == nil && time.Since(start) < 5*time.Second {
		err = c.WriteMessage(wctx, big)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("writing to a peer that does not read: %v after %v, want a deadline error", err, time.Since(start))
	}
	if err := c.WriteMessage(context.Background(), []byte("x")); err == nil {
		t.Fatal("write after a cut write succeeded")
	}

	// Cancelling the context cuts a blocked write.
	c3, _, err := Dial(ctx, u, DialOptions{Proxy: noProxy})
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close(CloseNormal, "")
	c3.SetSocketBuffers(16<<10, 16<<10)
	cctx, ccancel := context.WithCancel(ctx)
	time.AfterFunc(200*time.Millisecond, ccancel)
	start = time.Now()
	for err == nil && time.Since(start) < 5*time.Second {
		err = c3.WriteMessage(cctx, big)
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("writing with a cancelled context: %v after %v, want context.Canceled", err, time.Since(start))
	}

	c2, _, err := Dial(ctx, u, DialOptions{Proxy: noProxy})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(CloseNormal, "")
	if err := c2.SendClose(CloseNormal, ""); err != nil {
		t.Fatal(err)
	}
	if err := c2.WriteMessage(context.Background(), []byte("late")); !errors.Is(err, ErrCloseSent) {
		t.Fatalf("write after the close frame: %v", err)
	}
}

// BenchmarkClientWriteMessage: 131076-byte client messages to a server
// that drops the raw bytes (the cost measured is the client's), framed by
// wsconn.
func BenchmarkClientWriteMessage(b *testing.B) {
	u := rawServer(&testing.T{}, func(ws *websocket.Conn) {
		io.Copy(io.Discard, ws.NetConn())
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := Dial(ctx, u, DialOptions{Proxy: noProxy})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close(CloseNormal, "")
	benchWrites(b, c)
}

// A control frame that cannot be written before its deadline (a message
// write holds the connection) gives up without moving the socket's write
// deadline: the message write, which has none, waits for the peer instead
// of failing.
func TestControlWriteDoesNotCutMessageWrite(t *testing.T) {
	release := make(chan struct{})
	got := make(chan int, 1)
	u := rawServer(t, func(ws *websocket.Conn) {
		<-release
		ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		n := 0
		for {
			typ, _, err := ws.ReadMessage()
			if err != nil {
				break
			}
			if typ == websocket.BinaryMessage {
				n++
			}
		}
		got <- n
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := Dial(ctx, u, DialOptions{Proxy: noProxy})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(CloseNormal, "")
	if err := c.SetSocketBuffers(16<<10, 16<<10); err != nil {
		t.Fatal(err)
	}
	const msgs = 20 // far more than the socket buffers hold
	werr := writeBig(c, msgs, nil)
	waitWriteBlocked(t, c)
	pctx, pcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer pcancel()
	if err := c.Ping(pctx); !isTimeout(err) {
		t.Fatalf("ping while a message write blocks: %v, want a timeout", err)
	}
	select {
	case err := <-werr:
		t.Fatalf("message write ended while the peer did not read: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	close(release)
	select {
	case err := <-werr:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("message writes did not finish")
	}
	c.SendClose(CloseNormal, "")
	select {
	case n := <-got:
		if n != msgs {
			t.Fatalf("server read %d messages, want %d", n, msgs)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server did not finish")
	}
}

// A ping that arrives while a message write is blocked (the peer does not
// read) does not stop the reader until the write ends: the pong is sent
// by the writer right after its message. On both sides: the relay's
// server connections too, where a blocked forward to a slow peer froze
// the other direction for the 5 s pong deadline (docs/faults.md).
func TestPongDoesNotWaitForBlockedWrite(t *testing.T) {
	for _, side := range []string{"client", "server"} {
		t.Run(side, func(t *testing.T) {
			done := make(chan struct{})
			ours := make(chan *Conn, 1)
			theirs := make(chan *websocket.Conn, 1)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if side == "client" {
				u := rawServer(t, func(ws *websocket.Conn) { theirs <- ws; <-done })
				t.Cleanup(func() { close(done) })
				c, _, err := Dial(ctx, u, DialOptions{Proxy: noProxy})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close(CloseNormal, "") })
				ours <- c
			} else {
				u := serve(t, func(c *Conn) { ours <- c; <-done; c.Close(CloseNormal, "") })
				t.Cleanup(func() { close(done) })
				ws, _, err := websocket.DefaultDialer.DialContext(ctx, u, nil)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ws.Close() })
				theirs <- ws
			}
			var c *Conn
			var ws *websocket.Conn
			for c == nil || ws == nil {
				select {
				case c = <-ours:
				case ws = <-theirs:
				case <-ctx.Done():
					t.Fatal("no connection")
				}
			}
			if err := c.SetSocketBuffers(16<<10, 16<<10); err != nil {
				t.Fatal(err)
			}
			if err := ws.NetConn().(*net.TCPConn).SetReadBuffer(16 << 10); err != nil {
				t.Fatal(err)
			}
			const msgs = 20 // far more than the socket buffers hold
			werr := writeBig(c, msgs, []byte("end"))
			waitWriteBlocked(t, c)
			if err := ws.WriteControl(websocket.PingMessage, []byte("p1"), time.Now().Add(5*time.Second)); err != nil {
				t.Fatal(err)
			}
			if err := ws.WriteMessage(websocket.BinaryMessage, []byte("after")); err != nil {
				t.Fatal(err)
			}
			c.SetLiveness(10 * time.Second)
			start := time.Now()
			buf := make([]byte, 5)
			n, err := io.ReadFull(c, buf) // a byte stream: reads may split it
			if err != nil || string(buf[:n]) != "after" {
				t.Fatalf("read %q, %v", buf[:n], err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("the message after the ping came %v later: the reader waited for the blocked write", d)
			}
			// Now the peer reads: every message, and the pong among them.
			pongs := make(chan string, 8)
			ws.SetPongHandler(func(d string) error { pongs <- d; return nil })
			ws.SetReadDeadline(time.Now().Add(10 * time.Second))
			for i := 0; ; i++ {
				_, b, err := ws.ReadMessage()
				if err != nil {
					t.Fatalf("peer read, message %d: %v", i, err)
				}
				if string(b) == "end" {
					if i != msgs {
						t.Fatalf("%d messages before the end, want %d", i, msgs)
					}
					break
				}
			}
			if err := <-werr; err != nil {
				t.Fatal(err)
			}
			for {
				select {
				case p := <-pongs:
					if p == "p1" {
						return
					}
				default:
					t.Fatal("no pong for the ping")
				}
			}
		})
	}
}

// waitWriteBlocked waits until a message write has held c's write lock
// for 200 ms (the peer does not read), for at most 10 s.
func waitWriteBlocked(t *testing.T, c *Conn) {
	t.Helper()
	held := 0
	for start := time.Now(); held < 10; time.Sleep(20 * time.Millisecond) {
		if len(c.wlock) == 1 {
			held++
		} else {
			held = 0
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("message writes never blocked")
		}
	}
}

// benchWrites writes messages of MaxMessageSize through c.
func benchWrites(b *testing.B, c *Conn) {
	msg := make([]byte, MaxMessageSize)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if err := c.WriteMessage(context.Background(), msg); err != nil {
			b.Fatal(err)
		}
	}
}

// writeBig writes n messages of MaxMessageSize on c and then last, if not
// nil, from a goroutine of its own; the channel gets the first error, or
// nil once all are written.
func writeBig(c *Conn, n int, last []byte) <-chan error {
	werr := make(chan error, 1)
	go func() {
		big := make([]byte, MaxMessageSize)
		for range n {
			if err := c.WriteMessage(context.Background(), big); err != nil {
				werr <- err
				return
			}
		}
		if last != nil {
			werr <- c.WriteMessage(context.Background(), last)
			return
		}
		werr <- nil
	}()
	return werr
}
