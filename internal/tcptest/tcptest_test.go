package tcptest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStream(t *testing.T) {
	read := func(seed byte) []byte {
		b := make([]byte, 1000)
		io.ReadFull(Stream(seed), b)
		return b
	}
	if !bytes.Equal(read(1), read(1)) {
		t.Error("Stream(1) differs between calls")
	}
	if bytes.Equal(read(1), read(2)) {
		t.Error("Stream(1) and Stream(2) are the same")
	}
	h := StreamSum(1, 1000)
	if got := StreamSum(1, 1000); !bytes.Equal(got, h) || bytes.Equal(StreamSum(1, 999), h) {
		t.Error("StreamSum is not the hash of the stream's prefix")
	}
}

func TestVerifier(t *testing.T) {
	want := make([]byte, 100<<10)
	io.ReadFull(Stream(5), want)
	tests := []struct {
		name string
		flip int // byte to change; -1 = none
	}{
		{"same", -1},
		{"first byte", 0},
		{"inside the second chunk", 40 << 10},
		{"last byte", len(want) - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := bytes.Clone(want)
			if tt.flip >= 0 {
				data[tt.flip] ^= 1
			}
			v := newVerifier(5)
			for p := data; len(p) > 0; { // odd-sized writes across chunk edges
				n := min(len(p), 7777)
				v.Write(p[:n])
				p = p[n:]
			}
			err := v.err("x")
			if tt.flip < 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "from byte "+strconv.Itoa(tt.flip)+" ") {
				t.Fatalf("err = %v, want the offset %d", err, tt.flip)
			}
		})
	}
}

func TestEcho(t *testing.T) {
	s := EchoServer(t)
	for _, size := range []int64{0, 1, 1 << 20} {
		c := Dial(t, s.Addr())
		if err := Echoed(t.Context(), c, size, 3); err != nil {
			t.Fatalf("Echoed %d bytes: %v", size, err)
		}
		// The same connection goes on, and ends with the echo's EOF.
		if err := EchoedToEOF(t.Context(), c, size, 4); err != nil {
			t.Fatalf("EchoedToEOF %d bytes: %v", size, err)
		}
	}
	if n := s.Accepted(); n != 3 {
		t.Errorf("Accepted() = %d, want 3", n)
	}
}

func TestServeUnix(t *testing.T) {
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "echo.sock"))
	if err != nil {
		t.Fatal(err)
	}
	s := Serve(t, ln, Echo)
	c, err := net.DialTimeout("unix", s.Addr(), Timeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := Echoed(t.Context(), c, 100<<10, 1); err != nil {
		t.Fatal(err)
	}
}

func TestEchoOverPipe(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	done := make(chan struct{})
	go func() { defer close(done); Echo(b); b.Close() }()
	if err := Echoed(t.Context(), a, 64<<10, 1); err != nil {
		t.Fatal(err)
	}
	a.Close()
	select {
	case <-done:
	case <-time.After(Timeout):
		t.Fatal("Echo did not return at EOF")
	}
}

// corrupt echoes, changing byte at of the stream.
func corrupt(at int64) func(net.Conn) {
	return func(c net.Conn) {
		var n int64
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			for i := range k {
				if n+int64(i) == at {
					buf[i] ^= 0x80
				}
			}
			n += int64(k)
			if _, werr := c.Write(buf[:k]); werr != nil || err != nil {
				c.(*net.TCPConn).CloseWrite()
				return
			}
		}
	}
}

func TestChecksFail(t *testing.T) {
	const size = 200 << 10
	tests := []struct {
		name    string
		handle  func(net.Conn)
		check   func(ctx context.Context, c *net.TCPConn) error
		want    string
		wantCtx bool
	}{
		{"echo corrupted", corrupt(12345), func(ctx context.Context, c *net.TCPConn) error { return Echoed(ctx, c, size, 1) },
			"the echo differs from what was sent from byte 12345 on", false},
		{"echo to EOF corrupted", corrupt(0), func(ctx context.Context, c *net.TCPConn) error { return EchoedToEOF(ctx, c, size, 1) },
			"from byte 0 on", false},
		{"echo too short", func(c net.Conn) { io.CopyN(c, c, 10) }, func(ctx context.Context, c *net.TCPConn) error { return EchoedToEOF(ctx, c, size, 1) },
			"tcptest: ", false},
		{"bulk: server sends another stream", BulkHandler(size, 9), func(ctx context.Context, c *net.TCPConn) error { return Bulk(ctx, c, size, 1, 2) },
			"the server's data differs from what was sent from byte 0 on", false},
		{"bulk: server hashes something else", func(c net.Conn) {
			done := make(chan struct{})
			go func() { defer close(done); io.CopyN(c, Stream(2), size) }()
			io.CopyN(io.Discard, c, size)
			<-done
			c.Write(make([]byte, 32))
			io.Copy(io.Discard, c)
		}, func(ctx context.Context, c *net.TCPConn) error { return Bulk(ctx, c, size, 1, 2) },
			"the server received different data", false},
		{"no echo: ctx ends", func(c net.Conn) { io.Copy(io.Discard, c) }, func(ctx context.Context, c *net.TCPConn) error {
			ctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer cancel()
			return Echoed(ctx, c, 10, 1)
		}, "reading the echo after 0 of 10 bytes", true},
		{"round trip corrupted", corrupt(2), func(ctx context.Context, c *net.TCPConn) error { return RoundTrip(ctx, c, []byte("hello")) },
			`echo "he\xeclo", want "hello"`, false},
		{"round trip: no echo, ctx ends", func(c net.Conn) { io.Copy(io.Discard, c) }, func(ctx context.Context, c *net.TCPConn) error {
			ctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer cancel()
			return RoundTrip(ctx, c, []byte("hello"))
		}, `reading the echo of "hello"`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewServer(t, tt.handle)
			err := tt.check(t.Context(), Dial(t, s.Addr()))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
			if tt.wantCtx != errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("err = %v: wraps DeadlineExceeded %v, want %v", err, !tt.wantCtx, tt.wantCtx)
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	s := EchoServer(t)
	c := Dial(t, s.Addr())
	for _, msg := range []string{"one", "two", strings.Repeat("x", 100<<10)} {
		if err := RoundTrip(t.Context(), c, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	if err := DialRoundTrip(t.Context(), s.Addr(), []byte("again")); err != nil {
		t.Fatal(err)
	}
	if s.Accepted() != 2 {
		t.Fatalf("Accepted = %d, want 2", s.Accepted())
	}
	// Nothing listens on a closed server's port.
	addr := s.Addr()
	s.Close()
	if err := DialRoundTrip(t.Context(), addr, []byte("x")); err == nil {
		t.Fatal("DialRoundTrip to a closed server succeeded")
	}
}

func TestBulk(t *testing.T) {
	const size = 1 << 20
	s := NewServer(t, BulkHandler(size, 2))
	for range 3 {
		c := Dial(t, s.Addr())
		if err := Bulk(t.Context(), c, size, 1, 2); err != nil {
			t.Fatal(err)
		}
	}
}

func TestServerCloseEndsHandlers(t *testing.T) {
	blocked := make(chan struct{}, 4)
	var s *Server
	t.Run("server", func(t *testing.T) {
		s = NewServer(t, func(c net.Conn) {
			blocked <- struct{}{}
			io.Copy(io.Discard, c) // returns when Close closes c
		})
		for range 3 {
			Dial(t, s.Addr())
			select {
			case <-blocked:
			case <-time.After(Timeout):
				t.Fatal("handler not started")
			}
		}
		// The subtest's cleanups close the server: goleak (TestMain) and
		// the check below see that every handler returned.
	})
	if _, err := net.DialTimeout("tcp", s.Addr(), Timeout); err == nil {
		t.Error("the server still accepts after Close")
	}
	s.Close() // idempotent
}

func BenchmarkEchoed(b *testing.B) {
	s := EchoServer(b)
	c := Dial(b, s.Addr())
	c.SetDeadline(time.Time{})
	const size = 1 << 20
	b.SetBytes(size)
	b.ReportAllocs()
	for b.Loop() {
		if err := Echoed(context.Background(), c, size, 1); err != nil {
			b.Fatal(err)
		}
	}
}
