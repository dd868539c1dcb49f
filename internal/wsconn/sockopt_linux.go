//go:build linux

package wsconn

import (
	"net"
	"syscall"
	"time"
	"unsafe"
)

// tcpRTT returns the kernel's smoothed round-trip time of a TCP connection
// (TCP_INFO).
func tcpRTT(tc *net.TCPConn) (time.Duration, error) {
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var ti syscall.TCPInfo
	var serr error
	err = rc.Control(func(fd uintptr) {
		n := uint32(unsafe.Sizeof(ti))
		_, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_TCP, syscall.TCP_INFO,
			uintptr(unsafe.Pointer(&ti)), uintptr(unsafe.Pointer(&n)), 0)
		if e != 0 {
			serr = e
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return 0, err
	}
	return time.Duration(ti.Rtt) * time.Microsecond, nil
}

// maxSegment caps the TCP segment size of dialed connections. Real links
// have smaller segments anyway (1460 bytes, 8960 with jumbo frames); on
// loopback (64 KiB segments) small socket buffers hold only one or two
// segments, and the window updates then come late: a transfer stalls.
const maxSegment = 16 << 10

// dialControl clamps the segment size of a connection before it connects,
// which is the only time the kernel applies it (the SYN announces it, so
// it holds both ways).
func dialControl(network, _ string, c syscall.RawConn) error {
	if network != "tcp" && network != "tcp4" && network != "tcp6" {
		return nil
	}
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, maxSegment)
	}); err != nil {
		return err
	}
	return serr
}
