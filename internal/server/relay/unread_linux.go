package relay

import (
	"net"
	"syscall"
	"unsafe"
)

// kernelUnread makes p.unread report the bytes waiting in the receive
// queue of the TCP socket under p's WebSocket (SIOCINQ), when that socket
// can be reached through the wrappers (TLS, and wrappers with a NetConn
// method).
func (p *peer) kernelUnread() {
	rc := rawConn(p.conn.NetConn())
	if rc == nil {
		return
	}
	p.raw = rc
	p.inqFn = func(fd uintptr) {
		var n int32
		_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&n)))
		if errno != 0 {
			n = 0
		}
		p.inq = int(n)
	}
}

// unread returns the bytes in the kernel's receive queue, 0 if unknown.
// Reader goroutine only.
func (p *peer) unread() int {
	if p.raw == nil {
		return 0
	}
	p.inq = 0
	if p.raw.Control(p.inqFn) != nil {
		return 0
	}
	return p.inq
}

// rawConn finds the socket under nc: through TLS, and through wrappers
// with a NetConn method (as tls.Conn has).
func rawConn(nc net.Conn) syscall.RawConn {
	for range 8 {
		if sc, ok := nc.(syscall.Conn); ok {
			rc, err := sc.SyscallConn()
			if err != nil {
				return nil
			}
			return rc
		}
		u, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		nc = u.NetConn()
	}
	return nil
}
