package relay

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/sectun/sectun/wire"
)

// A throughput path moves DATA frames of one size from a writer to a
// reader, both in this process: through the relay (two raw WebSocket
// peers) or through a plain TCP relay (io.Copy both ways in a middle hop).
type path interface {
	// transfer moves n frames and returns when the reader has them all.
	transfer(n int) time.Duration
	close()
}

// frameMessage is one WebSocket message full of DATA frames with payloads
// of size bytes, and the number of frames in it.
func frameMessage(tb testing.TB, size int) ([]byte, int) {
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i)
	}
	one := frameBytes(tb, data(1, "", payload))
	k := wire.MaxWebSocketMessageSize / len(one)
	var msg []byte
	for range k {
		msg = append(msg, one...)
	}
	return msg, k
}

type relayPath struct {
	tr       *testRelay
	src, dst *client
	msg      []byte
	perMsg   int
	frame    int
}

func newRelayPath(b *testing.B, size int) *relayPath {
	tr := newTestRelay(b, Config{PingInterval: -1, IdleTimeout: -1})
	src, dst := tr.dialPair(b, fmt.Sprintf("bench-%d", size))
	msg, k := frameMessage(b, size)
	return &relayPath{tr: tr, src: src, dst: dst, msg: msg, perMsg: k, frame: len(msg) / k}
}

func (p *relayPath) transfer(n int) time.Duration {
	begin := time.Now()
	done := make(chan error, 1)
	go func() {
		for left := n; left > 0; left -= p.perMsg {
			m := p.msg
			if left < p.perMsg {
				m = m[:left*p.frame]
			}
			if err := p.src.conn.WriteMessage(context.Background(), m); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for i := range n {
		if _, err := p.dst.fr.NextFrame(); err != nil {
			panic(fmt.Sprintf("frame %d: %v", i, err))
		}
	}
	if err := <-done; err != nil {
		panic(err)
	}
	return time.Since(begin)
}

func (p *relayPath) close() {}

type tcpPath struct {
	in, out net.Conn // writer's and reader's ends
	lns     []net.Listener
	wg      sync.WaitGroup
	conns   []net.Conn
	msg     []byte
	perMsg  int
	frame   int
	buf     []byte
}

// onlyRW hides a connection's ReadFrom/WriteTo, so io.Copy goes through a
// user-space buffer instead of splice.
type onlyRW struct{ net.Conn }

func (c onlyRW) Read(p []byte) (int, error)  { return c.Conn.Read(p) }
func (c onlyRW) Write(p []byte) (int, error) { return c.Conn.Write(p) }

// newTCPPath builds writer -> middle -> reader over 127.0.0.1, the middle
// copying both ways with io.Copy (splice on Linux), as a minimal TCP relay
// would. With userCopy the middle copies through a 32 KiB user-space buffer
// instead, as any relay that looks at the bytes must.
func newTCPPath(b *testing.B, size int, userCopy bool) *tcpPath {
	p := &tcpPath{}
	p.msg, p.perMsg = frameMessage(b, size)
	p.frame = len(p.msg) / p.perMsg
	p.buf = make([]byte, len(p.msg))
	back, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	p.lns = []net.Listener{back, front}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		c, err := front.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", back.Addr().String())
		if err != nil {
			c.Close()
			return
		}
		cp := func(dst, src net.Conn) {
			if userCopy {
				io.CopyBuffer(onlyRW{dst}, onlyRW{src}, make([]byte, 32<<10))
			} else {
				io.Copy(dst, src)
			}
			dst.(*net.TCPConn).CloseWrite()
		}
		var cw sync.WaitGroup
		cw.Go(func() { cp(up, c) })
		cw.Go(func() { cp(c, up) })
		cw.Wait()
		c.Close()
		up.Close()
	}()
	if p.in, err = net.Dial("tcp", front.Addr().String()); err != nil {
		b.Fatal(err)
	}
	if p.out, err = back.Accept(); err != nil {
		b.Fatal(err)
	}
	return p
}

func (p *tcpPath) transfer(n int) time.Duration {
	begin := time.Now()
	done := make(chan error, 1)
	go func() {
		for left := n; left > 0; left -= p.perMsg {
			m := p.msg
			if left < p.perMsg {
				m = m[:left*p.frame]
			}
			if _, err := p.in.Write(m); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for left := n * p.frame; left > 0; {
		k, err := p.out.Read(p.buf[:min(left, len(p.buf))])
		if err != nil {
			panic(err)
		}
		left -= k
	}
	if err := <-done; err != nil {
		panic(err)
	}
	return time.Since(begin)
}

func (p *tcpPath) close() {
	p.in.Close()
	p.out.Close()
	for _, l := range p.lns {
		l.Close()
	}
	p.wg.Wait()
}

var benchSizes = []struct {
	name string
	size int
}{{"16KiB", 16 << 10}, {"63KiB", wire.MaxPayloadSize}}

// BenchmarkThroughput measures each path alone; one op is one DATA frame.
func BenchmarkThroughput(b *testing.B) {
	for _, sz := range benchSizes {
		for _, kind := range []string{"relay", "tcp", "tcpcopy"} {
			b.Run(sz.name+"/"+kind, func(b *testing.B) {
				var p path
				switch kind {
				case "relay":
					p = newRelayPath(b, sz.size)
				default:
					p = newTCPPath(b, sz.size, kind == "tcpcopy")
				}
				defer p.close()
				p.transfer(64) // warm up buffers and pools
				b.SetBytes(int64(sz.size))
				b.ReportAllocs()
				b.ResetTimer()
				p.transfer(b.N)
			})
		}
	}
}

// BenchmarkRelayVsTCP alternates blocks of frames through the relay, the
// plain TCP relay (splice) and the user-space-copy TCP relay in one run, so
// all see the same machine load, and reports the rates and the relay's
// ratio to each.
func BenchmarkRelayVsTCP(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			rp := newRelayPath(b, sz.size)
			tp, cp := newTCPPath(b, sz.size, false), newTCPPath(b, sz.size, true)
			defer tp.close()
			defer cp.close()
			for _, p := range []path{rp, tp, cp} {
				p.transfer(64)
			}
			const block = 128
			var dr, dt, dc time.Duration
			b.ResetTimer()
			for done := 0; done < b.N; done += block {
				n := min(block, b.N-done)
				dr += rp.transfer(n)
				dt += tp.transfer(n)
				dc += cp.transfer(n)
			}
			mb := float64(b.N) * float64(sz.size) / 1e6
			b.ReportMetric(mb/dr.Seconds(), "relay-MB/s")
			b.ReportMetric(mb/dt.Seconds(), "tcp-MB/s")
			b.ReportMetric(mb/dc.Seconds(), "tcpcopy-MB/s")
			b.ReportMetric(dt.Seconds()/dr.Seconds(), "relay/tcp")
			b.ReportMetric(dc.Seconds()/dr.Seconds(), "relay/tcpcopy")
		})
	}
}
