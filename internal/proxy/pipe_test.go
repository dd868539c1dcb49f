package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t testing.TB) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// copier is a tunnel stand-in with io.ReaderFrom and io.WriterTo, as
// *tunnel.Conn has: join then uses them instead of its own buffers.
type copier struct{ net.Conn }

func (c copier) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

func (c copier) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{c.Conn})
}

// joinPaths are join's two copy paths: its own pooled buffers (a plain
// net.Conn tunnel) and the tunnel's ReadFrom/WriteTo (copier).
var joinPaths = []struct {
	name string
	wrap func(net.Conn) net.Conn
}{
	{"buffers", func(c net.Conn) net.Conn { return c }},
	{"copier", func(c net.Conn) net.Conn { return copier{c} }},
}

// startJoin joins a local TCP connection with a tunnel stand-in (net.Pipe,
// wrapped by wrap) and returns the far ends: the local client and the
// tunnel's peer.
func startJoin(t testing.TB, wrap func(net.Conn) net.Conn) (client, peer net.Conn, res <-chan joinResult) {
	t.Helper()
	client, local := tcpPair(t)
	tun, peer := net.Pipe()
	t.Cleanup(func() { tun.Close(); peer.Close() })
	ch := make(chan joinResult, 1)
	go func() { ch <- join(local, wrap(tun), newBufPool(defaultBufferSize)) }()
	client.SetDeadline(time.Now().Add(testTimeout))
	peer.SetDeadline(time.Now().Add(testTimeout))
	return client, peer, ch
}

func waitJoin(t testing.TB, res <-chan joinResult) joinResult {
	t.Helper()
	select {
	case r := <-res:
		return r
	case <-time.After(testTimeout):
		t.Fatal("join did not end")
		return joinResult{}
	}
}

// TestJoin checks the half-close rules on both copy paths.
func TestJoin(t *testing.T) {
	type startFunc func(testing.TB) (client, peer net.Conn, res <-chan joinResult)
	cases := []struct {
		name string
		run  func(t *testing.T, start startFunc)
	}{
		{"local EOF closes the tunnel", func(t *testing.T, start startFunc) {
			client, peer, res := start(t)
			go func() {
				client.Write([]byte("request"))
				client.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(peer)
			if err != nil || string(got) != "request" {
				t.Fatalf("tunnel peer read %q, %v", got, err)
			}
			r := waitJoin(t, res)
			if !r.localEnded || r.err != nil || r.sent != 7 {
				t.Fatalf("result %+v", r)
			}
			if _, err := client.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
				t.Fatalf("client read after the end: %v, want EOF", err)
			}
		}},
		{"tunnel EOF flushes and sends FIN", func(t *testing.T, start startFunc) {
			client, peer, res := start(t)
			payload := bytes.Repeat([]byte("reply "), 100000)
			go func() {
				peer.Write(payload)
				peer.Close()
			}()
			got, err := io.ReadAll(client) // FIN after all the data
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("client read %d bytes, %v; want %d", len(got), err, len(payload))
			}
			client.Close()
			r := waitJoin(t, res)
			if r.localEnded || r.received != int64(len(payload)) {
				t.Fatalf("result %+v", r)
			}
		}},
		{"linger bounded", func(t *testing.T, start startFunc) {
			_, peer, res := start(t)
			peer.Close()
			// The client neither reads nor closes: the pair still ends,
			// after the linger time.
			t0 := time.Now()
			waitJoin(t, res)
			if d := time.Since(t0); d > linger+time.Second {
				t.Fatalf("ended after %v", d)
			}
		}},
		{"local write failure closes both", func(t *testing.T, start startFunc) {
			client, peer, res := start(t)
			client.(*net.TCPConn).SetLinger(0)
			client.Close() // RST
			go peer.Write(bytes.Repeat([]byte("x"), 1<<20))
			r := waitJoin(t, res)
			if !r.localEnded {
				t.Fatalf("result %+v", r)
			}
			if _, err := peer.Write([]byte("more")); err == nil {
				t.Fatal("tunnel side still open")
			}
		}},
		{"tunnel gone while the local side sends", func(t *testing.T, start startFunc) {
			client, peer, res := start(t)
			peer.Close()
			go func() {
				for {
					if _, err := client.Write(make([]byte, 4096)); err != nil {
						return
					}
				}
			}()
			// The local side is drained (no reset) and closed after the
			// linger.
			r := waitJoin(t, res)
			if r.localEnded {
				t.Fatalf("result %+v", r)
			}
		}},
	}
	for _, path := range joinPaths {
		start := func(t testing.TB) (net.Conn, net.Conn, <-chan joinResult) { return startJoin(t, path.wrap) }
		for _, c := range cases {
			t.Run(path.name+"/"+c.name, func(t *testing.T) {
				t.Parallel() // most of the time is the linger
				c.run(t, start)
			})
		}
	}
}

// TestJoinAllocs: copying allocates nothing per chunk (pooled buffers).
func TestJoinAllocs(t *testing.T) {
	run := func(chunks int) float64 {
		return testing.AllocsPerRun(3, func() {
			client, peer, res := startJoin(t, joinPaths[0].wrap)
			buf := make([]byte, 16<<10)
			done := make(chan struct{})
			go func() {
				defer close(done)
				b := make([]byte, 16<<10)
				for n := 0; n < chunks*len(buf); {
					m, err := peer.Read(b)
					if err != nil {
						return
					}
					n += m
				}
			}()
			for range chunks {
				client.Write(buf)
			}
			<-done
			client.Close()
			peer.Close()
			<-res
		})
	}
	few, many := run(4), run(400)
	t.Logf("allocations per join: %.0f for 4 chunks, %.0f for 400", few, many)
	if many-few > 100 {
		t.Fatalf("allocations grow with the data: %.0f for 4 chunks, %.0f for 400", few, many)
	}
}
