package wsconn

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// A protocol error found by the reader is answered with the closing
// handshake: a peer that keeps sending, and reads only later, still gets
// the close frame (a server closing at once would reset the connection,
// which destroys the frame unread in the peer's kernel), and the server's
// Read returns as soon as the peer answers, not after the 2 s bound.
func TestProtocolErrorClosingHandshake(t *testing.T) {
	tests := []struct {
		name    string
		typ     int
		size    int
		code    int
		wantErr error
	}{
		{"text", websocket.TextMessage, 5, CloseUnsupportedData, ErrTextMessage},
		{"oversized", websocket.BinaryMessage, MaxMessageSize + 1, CloseMessageTooBig, ErrMessageTooBig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			type result struct {
				err     error
				elapsed time.Duration
			}
			got := make(chan result, 1)
			u := serve(t, func(c *Conn) {
				c.SetLiveness(5 * time.Second)
				buf := make([]byte, 64<<10)
				var start time.Time
				for {
					if start.IsZero() {
						start = time.Now()
					}
					if _, err := c.Read(buf); err != nil {
						got <- result{err, time.Since(start)}
						return
					}
				}
			})
			_, ws := dialRaw(t, u)
			ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
			ws.SetReadDeadline(time.Now().Add(5 * time.Second))
			// The offending message, then a flood: the server has unread
			// data when it decides to close.
			var wg sync.WaitGroup
			var werr error
			wg.Go(func() {
				if werr = ws.WriteMessage(tc.typ, make([]byte, tc.size)); werr != nil {
					return
				}
				chunk := make([]byte, 16<<10)
				for range 128 { // 2 MiB: more than the kernel buffers hold
					if werr = ws.WriteMessage(websocket.BinaryMessage, chunk); werr != nil {
						return
					}
				}
			})
			// Read only once the flood is over: by then a server that
			// closed at once has reset the connection.
			wg.Wait()
			if werr != nil {
				t.Errorf("client write: %v: the server did not keep reading after its close frame", werr)
			}
			var err error
			for {
				_, _, err = ws.ReadMessage() // answers the close frame
				if err != nil {
					break
				}
			}
			if !websocket.IsCloseError(err, tc.code) {
				t.Fatalf("client got %v, want close %d", err, tc.code)
			}
			ws.Close()
			select {
			case r := <-got:
				if !errors.Is(r.err, tc.wantErr) {
					t.Fatalf("server read: %v, want %v", r.err, tc.wantErr)
				}
				if r.elapsed >= closeWait {
					t.Errorf("server Read took %v: the answer was not noticed", r.elapsed)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("server Read did not return")
			}
		})
	}
}

// A peer that does not answer the close frame is cut after closeWait.
func TestClosingHandshakeBounded(t *testing.T) {
	got := make(chan time.Duration, 1)
	u := serve(t, func(c *Conn) {
		c.SetLiveness(time.Minute)
		start := time.Now()
		c.Read(make([]byte, 10))
		got <- time.Since(start)
	})
	_, ws := dialRaw(t, u)
	ws.WriteMessage(websocket.TextMessage, []byte("hi"))
	// Pings do not extend the wait.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				if ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(time.Second)) != nil {
					return
				}
			}
		}
	})
	select {
	case d := <-got:
		if d < closeWait-100*time.Millisecond || d > closeWait+time.Second {
			t.Errorf("Read returned after %v, want about %v", d, closeWait)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read did not return")
	}
	close(stop)
	wg.Wait()
}
