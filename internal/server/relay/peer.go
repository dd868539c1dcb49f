package relay

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/wsconn"
	"github.com/sectun/sectun/wire"
)

// WebSocket buffer sizes of accepted connections. The read buffer only
// holds frame headers and small messages (large reads bypass it); the
// write buffer is pooled between writes. Both stay small because idle
// peers must be cheap.
const (
	acceptReadBuffer  = 4 << 10
	acceptWriteBuffer = 4 << 10
)

// inBufSize holds a partial tunnel frame kept from the previous read and
// then the rest of the largest WebSocket message, which is all one read
// returns.
const inBufSize = wire.FrameHeaderSize + wire.MaxMessageSize + wire.MaxWebSocketMessageSize

// inBufs holds read buffers between bursts, so an idle peer holds none.
// Frames are forwarded from them without a copy: see peer.out.
var inBufs = sync.Pool{New: func() any {
	b := make([]byte, inBufSize)
	return &b
}}

// outBuf is a FrameWriter (up to 131076 bytes) lent to sendNow for the
// messages the service itself sends.
type outBuf struct {
	fw  *wire.FrameWriter
	dst *peer // nil: discard what is written
}

var outBufs = sync.Pool{New: func() any {
	o := &outBuf{}
	o.fw = wire.NewFrameWriter(o, 0)
	return o
}}

func (o *outBuf) WriteMessage(b []byte) error {
	d := o.dst
	if d == nil {
		return nil
	}
	d.conn.SetWriteDeadline(time.Now().Add(d.r.cfg.WriteTimeout))
	return d.conn.WriteMessage(b)
}

// counters are a peer's traffic figures, written by its reader.
type counters struct {
	frames  atomic.Int64 // frames relayed from this peer
	bytes   atomic.Int64 // their size, length prefixes included
	dropped atomic.Int64 // frames from this peer not delivered
}

func (c *counters) add(o *counters) {
	c.frames.Add(o.frames.Load())
	c.bytes.Add(o.bytes.Load())
	c.dropped.Add(o.dropped.Load())
}

// peer is one connected end of a tunnel.
type peer struct {
	r         *Relay
	t         *tunnel // set by install
	tunnelID  string
	services  []string
	conn      *wsconn.Conn
	mode      store.Mode
	idx       int // modeIndex(mode)
	role      wire.Role
	version   int
	channelID string
	log       *slog.Logger
	ctx       context.Context // ends when the peer is closed
	cancel    context.CancelFunc
	ping      *time.Timer
	// stall pings the peer while its reader is held up (blocked writing to
	// the other peer, or throttled): see holdStart. nil without pings.
	stall *time.Timer
	held  atomic.Bool

	// closed is set when frames from and to this peer must no longer be
	// relayed: from install (replaced, under t.mu) or close.
	closed      atomic.Bool
	closeOnce   sync.Once
	closeCode   int // written in closeOnce
	closeReason string
	dropped     bool        // written in closeOnce: cut without a close frame
	linger      *time.Timer // cuts the connection after close; nil if dropped

	// wmu guards out and outFrom. out holds the frames waiting for this
	// peer, whole tunnel frames as they arrived: a range of the read
	// buffer of outFrom, the other peer's reader, which forwards them
	// without copying and sends them (flushPending) before it reads into
	// that buffer again or releases it. sendNow writes under wmu too.
	wmu     sync.Mutex
	out     []byte
	outFrom *peer

	// Owned by the peer's own reader goroutine.
	raw      syscall.RawConn // the TCP socket, for unread; nil if unknown
	inqFn    func(uintptr)   // sets inq from the socket (allocated once)
	inq      int
	ahead    int      // lower bound of the bytes readable without blocking: see readAhead
	idle     [16]byte // the first bytes of a burst, read without a buffer
	msg      wire.Message
	pending  *peer     // peer whose out holds frames from this reader's buffer
	pendEnd  int       // where they end in that buffer
	consumed int       // frame bytes read since the last bandwidth wait
	lastLive time.Time // when the liveness count was last restarted
	cnt      counters
}

// netRead reads from the WebSocket. Time the reader spent writing to the
// other peer or throttled is not the peer's silence: the liveness count
// restarts if it was last restarted long ago (wsconn also counts data
// waiting in the socket as a sign of life).
func (p *peer) netRead(b []byte) (int, error) {
	if d := p.r.cfg.IdleTimeout; d > 0 {
		if now := time.Now(); now.Sub(p.lastLive) > d/8 {
			p.lastLive = now
			p.conn.SetLiveness(d)
		}
	}
	// stopReading's deadline ends a Read in progress; this ends the
	// next ones.
	if p.r.stopping.Load() {
		return 0, errStopping
	}
	return p.conn.Read(b)
}

func (r *Relay) newPeer(conn *wsconn.Conn, g Grant, hs HandshakeRequest) *peer {
	p := &peer{
		r:         r,
		tunnelID:  g.TunnelID,
		services:  g.Services,
		conn:      conn,
		mode:      hs.Mode,
		idx:       modeIndex(hs.Mode),
		role:      wire.RoleSource,
		version:   subprotocolVersion(hs.Subprotocol),
		channelID: hs.ChannelID,
		log:       r.log.With("tunnel_id", g.TunnelID, "channel_id", hs.ChannelID, "mode", hs.Mode),
	}
	if hs.Mode == store.ModeDestination {
		p.role = wire.RoleDestination
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.kernelUnread()
	if d := r.cfg.PingInterval; d > 0 {
		// Armed only once assigned: pingTick reads p.ping.
		p.ping = time.AfterFunc(math.MaxInt64, p.pingTick)
		p.ping.Reset(d)
		p.stall = time.AfterFunc(math.MaxInt64, p.stallTick)
		p.stall.Stop()
	}
	return p
}

// stallPing is how often a peer whose reader is held up gets a ping.
const stallPing = time.Second

// holdStart and holdEnd bracket what can keep the reader from reading its
// connection for long: a write to the other peer (which may not be
// reading) and a bandwidth wait. Meanwhile the pings p's client sends wait
// unread, unanswered; if the hold lasts, the relay pings the client every
// stallPing instead, so that a client counting any frame from the service
// as a sign of life (the tunnel library, read deadlines with gorilla) does
// not give up on a healthy connection while the other end is stuck. Reader
// goroutine only; two timer calls per write.
func (p *peer) holdStart() {
	if p.stall != nil {
		p.held.Store(true)
		p.stall.Reset(stallPing)
	}
}

func (p *peer) holdEnd() {
	if p.stall != nil {
		p.held.Store(false)
		p.stall.Stop()
	}
}

func (p *peer) stallTick() {
	if !p.held.Load() || p.closed.Load() {
		return
	}
	p.conn.Ping(nil)
	// A Reset racing holdEnd's Stop at worst fires once more, idle.
	if p.held.Load() {
		p.stall.Reset(stallPing)
	}
}

func (p *peer) pingTick() {
	if p.closed.Load() {
		return
	}
	p.conn.Ping(nil)
	p.ping.Reset(p.r.cfg.PingInterval)
}

// closeLinger is how long a closed peer has to answer the close frame
// before its TCP connection is cut.
const closeLinger = 2 * time.Second

// close sends the peer a close frame with code and reason and stops
// relaying its frames; only the first call has effect. The connection
// itself is closed when the peer answers (its reader sees the reply) or
// after closeLinger: closing at once could reset the TCP connection before
// the close frame is read, and the reference local proxy reconnects after
// a reset where it exits after a close frame. It may be called from any
// goroutine.
func (p *peer) close(code int, reason string) {
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		p.closeCode, p.closeReason = code, reason
		p.cancel()
		if p.ping != nil {
			p.ping.Stop()
			p.stall.Stop()
		}
		if err := p.conn.SendClose(code, reason); isTimeout(err) {
			// The close frame did not go out in time: a write to a peer
			// that does not read holds the connection. There is no
			// closing handshake to wait for, and cutting the connection
			// ends that write too.
			p.dropped = true
			cut(p.conn)
			return
		}
		p.linger = time.AfterFunc(closeLinger, func() { p.conn.Close() })
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// cut closes the TCP connection under c, under TLS without close_notify
// (which could block on a full socket too).
func cut(c *wsconn.Conn) {
	nc := c.NetConn()
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	nc.Close()
}

// stopReading makes the peer's reader stop at its next network read (after
// flushing what it relayed), for Shutdown: a read in progress times out,
// later ones see r.stopping; a bandwidth wait ends with p.ctx.
func (p *peer) stopReading() {
	p.cancel()
	if p.ping != nil {
		p.ping.Stop()
		p.stall.Stop()
	}
	p.conn.NetConn().SetReadDeadline(time.Now())
}

// drop closes the peer's TCP connection without a close frame (under TLS
// too: no close_notify either), so that the client sees what a crash or a
// network failure looks like and reconnects, and stops relaying its
// frames; only the first close or drop has effect. It may be called from
// any goroutine; a write or read in progress on the connection fails.
func (p *peer) drop(reason string) {
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		p.dropped = true
		p.closeReason = reason
		p.cancel()
		if p.ping != nil {
			p.ping.Stop()
			p.stall.Stop()
		}
		cut(p.conn)
	})
}

// abort closes a peer that has no reader running, waiting for its answer.
func (p *peer) abort(code int, reason string) {
	p.close(code, reason)
	if p.dropped {
		return
	}
	p.discard()
	p.linger.Stop()
	p.conn.Close()
}

// discard reads and drops what the peer still sends until its close reply,
// or until the connection is cut.
func (p *peer) discard() {
	for {
		if _, err := p.conn.Read(p.idle[:]); err != nil {
			return
		}
	}
}

var (
	// errViolation ends a reader that closed its peer for breaking a rule.
	errViolation = errors.New("relay: protocol violation")
	// errClosed ends a reader whose peer was closed by another goroutine.
	errClosed = errors.New("relay: peer closed")
	// errStopping ends a reader when the relay shuts down.
	errStopping = errors.New("relay: shutting down")
)

func (p *peer) violation(code int, reason string, err error) error {
	p.r.violations.Add(1)
	p.log.Warn("protocol violation: closing peer", "code", code, "reason", reason, "err", err)
	p.close(code, reason)
	return errViolation
}

// writeFailed closes a peer a write to which failed.
func (p *peer) writeFailed(err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		p.close(wsconn.ClosePolicyViolation, fmt.Sprintf("not reading: write timed out after %v", p.r.cfg.WriteTimeout))
		return
	}
	p.close(wsconn.CloseInternalError, "write failed")
}

// run relays the peer's frames until its WebSocket ends, then detaches it.
func (p *peer) run() {
	err := p.loop()
	p.finish(err)
}

func (p *peer) loop() error {
	for {
		if err := p.beforeRead(); err != nil {
			return err
		}
		// Wait for the next bytes without holding a read buffer.
		n, err := p.netRead(p.idle[:])
		if err != nil {
			return err
		}
		p.ahead = 0 // that read may have waited: ask the kernel again
		bp := inBufs.Get().(*[]byte)
		err = p.burst(*bp, copy(*bp, p.idle[:n]))
		p.flushPending() // the other peer's out must not outlive the buffer
		inBufs.Put(bp)
		if err != nil {
			return err
		}
	}
}

// burst handles the tunnel frames in buf[:w], reading more while the last
// one is incomplete, until the buffer ends between frames.
func (p *peer) burst(buf []byte, w int) error {
	r := 0
	for {
		for w-r >= wire.FrameHeaderSize {
			n := int(binary.BigEndian.Uint16(buf[r:]))
			if n == 0 {
				return p.violation(wsconn.CloseProtocolError, "malformed tunnel frame: empty", wire.ErrMalformed)
			}
			end := r + wire.FrameHeaderSize + n
			if end > w {
				break
			}
			if p.closed.Load() {
				return errClosed
			}
			if err := p.handle(buf, r, end); err != nil {
				return err
			}
			r = end
		}
		if !p.readAhead(buf, r) {
			if r == w {
				return nil
			}
			// Frames forwarded from the buffer go out before their bytes
			// move.
			if err := p.beforeRead(); err != nil {
				return err
			}
			if r > 0 {
				w = copy(buf, buf[r:w])
				r = 0
			}
		}
		k, err := p.netRead(buf[w:])
		if err != nil {
			return err
		}
		w += k
		p.ahead -= k + readSlack
	}
}

// readAheadMin is what the kernel must hold for a read to be sure not to
// block: a whole TLS record (16 KiB of data plus its overhead) and
// WebSocket frame headers.
const readAheadMin = 16<<10 + 1<<10

// readSlack bounds the bytes a read consumes besides the data it returns:
// TLS record and WebSocket frame headers, control frames. Reading k bytes
// lowers the estimate of what can still be read without blocking by
// k + readSlack.
const readSlack = 512

// readAhead reports whether the reader may read on without first sending
// the frames it queued (beforeRead): when the next read cannot block,
// because the kernel already holds at least readAheadMin bytes, and the
// frame at buf[r:] fits in the buffer without moving it. The frames
// queued then wait only for reads of data already received, and go out
// when the outgoing message is full (131076 bytes) or the next read could
// block. Over TLS a read returns one 16 KiB record: without this, each
// WebSocket message sent would carry one record's worth of frames.
// Not under a bandwidth limit, whose wait is in beforeRead.
//
// The kernel is asked (an ioctl) only when the bytes it reported last,
// less what was read since, no longer make readAheadMin: what it reported
// can still be read without blocking, whether it is still in the socket
// or already in the TLS connection's buffers. Over TLS that saves an
// ioctl per 16 KiB record.
func (p *peer) readAhead(buf []byte, r int) bool {
	if p.pending == nil || p.raw == nil || p.t.limiters[p.idx] != nil ||
		len(buf)-r < wire.FrameHeaderSize+wire.MaxMessageSize {
		return false
	}
	if p.ahead < readAheadMin {
		p.ahead = p.unread()
	}
	return p.ahead >= readAheadMin
}

// beforeRead runs before every network read: frames waiting for the other
// peer go out, and the bandwidth limit makes the reader wait for what it
// consumed, so a throttled or slow tunnel pushes back on the sender's TCP.
func (p *peer) beforeRead() error {
	lim := p.t.limiters[p.idx]
	if p.pending == nil && (lim == nil || p.consumed == 0) {
		return nil
	}
	p.flushPending()
	if lim != nil && p.consumed > 0 {
		n := p.consumed
		p.consumed = 0
		p.holdStart()
		defer p.holdEnd()
		for n > 0 {
			k := min(n, limiterBurst)
			if err := lim.WaitN(p.ctx, k); err != nil {
				return err
			}
			n -= k
		}
	}
	return nil
}

// handle checks the tunnel frame buf[start:end] (length prefix included)
// from this peer and relays it.
func (p *peer) handle(buf []byte, start, end int) error {
	frame := buf[start+wire.FrameHeaderSize : end]
	m := &p.msg
	if err := m.Unmarshal(frame); err != nil {
		return p.violation(wsconn.CloseProtocolError, "malformed tunnel frame", err)
	}
	if err := m.Validate(p.role); err != nil {
		var re *wire.RuleError
		reason := "invalid message"
		if errors.As(err, &re) {
			reason = fmt.Sprintf("invalid %v: %s", re.Type, re.Rule)
		}
		return p.violation(wsconn.ClosePolicyViolation, reason, err)
	}
	t := p.t
	if !t.hasService(m.ServiceID) {
		return p.violation(wsconn.ClosePolicyViolation, "service ID is not one of the tunnel's", fmt.Errorf("service ID %q", m.ServiceID))
	}
	p.consumed += end - start
	switch m.Type {
	case wire.TypeData:
		if id := t.anon.Load(); id != 0 && id == m.StreamID && m.ServiceID != "" {
			t.mu.Lock()
			bad := t.anonConflict(m.ServiceID, m.StreamID)
			t.mu.Unlock()
			if bad {
				return p.violation(wsconn.ClosePolicyViolation, "service ID on a stream started without one", nil)
			}
		}
		p.forward(buf, start, end)
		return nil
	case wire.TypeStreamStart, wire.TypeStreamReset, wire.TypeConnectionStart, wire.TypeConnectionReset:
		return p.forwardControl(buf, start, end, m)
	}
	// An unknown type marked ignorable: the other peer may know it.
	p.forward(buf, start, end)
	return nil
}

// forward relays a frame that does not change stream state.
func (p *peer) forward(buf []byte, start, end int) {
	dst := p.t.peers[1-p.idx].Load()
	if dst == nil {
		p.cnt.dropped.Add(1)
		return
	}
	p.enqueue(dst, buf, start, end)
}

// forwardControl relays a stream control frame, updating the tunnel's
// stream state in the same critical section that picks the receiver, so
// that a replacement or departure resets exactly the streams the receiver
// saw started.
func (p *peer) forwardControl(buf []byte, start, end int, m *wire.Message) error {
	t := p.t
	t.mu.Lock()
	if p.closed.Load() {
		t.mu.Unlock()
		p.cnt.dropped.Add(1)
		return nil
	}
	if m.Type != wire.TypeStreamStart && t.anonConflict(m.ServiceID, m.StreamID) {
		t.mu.Unlock()
		return p.violation(wsconn.ClosePolicyViolation, "service ID on a stream started without one", nil)
	}
	dst := t.peers[1-p.idx].Load()
	if dst == nil || dst.closed.Load() {
		t.mu.Unlock()
		p.cnt.dropped.Add(1)
		// Nobody will answer: say so rather than leave the client hanging.
		switch m.Type {
		case wire.TypeStreamStart:
			p.sendNow(&wire.Message{Type: wire.TypeStreamReset, StreamID: m.StreamID, ServiceID: m.ServiceID})
		case wire.TypeConnectionStart:
			p.sendNow(&wire.Message{Type: wire.TypeConnectionReset, StreamID: m.StreamID, ServiceID: m.ServiceID, ConnectionID: m.ConnectionID})
		}
		return nil
	}
	switch m.Type {
	case wire.TypeStreamStart:
		t.streams[m.ServiceID] = m.StreamID
		if m.ServiceID == "" {
			t.anon.Store(m.StreamID)
		}
	case wire.TypeStreamReset:
		if id, ok := t.streams[m.ServiceID]; ok && id == m.StreamID {
			delete(t.streams, m.ServiceID)
			if m.ServiceID == "" {
				t.anon.Store(0)
			}
		}
	}
	t.mu.Unlock()
	p.enqueue(dst, buf, start, end)
	return nil
}

// enqueue queues the tunnel frame buf[start:end] of this reader's buffer
// for dst: it extends dst.out when the frame follows the frames already
// there (the common case: a batch of frames to one peer), up to the
// largest WebSocket message; otherwise dst.out is written first, blocking
// this reader: that is the backpressure.
func (p *peer) enqueue(dst *peer, buf []byte, start, end int) {
	if p.pending != nil && p.pending != dst {
		p.flushPending()
	}
	dst.wmu.Lock()
	if p.closed.Load() || dst.closed.Load() {
		dst.wmu.Unlock()
		p.cnt.dropped.Add(1)
		return
	}
	var err error
	if len(dst.out) > 0 && dst.outFrom == p && p.pendEnd == start && len(dst.out)+end-start <= wire.MaxWebSocketMessageSize {
		dst.out = dst.out[:len(dst.out)+end-start] // the buffer goes on: same memory
	} else {
		if len(dst.out) > 0 {
			p.holdStart() // the output is written first
			err = dst.writeOutLocked()
			p.holdEnd()
		}
		if err == nil {
			dst.out, dst.outFrom = buf[start:end], p
		}
	}
	dst.wmu.Unlock()
	if err != nil {
		p.cnt.dropped.Add(1)
		dst.writeFailed(err)
		return
	}
	p.pending, p.pendEnd = dst, end
	p.cnt.frames.Add(1)
	p.cnt.bytes.Add(int64(end - start))
}

// flushPending writes out what this reader queued for another peer.
func (p *peer) flushPending() {
	dst := p.pending
	if dst == nil {
		return
	}
	p.pending = nil
	p.holdStart()
	err := dst.flushOut()
	p.holdEnd()
	if err != nil {
		dst.writeFailed(err)
	}
}

// flushOut writes p's waiting frames (nothing once p is closed).
func (p *peer) flushOut() error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return p.writeOutLocked()
}

// writeOutLocked writes out as one WebSocket message and empties it; a
// closed peer's frames are dropped. p.wmu is held.
func (p *peer) writeOutLocked() error {
	b := p.out
	p.out, p.outFrom = nil, nil
	if len(b) == 0 || p.closed.Load() {
		return nil
	}
	p.conn.SetWriteDeadline(time.Now().Add(p.r.cfg.WriteTimeout))
	return p.conn.WriteMessage(b)
}

// sendNow writes service-generated messages to p at once, after the
// frames already waiting for it.
func (p *peer) sendNow(msgs ...*wire.Message) {
	p.wmu.Lock()
	if p.closed.Load() {
		p.wmu.Unlock()
		return
	}
	err := p.writeOutLocked()
	if err == nil {
		o := outBufs.Get().(*outBuf)
		o.dst = p
		for _, m := range msgs {
			if err = o.fw.Write(m); err != nil {
				break
			}
		}
		if err == nil {
			err = o.fw.Flush()
		}
		o.dst = nil
		o.fw.Flush() // after an error: drop what is left
		outBufs.Put(o)
	}
	p.wmu.Unlock()
	if err != nil {
		p.writeFailed(err)
	}
}

// sendResets tells p that the streams are gone.
func (p *peer) sendResets(refs []streamRef) {
	if len(refs) == 0 {
		return
	}
	msgs := make([]*wire.Message, len(refs))
	for i, s := range refs {
		msgs[i] = &wire.Message{Type: wire.TypeStreamReset, StreamID: s.id, ServiceID: s.service}
	}
	p.log.Debug("resetting streams of the departed peer", "streams", len(refs))
	p.sendNow(msgs...)
}

// finish detaches a peer whose reader ended: its last frames go out, the
// other end learns its streams are reset, the Authorizer that it left.
func (p *peer) finish(err error) {
	p.flushPending()
	p.r.reading.Done()
	if p.r.stopping.Load() {
		// Shutdown drops every peer once the readers have flushed; until
		// then p's connection must stay open for frames the other reader
		// still has for it.
		<-p.r.drained
	}
	alreadyClosed := p.closed.Load()
	var ne net.Error
	switch {
	case errors.Is(err, errViolation):
	case alreadyClosed:
	case errors.Is(err, wsconn.ErrTextMessage):
		p.r.violations.Add(1)
		p.log.Warn("protocol violation: text message", "code", wsconn.CloseUnsupportedData)
	case errors.Is(err, wsconn.ErrMessageTooBig):
		p.r.violations.Add(1)
		p.log.Warn("protocol violation: message over 131076 bytes", "code", wsconn.CloseMessageTooBig)
	case errors.As(err, &ne) && ne.Timeout():
		// Dropped, not closed: a silent peer is most likely cut off, and
		// if its link comes back a close frame would make the reference
		// local proxy exit, where a dropped connection makes it reconnect.
		p.log.Info("peer silent: dropping the connection", "idle_timeout", p.r.cfg.IdleTimeout)
		p.drop(fmt.Sprintf("nothing received for %v", p.r.cfg.IdleTimeout))
	default:
		var ce *wsconn.CloseError
		if errors.As(err, &ce) {
			p.log.Info("peer disconnected", "code", ce.Code, "reason", ce.Reason)
		} else {
			p.log.Info("peer connection lost", "err", err)
		}
	}
	p.close(wsconn.CloseNormal, "")
	if !p.dropped {
		if errors.Is(err, errViolation) || errors.Is(err, errClosed) {
			p.discard() // until the close reply, or closeLinger
		}
		p.linger.Stop()
		p.conn.Close()
	}
	if alreadyClosed {
		p.log.Debug("peer closed", "code", p.closeCode, "reason", p.closeReason, "dropped", p.dropped)
	}

	r, t := p.r, p.t
	r.mu.Lock()
	t.mu.Lock()
	current := t.peers[p.idx].Load() == p
	var resets []streamRef
	var other *peer
	if current {
		t.peers[p.idx].Store(nil)
		resets = t.takeStreams()
		other = t.peers[1-p.idx].Load()
	}
	t.mu.Unlock()
	delete(r.peers, p)
	r.totals.add(&p.cnt)
	r.mu.Unlock()

	// Release the output; frames still in it can no longer be delivered.
	p.flushOut()
	if other != nil {
		other.sendResets(resets)
	}
	if current {
		r.notify(t, p.mode)
	}
}
