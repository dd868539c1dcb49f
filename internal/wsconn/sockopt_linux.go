//go:build linux

package wsconn

import (
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// tcpMinRTT returns the lowest round-trip time the kernel has measured on
// a TCP connection so far (TCP_INFO tcpi_min_rtt): unlike the smoothed
// RTT it leaves out the time the peer took to answer the handshake, which
// on a busy machine can be milliseconds even on loopback.
func tcpMinRTT(tc *net.TCPConn) (time.Duration, error) {
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var ti *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) { ti, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, serr
	}
	rtt := ti.Min_rtt
	if rtt == 0 || rtt == ^uint32(0) { // no sample (kernels before 4.6 report 0)
		rtt = ti.Rtt
	}
	return time.Duration(rtt) * time.Microsecond, nil
}

// setNotsentLowat sets TCP_NOTSENT_LOWAT: the socket accepts more data
// only while less than n bytes of what it holds are unsent.
func setNotsentLowat(tc *net.TCPConn, n int) error {
	rc, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, n) }); err != nil {
		return err
	}
	return serr
}

// segmentControl returns a net.Dialer Control function that caps the
// segment size of the connection before it connects, the only time the
// kernel applies it: the SYN announces it, so it holds in both directions.
func segmentControl(mss int) func(network, address string, c syscall.RawConn) error {
	return func(network, _ string, c syscall.RawConn) error {
		if network != "tcp" && network != "tcp4" && network != "tcp6" {
			return nil
		}
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG, mss)
		}); err != nil {
			return err
		}
		return serr
	}
}

// tcpMSS returns the connection's current segment size (TCP_MAXSEG).
func tcpMSS(tc *net.TCPConn) (int, error) {
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var mss int
	var serr error
	if err := rc.Control(func(fd uintptr) { mss, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG) }); err != nil {
		return 0, err
	}
	return mss, serr
}

// ioctlInq returns the bytes waiting in the receive queue of the socket
// fd (SIOCINQ).
func ioctlInq(fd uintptr) (int, error) {
	return unix.IoctlGetInt(int(fd), unix.SIOCINQ)
}
