package wsconn

import (
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// The write funnel. Every frame wsconn writes (data messages, pings,
// pongs, close frames) goes through one lock, wlock, so that frames never
// interleave and a deadline set for one write never cuts another. A write
// that failed (a deadline too) may have sent part of a frame: nothing may
// follow it on the wire, so the first failure (werr) fails every later
// write. Waiting for the funnel is context-aware; the write itself is
// bounded by the context's deadline (or the connection's WriteTimeout for
// messages, a fixed bound for control frames), and cancelling the
// context cuts a message write in progress.
//
// The one exception to waiting is the pong: the reader must not wait for
// a message write that a slow peer holds up (the whole other direction
// would stop), so a pong that finds the funnel busy is left to the writer
// holding it, which sends it right after its message. Only the latest
// ping needs an answer (RFC 6455 section 5.5.3).

// Bounds of control frame writes whose context has no earlier deadline.
const (
	pingTimeout  = 10 * time.Second
	pongTimeout  = 5 * time.Second
	closeTimeout = time.Second
)

// Frame opcodes (RFC 6455 section 5.2).
const (
	opContinuation = 0
	opText         = 1
	opBinary       = 2
	opClose        = 8
	opPing         = 9
	opPong         = 10
)

// maxControlPayload is the largest control frame payload.
const maxControlPayload = 125

// errWriteTimeout is a control frame that could not be written before its
// deadline because a message write held the funnel.
var errWriteTimeout = &timeoutError{}

type timeoutError struct{}

func (*timeoutError) Error() string   { return "wsconn: write timeout" }
func (*timeoutError) Timeout() bool   { return true }
func (*timeoutError) Temporary() bool { return true }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// lock takes the funnel, waiting at most until ctx ends or deadline (zero:
// none) passes.
func (c *Conn) lock(ctx context.Context, deadline time.Time) error {
	select {
	case c.wlock <- struct{}{}:
		return nil
	default:
	}
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case c.wlock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-timeout:
		return errWriteTimeout
	}
}

// unlock releases the funnel after a write that returned err, first
// sending the pong the reader left meanwhile, if any (after a failed
// write the connection is lost).
func (c *Conn) unlock(err error) {
	if p := c.pendingPong.Swap(nil); p != nil && err == nil && c.werr == nil {
		// An error here is the connection's: the next write reports it.
		c.writeControlLocked(opPong, *p, time.Now().Add(pongTimeout))
	}
	<-c.wlock
}

// noteWriteErr records the first failed write and returns err.
func (c *Conn) noteWriteErr(err error) error {
	if err != nil && c.werr == nil {
		c.werr = err
	}
	return err
}

// wctxWatch cuts the message write in progress when the context of the
// message writes is cancelled. It is registered once per context (the
// relay and the tunnel library use one per connection), so a message
// write allocates nothing. ctx and stop are under wlock; mu orders a
// cut with the writes' own deadlines, so that a context cancelled after
// its write ended never cuts the next one.
type wctxWatch struct {
	ctx    context.Context
	stop   func() bool
	id     uint64 // of the registration
	mu     sync.Mutex
	active uint64 // the registration of the write in progress; 0: none
	cut    bool   // the write in progress was cut
}

func (c *Conn) watch(ctx context.Context) uint64 {
	w := &c.wctx
	if ctx.Done() == nil {
		return 0
	}
	if ctx == w.ctx {
		return w.id
	}
	if w.stop != nil {
		w.stop()
	}
	w.id++
	id := w.id
	w.ctx = ctx
	w.stop = context.AfterFunc(ctx, func() {
		w.mu.Lock()
		if w.active == id {
			w.cut = true
			c.setWriteDeadline(time.Unix(1, 0))
		}
		w.mu.Unlock()
	})
	return id
}

// deadline is the write deadline for ctx: its own, or now+d (d > 0),
// whichever is earlier; zero for none.
func deadline(ctx context.Context, d time.Duration) time.Time {
	dl, ok := ctx.Deadline()
	if d > 0 {
		if t := time.Now().Add(d); !ok || t.Before(dl) {
			return t
		}
	}
	if ok {
		return dl
	}
	return time.Time{}
}

// WriteMessage sends p as one binary message of one frame, without
// allocating: on a client connection masked, with one write call; on a
// server connection over plain TCP with one writev, over TLS in as few
// records as the frame's size allows. It waits for the funnel (a control
// frame being written) until ctx ends; the write is bounded by ctx's
// deadline or, if ctx has none, the connection's WriteTimeout, and
// cancelling ctx cuts it (the connection can then write no more). After a
// close frame has been sent or received it returns ErrCloseSent. One
// goroutine at a time may write messages.
func (c *Conn) WriteMessage(ctx context.Context, p []byte) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := c.lock(ctx, time.Time{}); err != nil {
		return err
	}
	defer func() { c.unlock(err) }()
	if c.closeSent.Load() {
		return ErrCloseSent
	}
	if c.werr != nil {
		return c.werr
	}
	if len(p) > MaxMessageSize {
		return errors.New("wsconn: message exceeds 131076 bytes")
	}
	w := &c.wctx
	id := c.watch(ctx)
	w.mu.Lock()
	w.active, w.cut = id, false
	err = c.setWriteDeadline(deadline(ctx, c.writeTO))
	w.mu.Unlock()
	if err != nil {
		return c.noteWriteErr(err)
	}
	if c.role == RoleClient {
		err = c.writeMasked(opBinary, p)
	} else {
		err = c.writeFrame(p)
	}
	w.mu.Lock()
	cut := w.cut
	w.active, w.cut = 0, false
	w.mu.Unlock()
	if err != nil && cut {
		err = ctx.Err()
	}
	return c.noteWriteErr(err)
}

// MessageWriter sends messages on a Conn with one context: it is what
// wire.FrameWriter writes to.
type MessageWriter struct {
	c   *Conn
	ctx context.Context
}

// Writer returns a MessageWriter for c writing with ctx.
func (c *Conn) Writer(ctx context.Context) *MessageWriter { return &MessageWriter{c, ctx} }

// WriteMessage is Conn.WriteMessage with the writer's context.
func (w *MessageWriter) WriteMessage(p []byte) error { return w.c.WriteMessage(w.ctx, p) }

// Ping sends a ping control frame, waiting for the funnel and writing at
// most until ctx's deadline or 10 s, whichever comes first.
func (c *Conn) Ping(ctx context.Context) error {
	dl := deadline(ctx, pingTimeout)
	if err := c.lock(ctx, dl); err != nil {
		return err
	}
	err := c.writeControlLocked(opPing, nil, dl)
	c.unlock(err)
	return err
}

// pong answers a ping (reader goroutine): at once if the funnel is free,
// else left to the writer holding it.
func (c *Conn) pong(data []byte) error {
	select {
	case c.wlock <- struct{}{}:
		c.pendingPong.Store(nil) // superseded
	default:
		d := append([]byte(nil), data...)
		c.pendingPong.Store(&d)
		// The writer may have released the funnel before seeing it.
		select {
		case c.wlock <- struct{}{}:
		default:
			return nil
		}
		p := c.pendingPong.Swap(nil)
		if p == nil { // the writer sent it
			<-c.wlock
			return nil
		}
		data = *p
	}
	defer func() { <-c.wlock }()
	return c.writeControlLocked(opPong, data, time.Now().Add(pongTimeout))
}

// SendClose sends a close frame with code and reason (truncated to fit a
// control frame) but leaves the connection open, so the peer's close reply
// can still be read: the closing handshake of RFC 6455, which spares the
// peer a TCP reset. No message can be written afterwards; Close then
// closes the connection (without a second close frame). It waits for the
// funnel and writes for at most 1 s; a timeout is a net.Error.
func (c *Conn) SendClose(code int, reason string) error {
	if c.closeSent.Swap(true) {
		return ErrCloseSent
	}
	return c.writeClose(code, reason)
}

func (c *Conn) writeClose(code int, reason string) error {
	if len(reason) > maxControlPayload-2 {
		reason = reason[:maxControlPayload-2]
	}
	var b [maxControlPayload]byte
	binary.BigEndian.PutUint16(b[:], uint16(code))
	n := 2 + copy(b[2:], reason)
	dl := time.Now().Add(closeTimeout)
	if err := c.lock(context.Background(), dl); err != nil {
		return err
	}
	err := c.writeControlLocked(opClose, b[:n], dl)
	<-c.wlock // no pong after a close frame
	return err
}

// Close sends a close frame with code and reason (unless one was sent
// already), as SendClose, and closes the connection (under TLS with a
// close_notify, which waits for a full socket for up to 5 s; Abort does
// not). Only the first Close or Abort has effect.
func (c *Conn) Close(code int, reason string) error {
	var err error
	c.closeOnce.Do(func() {
		c.live.stop()
		if !c.closeSent.Swap(true) {
			c.writeClose(code, reason)
		}
		err = c.nc.Close()
	})
	return err
}

// writeControlLocked writes a control frame with one write call, by
// deadline. The caller holds the funnel.
func (c *Conn) writeControlLocked(op byte, payload []byte, deadline time.Time) error {
	if c.werr != nil {
		return c.werr
	}
	if err := c.setWriteDeadline(deadline); err != nil {
		return c.noteWriteErr(err)
	}
	b := c.ctl[:]
	b[0] = 0x80 | op
	n := 2
	if c.role == RoleClient {
		b[1] = 0x80 | byte(len(payload))
		var key [4]byte
		binary.LittleEndian.PutUint32(key[:], rand.Uint32())
		n += copy(b[n:], key[:])
		maskCopy(b[n:], payload, key)
	} else {
		b[1] = byte(len(payload))
		copy(b[n:], payload)
	}
	_, err := c.nc.Write(b[:n+len(payload)])
	return c.noteWriteErr(err)
}

// setWriteDeadline sets the deadline of writes on the connection, and on
// the TCP socket under a wrapper that writeFrame writes to directly.
func (c *Conn) setWriteDeadline(t time.Time) error {
	if c.writev && c.nc != net.Conn(c.tcp) {
		c.tcp.SetWriteDeadline(t)
	}
	return c.nc.SetWriteDeadline(t)
}

// maxClientHeader is the largest header of a client frame: two bytes, an
// eight-byte length and the masking key.
const maxClientHeader = 2 + 8 + 4

// maskBufs are the buffers writeMasked builds frames in, lent for one
// write so that idle connections hold none.
var maskBufs = sync.Pool{New: func() any {
	b := make([]byte, maxClientHeader+MaxMessageSize)
	return &b
}}

// frameHeader writes the header of a final frame of opcode op and n
// payload bytes into b, with the mask bit if masked, and returns its
// length (2, 4 or 10, the key not included).
func frameHeader(b []byte, op byte, n int, masked bool) int {
	b[0] = 0x80 | op // FIN
	var m byte
	if masked {
		m = 0x80
	}
	switch {
	case n <= 125:
		b[1] = m | byte(n)
		return 2
	case n <= 0xffff:
		b[1] = m | 126
		binary.BigEndian.PutUint16(b[2:], uint16(n))
		return 4
	default:
		b[1] = m | 127
		binary.BigEndian.PutUint64(b[2:], uint64(n))
		return 10
	}
}

// writeMasked sends p as one masked frame (RFC 6455 section 5.3) with a
// single write call, masking while copying. The caller holds the funnel.
func (c *Conn) writeMasked(op byte, p []byte) error {
	bp := maskBufs.Get().(*[]byte)
	defer maskBufs.Put(bp)
	b := *bp
	n := frameHeader(b, op, len(p), true)
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], rand.Uint32())
	n += copy(b[n:], key[:])
	maskCopy(b[n:], p, key)
	_, err := c.nc.Write(b[:n+len(p)])
	return err
}

// tlsRecord is the largest TLS record payload (crypto/tls seals and sends
// what one Write call is given as records of up to this size, one syscall
// each, once dynamic record sizing is over).
const tlsRecord = 16 << 10

// headBufs are the buffers writeFrame sends a frame's header and head in
// over TLS, lent for one write.
var headBufs = sync.Pool{New: func() any {
	b := make([]byte, 10+tlsRecord)
	return &b
}}

// writeFrame sends p as one unmasked binary frame (a server's), without
// allocating. On plain TCP header and payload go out with one writev,
// without a copy. Otherwise (TLS) with two write calls that make as few
// records as one call would, copying at most 16 KiB: first the header and
// the head of p that is left over when the rest is whole records (len(p)
// mod 16 KiB), then the rest. Two calls are safe: the funnel is held. The
// caller holds the funnel.
func (c *Conn) writeFrame(p []byte) error {
	if c.writev {
		n := frameHeader(c.hdr[:], opBinary, len(p), false)
		c.wvec = [2][]byte{c.hdr[:n], p}
		c.wv = c.wvec[:]
		_, err := c.wv.WriteTo(c.tcp)
		c.wvec, c.wv = [2][]byte{}, nil // p is the caller's again
		return err
	}
	head := len(p) % tlsRecord
	if len(p) <= tlsRecord {
		head = len(p)
	}
	bp := headBufs.Get().(*[]byte)
	defer headBufs.Put(bp)
	b := *bp
	n := frameHeader(b, opBinary, len(p), false)
	n += copy(b[n:], p[:head])
	if _, err := c.nc.Write(b[:n]); err != nil || head == len(p) {
		return err
	}
	_, err := c.nc.Write(p[head:])
	return err
}
