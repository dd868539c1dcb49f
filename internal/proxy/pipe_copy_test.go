package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// copier is a tunnel stand-in with io.ReaderFrom and io.WriterTo, as
// *tunnel.Conn has: join then uses them instead of its own buffers.
type copier struct{ net.Conn }

func (c copier) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

func (c copier) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{c.Conn})
}

func startCopierJoin(t testing.TB) (client, peer net.Conn, res <-chan joinResult) {
	t.Helper()
	client, local := tcpPair(t)
	tun, peer := net.Pipe()
	t.Cleanup(func() { tun.Close(); peer.Close() })
	ch := make(chan joinResult, 1)
	go func() { ch <- join(local, copier{tun}, newBufPool(defaultBufferSize)) }()
	client.SetDeadline(time.Now().Add(testTimeout))
	peer.SetDeadline(time.Now().Add(testTimeout))
	return client, peer, ch
}

// The half-close rules hold on the ReadFrom/WriteTo path too.
func TestJoinCopierPath(t *testing.T) {
	t.Run("local EOF closes the tunnel", func(t *testing.T) {
		client, peer, res := startCopierJoin(t)
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
	})
	t.Run("tunnel EOF flushes and sends FIN", func(t *testing.T) {
		client, peer, res := startCopierJoin(t)
		payload := bytes.Repeat([]byte("reply "), 100000)
		go func() {
			peer.Write(payload)
			peer.Close()
		}()
		got, err := io.ReadAll(client)
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("client read %d bytes, %v; want %d", len(got), err, len(payload))
		}
		client.Close()
		r := waitJoin(t, res)
		if r.localEnded || r.received != int64(len(payload)) {
			t.Fatalf("result %+v", r)
		}
	})
	t.Run("local write failure closes both", func(t *testing.T) {
		client, peer, res := startCopierJoin(t)
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
	})
	t.Run("tunnel gone while the local side sends", func(t *testing.T) {
		client, peer, res := startCopierJoin(t)
		peer.Close()
		go func() {
			for {
				if _, err := client.Write(make([]byte, 4096)); err != nil {
					return
				}
			}
		}()
		// The local side is drained (no reset) and closed after the linger.
		r := waitJoin(t, res)
		if r.localEnded {
			t.Fatalf("result %+v", r)
		}
	})
}
