package tunnel

import (
	"crypto/tls"
	"net"
	"syscall"
)

// tcpNotSentLowat is TCP_NOTSENT_LOWAT from linux/tcp.h.
const tcpNotSentLowat = 25

// limitUnsent caps the bytes the kernel holds unsent for the WebSocket's
// TCP connection. Without it the kernel queues megabytes ahead of the
// writer's round-robin, and an interactive connection waits behind another
// one's bulk data; with it, the writer decides the order of nearly all that
// is still unsent. In-flight data (the congestion window) is not limited,
// so throughput on long fat links is unchanged.
func limitUnsent(c net.Conn, n int) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	raw.Control(func(fd uintptr) {
		syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpNotSentLowat, n)
	})
}
