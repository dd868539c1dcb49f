package proxy

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"
)

// joinResult says what a joined pair carried and why it ended.
type joinResult struct {
	sent     int64 // local -> tunnel bytes
	received int64 // tunnel -> local bytes
	// localEnded: the local side ended first (or its socket failed);
	// otherwise the tunnel side did.
	localEnded bool
	// err is what ended it; nil for a clean end of file.
	err error
}

// join copies between a local socket and a tunnel connection until both
// directions are done, then closes both. See the package documentation for
// the half-close rules.
func join(local, tun net.Conn, pool *bufPool) joinResult {
	var (
		up     joinResult // filled by the local -> tunnel loop
		upDone = make(chan struct{})
		// upClosed is set by the local -> tunnel loop before it closes
		// tun, so that the other loop knows why its Read failed.
		upClosed atomic.Bool
	)
	go func() {
		defer close(upDone)
		b := pool.get()
		defer pool.put(b)
		buf := *b
		for {
			n, err := local.Read(buf)
			if n > 0 {
				if _, werr := tun.Write(buf[:n]); werr != nil {
					// The tunnel side is gone; the other loop ends it on
					// the local side. Until then keep reading, so that
					// the final close does not turn into a reset that
					// could destroy data still on its way to the local
					// peer, but give up writing to a peer that does not
					// read.
					local.SetWriteDeadline(time.Now().Add(drainTimeout))
					for err == nil {
						_, err = local.Read(buf)
					}
					break
				}
				up.sent += int64(n)
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					up.err = err
				}
				break
			}
		}
		// Sends what was written, then the reset the peer reads as end of
		// file; the other loop's Read then fails.
		upClosed.Store(true)
		tun.Close()
	}()

	var res joinResult
	b := pool.get()
	buf := *b
	localFailed := false
	for {
		n, err := tun.Read(buf)
		if n > 0 {
			if _, werr := local.Write(buf[:n]); werr != nil {
				res.err = werr
				localFailed = true
				break
			}
			res.received += int64(n)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				res.err = err
			}
			break
		}
	}
	pool.put(b)
	tunnelClosedByUs := !localFailed && upClosed.Load()
	switch {
	case localFailed:
		local.Close() // ends the other loop's Read
		tun.Close()
	case tunnelClosedByUs:
		// The local side ended and the other loop closed the tunnel
		// connection; it has nothing more to do.
	default:
		// The tunnel side ended: everything received was written. Send
		// FIN and let the local side close within the linger time.
		if cw, ok := local.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		local.SetReadDeadline(time.Now().Add(linger))
	}
	<-upDone
	local.Close()
	tun.Close()

	res.sent = up.sent
	if localFailed || tunnelClosedByUs {
		res.localEnded = true
		if tunnelClosedByUs {
			res.err = up.err
		}
	}
	return res
}
