package relay

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sectun/sectun/internal/wsconn"
	"github.com/sectun/sectun/wire"
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

// peer is a local end of a tunnel: a WebSocket connected to this node,
// and its reader, which feeds the pairing.
type peer struct {
	end // the pairing's record of it; end.peer and end.local are p

	r         *Relay
	tunnelID  string
	services  []string
	conn      *wsconn.Conn
	role      wire.Role
	version   int
	channelID string
	ctx       context.Context // ends when the peer is closed
	cancel    context.CancelFunc
	// wctx is the context of writes to the peer: cancelling it (wcancel)
	// cuts a write in progress (Close, after replaceGrace).
	wctx    context.Context
	wcancel context.CancelFunc
	ping    *time.Timer
	// stall pings the peer while its reader is held up (blocked writing to
	// the other peer, or throttled): see holdStart. nil without pings.
	stall *time.Timer
	held  atomic.Bool

	closeOnce   sync.Once
	closeCode   int // written in closeOnce
	closeReason string
	dropped     bool        // written in closeOnce: cut without a close frame
	linger      *time.Timer // cuts the connection after close; nil if dropped

	// Owned by the peer's own reader goroutine.
	fw        forwarder // frames of the read buffer lent to the other end
	canUnread bool      // the kernel can say what it holds (wsconn.Conn.Unread)
	ahead     int       // lower bound of the bytes readable without blocking: see readAhead
	idle      [16]byte  // the first bytes of a burst, read without a buffer
	msg       wire.Message
	consumed  int       // frame bytes read since the last bandwidth wait
	lastLive  time.Time // when the liveness count was last restarted
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
		role:      hs.Mode.Role(),
		version:   subprotocolVersion(hs.Subprotocol),
		channelID: hs.ChannelID,
	}
	p.end = end{
		mode:  hs.Mode,
		idx:   modeIndex(hs.Mode),
		epoch: g.Epoch,
		log:   r.log.With("tunnel_id", g.TunnelID, "channel_id", hs.ChannelID, "mode", hs.Mode),
	}
	p.end.peer, p.end.local = p, p
	p.fw.from = &p.end
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.wctx, p.wcancel = context.WithCancel(context.Background())
	_, err := conn.Unread()
	p.canUnread = err == nil
	if d := r.cfg.PingInterval; d > 0 {
		// Armed only once assigned: pingTick reads p.ping.
		p.ping = time.AfterFunc(math.MaxInt64, p.pingTick)
		p.ping.Reset(d)
		p.stall = time.AfterFunc(math.MaxInt64, p.stallTick)
		p.stall.Stop()
		p.fw.hold = p.hold
	}
	return p
}

// Send is Peer.Send: the frames as one WebSocket message, within
// WriteTimeout (the connection's). A failed write closes the peer.
func (p *peer) Send(b []byte) error {
	err := p.conn.WriteMessage(p.wctx, b)
	if err != nil {
		p.writeFailed(err)
	}
	return err
}

// Close is Peer.Close. A write to p still in progress after replaceGrace
// is cut: the pairing closes a peer when it is replaced (its client, which
// reconnected, has most likely abandoned the connection, whose socket may
// be full), when the tunnel is closed or when its token was rotated, and
// the other end's reader must not stay blocked on it.
func (p *peer) Close(code int, reason string) {
	t := time.AfterFunc(replaceGrace, p.wcancel)
	p.close(code, reason)
	if !p.dropped {
		t.Stop() // the close frame went out: no write was stuck
	}
}

// Abort is Peer.Abort.
func (p *peer) Abort() { p.drop("dropped") }

// replaceGrace is how long a write in progress to a peer being closed may
// still take: long enough for a message to a live peer on a slow link,
// short enough that a blackholed one holds the other end's reader
// (blocked writing to it) only briefly.
const replaceGrace = 250 * time.Millisecond

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

// hold is the forwarder's bracket around a Send to the other end.
func (p *peer) hold(on bool) {
	if on {
		p.holdStart()
	} else {
		p.holdEnd()
	}
}

func (p *peer) stallTick() {
	if !p.held.Load() || p.closed.Load() {
		return
	}
	p.conn.Ping(p.ctx)
	// A Reset racing holdEnd's Stop at worst fires once more, idle.
	if p.held.Load() {
		p.stall.Reset(stallPing)
	}
}

func (p *peer) pingTick() {
	if p.closed.Load() {
		return
	}
	p.conn.Ping(p.ctx)
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
		if err := p.conn.SendClose(code, reason); err != nil && !errors.Is(err, wsconn.ErrCloseSent) {
			// The close frame did not go out (in time): a write to a
			// peer that does not read holds the connection, or cut it.
			// There is no closing handshake to wait for, and cutting the
			// connection ends that write too.
			p.dropped = true
			p.wcancel()
			p.conn.Abort()
			return
		}
		p.linger = time.AfterFunc(closeLinger, func() { p.conn.Close(code, reason) })
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
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
	p.conn.SetReadDeadline(time.Now())
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
		p.wcancel()
		if p.ping != nil {
			p.ping.Stop()
			p.stall.Stop()
		}
		p.conn.Abort()
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
	p.conn.Close(wsconn.CloseNormal, "")
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
		p.fw.flush() // nothing may alias the buffer once released
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
		for {
			n, err := wire.SplitFrame(buf[r:w])
			if err != nil {
				return p.violation(wsconn.CloseProtocolError, "malformed tunnel frame: empty", err)
			}
			if n == 0 {
				break
			}
			end := r + n
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
	if !p.fw.held() || !p.canUnread || p.t.limiters[p.idx] != nil ||
		len(buf)-r < wire.FrameHeaderSize+wire.MaxMessageSize {
		return false
	}
	if p.ahead < readAheadMin {
		p.ahead, _ = p.conn.Unread()
	}
	return p.ahead >= readAheadMin
}

// beforeRead runs before every network read: frames waiting for the other
// end go out, and the bandwidth limit makes the reader wait for what it
// consumed, so a throttled or slow tunnel pushes back on the sender's TCP.
func (p *peer) beforeRead() error {
	lim := p.t.limiters[p.idx]
	if !p.fw.held() && (lim == nil || p.consumed == 0) {
		return nil
	}
	p.fw.flush()
	if lim != nil && p.consumed > 0 {
		n := p.consumed
		p.consumed = 0
		p.holdStart()
		defer p.holdEnd()
		return p.t.pace(p.ctx, p.idx, n)
	}
	return nil
}

// handle checks the tunnel frame buf[start:end] (length prefix included)
// from this peer and hands it to the pairing.
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
	if err := t.route(&p.end, &p.fw, buf, start, end, m, false); err != nil {
		rb := err.(*ruleBreak)
		return p.violation(rb.code, rb.reason, nil)
	}
	return nil
}

// finish detaches a peer whose reader ended: its last frames go out, the
// other end learns its streams are reset, the Authorizer that it left.
func (p *peer) finish(err error) {
	p.fw.flush()
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
		p.conn.Close(wsconn.CloseNormal, "")
	}
	if alreadyClosed {
		p.log.Debug("peer closed", "code", p.closeCode, "reason", p.closeReason, "dropped", p.dropped)
	}

	r := p.r
	other, resets, current := p.leave(r, func() { delete(r.peers, p) })
	if other != nil {
		other.sendResets(resets)
	}
	if current {
		r.notify(p.t, p.mode)
	}
}
