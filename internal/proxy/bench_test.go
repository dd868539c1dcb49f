package proxy

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/tcptest"
	"github.com/sectun/sectun/tunnel"
)

// BenchmarkTransfer measures one connection's throughput, local socket to
// local socket through both adapters, both sessions and the relay (all in
// this process), for several copy buffer sizes.
func BenchmarkTransfer(b *testing.B) {
	for _, size := range []int{8 << 10, 32 << 10, 128 << 10} {
		b.Run(fmt.Sprintf("buffer=%dKiB", size>>10), func(b *testing.B) {
			sink := tcptest.NewServer(b, func(c net.Conn) {
				// The protocol has no half-close: the size comes first.
				var hdr [8]byte
				if _, err := io.ReadFull(c, hdr[:]); err != nil {
					return
				}
				n, _ := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint64(hdr[:])))
				fmt.Fprintf(c, "%d", n)
			})
			w := newWorld(b)
			st, dt := w.open("S")
			dst := w.connect(b, tunnel.ModeDestination, dt, nil)
			src := w.connect(b, tunnel.ModeSource, st, nil)
			d, err := NewDestination(dst, DestinationConfig{Services: []Service{{ServiceID: "S", Address: sink.Addr()}}, BufferSize: size})
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			s, err := NewSource(testCtx(b), src, SourceConfig{Services: []Service{{ServiceID: "S", Address: "127.0.0.1:0"}}, BufferSize: size})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			const chunk = 16 << 20
			buf := make([]byte, 64<<10)
			b.SetBytes(chunk)
			b.ReportAllocs()
			for b.Loop() {
				c, err := net.Dial("tcp", s.Addrs()["S"].String())
				if err != nil {
					b.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(testTimeout))
				var hdr [8]byte
				binary.BigEndian.PutUint64(hdr[:], chunk)
				c.Write(hdr[:])
				for sent := 0; sent < chunk; sent += len(buf) {
					if _, err := c.Write(buf); err != nil {
						b.Fatal(err)
					}
				}
				got := make([]byte, len(fmt.Sprint(chunk)))
				_, err = io.ReadFull(c, got)
				c.Close()
				if err != nil || string(got) != fmt.Sprint(chunk) {
					b.Fatalf("sink counted %q (%v), want %d", got, err, chunk)
				}
			}
		})
	}
}
