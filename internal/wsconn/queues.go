package wsconn

import (
	"fmt"
	"net"
	"time"
)

// The short-queue policy that Dial and Accept apply to the TCP connection
// under a WebSocket (Linux; DialOptions.KeepSocketBuffers and
// AcceptOptions.KeepSocketBuffers turn it off). Every stream of a tunnel
// shares that connection, and what sits in its kernel queues can no longer
// be reordered: on loopback and LANs autotuning grows each buffer to
// megabytes, and a round trip beside a bulk transfer waited 50-200 ms
// behind them. Short kernel queues leave the waiting to the per-stream
// buffers above, where the writers interleave streams.
var (
	// queueRate is the rate, in bytes per second, that the buffers of a
	// short link are sized for: twice the bandwidth-delay product at
	// 2 Gbit/s and the connection's lowest round-trip time so far.
	queueRate = 2.5e8
	// minSocketBuffer is the smallest SO_SNDBUF/SO_RCVBUF set (Linux
	// doubles the value for its bookkeeping). Measured with `go run ./bench`
	// on loopback (plain, 128 MiB, two runs each): 32 KiB buffers with a
	// 16 KiB segment cap gave round trips beside bulk of 3.0-3.2 ms p50 but
	// cost 4.0-4.6 CPU-s/GiB and 0.28-0.33 of the relay's bulk rate; 128 KiB
	// without a cap 4.2 ms p50 / 8.3-9.3 ms p99 at 3.2-3.5 CPU-s/GiB and
	// 0.34-0.36; the kernel's autotuned buffers 48-82 ms p50 at 2.8-2.9
	// CPU-s/GiB and 0.41.
	minSocketBuffer = 128 << 10
	// maxSocketBuffer is the largest size set: a link that needs more (a
	// round trip above about 8 ms) keeps the kernel's autotuning, which
	// sizes the buffers for its path.
	maxSocketBuffer = 4 << 20
	// notsentLowat bounds the unsent bytes in the send queue
	// (TCP_NOTSENT_LOWAT): the writer blocks rather than queueing more,
	// on every link (it does not limit what is in flight).
	notsentLowat = 32 << 10
	// maxSegment caps the segment size of dialed connections (0: no cap).
	// With buffers of only a few loopback segments (64 KiB) window updates
	// come late; with 128 KiB buffers a 16 KiB cap bought no latency and
	// cost CPU (more, smaller segments), so it is off. shortenQueues still
	// sizes buffers to at least two segments.
	maxSegment = 0
)

// tcpConn returns the TCP connection under c.
func (c *Conn) tcpConn() (*net.TCPConn, error) {
	if c.tcp == nil {
		return nil, fmt.Errorf("wsconn: %T is not a TCP connection", c.nc)
	}
	return c.tcp, nil
}

// shortenQueues applies the short-queue policy to c's TCP connection:
// TCP_NOTSENT_LOWAT always, and, if sizeBuffers and twice the
// bandwidth-delay product is at most maxSocketBuffer, SO_SNDBUF and
// SO_RCVBUF of that size (at least minSocketBuffer, and two segments). It
// returns the buffer size set, 0 if it left the buffers to autotuning.
// Where the options do not exist (not Linux, not TCP) it changes nothing
// and reports why.
func (c *Conn) shortenQueues(sizeBuffers bool) (int, error) {
	tcp, err := c.tcpConn()
	if err != nil {
		return 0, err
	}
	if notsentLowat > 0 {
		if err := setNotsentLowat(tcp, notsentLowat); err != nil {
			return 0, err
		}
	}
	if !sizeBuffers {
		return 0, nil
	}
	rtt, err := tcpMinRTT(tcp)
	if err != nil {
		return 0, err
	}
	size := bufferSize(rtt)
	if size == 0 {
		return 0, nil
	}
	// A peer that did not cap its segments (not dialed by wsconn) may use
	// 64 KiB ones on loopback: a buffer of a segment or two stalls.
	if mss, err := tcpMSS(tcp); err == nil {
		size = max(size, 2*mss)
	}
	return size, c.SetSocketBuffers(size, size)
}

// bufferSize is the socket buffer size for a link with round-trip time
// rtt, 0 for one that keeps autotuning.
func bufferSize(rtt time.Duration) int {
	size := max(minSocketBuffer, int(2*queueRate*rtt.Seconds()))
	if size > maxSocketBuffer {
		return 0
	}
	return size
}
