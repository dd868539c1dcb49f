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
		if rf, ok := tun.(io.ReaderFrom); ok {
			up = copyUp(local, rf, pool)
			upClosed.Store(true)
			tun.Close()
			return
		}
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
	localFailed := false
	if wt, ok := tun.(io.WriterTo); ok {
		lw := &localWriter{c: local}
		n, err := wt.WriteTo(lw)
		res.received = n
		switch {
		case lw.err != nil:
			res.err = lw.err
			localFailed = true
		case err != nil && !errors.Is(err, io.EOF):
			res.err = err
		}
	} else {
		b := pool.get()
		buf := *b
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
	}
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

// copyUp is the local -> tunnel loop for a tunnel connection that reads
// from the local socket itself, straight into its send buffer (a
// *tunnel.Conn): no copy through a buffer of ours. It behaves like the
// buffered loop in join.
func copyUp(local net.Conn, tun io.ReaderFrom, pool *bufPool) joinResult {
	var up joinResult
	lr := &localReader{c: local}
	up.sent, _ = tun.ReadFrom(lr)
	if lr.err != nil {
		// The local side ended (or failed) first.
		if !errors.Is(lr.err, io.EOF) {
			up.err = lr.err
		}
		return up
	}
	// The tunnel side is gone: drain the local side as the buffered loop
	// does, so that the final close does not turn into a reset.
	local.SetWriteDeadline(time.Now().Add(drainTimeout))
	b := pool.get()
	for {
		if _, err := local.Read(*b); err != nil {
			break
		}
	}
	pool.put(b)
	return up
}

// localReader and localWriter remember the local socket's error, so that
// join knows which side ended a ReadFrom or WriteTo of the tunnel
// connection.
type localReader struct {
	c   net.Conn
	err error
}

func (r *localReader) Read(p []byte) (int, error) {
	n, err := r.c.Read(p)
	if err != nil {
		r.err = err
	}
	return n, err
}

type localWriter struct {
	c   net.Conn
	err error
}

func (w *localWriter) Write(p []byte) (int, error) {
	n, err := w.c.Write(p)
	if err != nil {
		w.err = err
	}
	return n, err
}
