package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/sectun/sectun/internal/wsconn"
	"github.com/sectun/sectun/wire"
)

// link is one WebSocket connection of a session with its reader and writer
// goroutines. The session replaces it after a loss.
type link struct {
	s         *Session
	ws        *wsconn.Conn
	version   int // negotiated protocol version
	channelID string
	log       *slog.Logger
	live      time.Duration // liveness timeout
	started   time.Time

	// Writer queues. mu is a leaf lock: nothing else is taken under it.
	mu    sync.Mutex
	ctrl  []wire.Message // control messages, sent before any DATA
	ready []*Conn        // connections with something to send, round-robin
	wake  chan struct{}

	readyCh   chan struct{} // closed once the link may be used (SERVICE_IDS seen, or V1)
	readyOnce sync.Once

	done     chan struct{} // closed when the link is dead
	failOnce sync.Once
	err      error // why it died; set before done is closed

	deactivated chan struct{} // closed once the session has failed the link's conns

	stall *time.Timer // reader goroutine only
	wg    sync.WaitGroup
}

func newLink(s *Session, ws *wsconn.Conn, version int, channelID string) *link {
	l := &link{
		s: s, ws: ws, version: version, channelID: channelID,
		log:     s.log.With("channel_id", channelID),
		live:    2 * s.cfg.KeepaliveInterval,
		started: time.Now(),
		wake:    make(chan struct{}, 1),
		readyCh: make(chan struct{}),
		done:    make(chan struct{}),

		deactivated: make(chan struct{}),
	}
	if version < 2 {
		l.markReady() // V1 has no SERVICE_IDS
	}
	return l
}

func (l *link) start() {
	l.ws.SetLiveness(l.live)
	l.stall = time.NewTimer(time.Hour)
	l.stall.Stop()
	l.wg.Add(2)
	go l.readLoop()
	go l.writeLoop()
}

func (l *link) markReady() { l.readyOnce.Do(func() { close(l.readyCh) }) }

// fail kills the link at once (no close frame): the socket is closed, which
// unblocks both goroutines.
func (l *link) fail(err error) {
	l.failOnce.Do(func() {
		l.err = err
		close(l.done)
		l.ws.Abort()
	})
}

// shutdown ends the link politely with a normal close frame.
func (l *link) shutdown(err error) {
	l.failOnce.Do(func() {
		l.err = err
		close(l.done)
		l.ws.Close(wsconn.CloseNormal, "")
	})
}

func (l *link) wait() { l.wg.Wait() }

func (l *link) pushCtrl(m wire.Message) {
	l.mu.Lock()
	l.ctrl = append(l.ctrl, m)
	l.mu.Unlock()
	signal(l.wake)
}

func (l *link) pushReady(c *Conn) {
	l.mu.Lock()
	l.ready = append(l.ready, c)
	l.mu.Unlock()
	signal(l.wake)
}

// readLoop decodes tunnel frames and dispatches them. Delivering DATA may
// block on a full receive buffer: that is the head-of-line policy.
func (l *link) readLoop() {
	defer l.wg.Done()
	fr := wire.NewFrameReader(l.ws)
	for {
		m, err := fr.Next()
		if err != nil {
			l.fail(l.readErr(err))
			return
		}
		if err := m.Validate(wire.RoleService); err != nil {
			// A message no honest service sends (stream ID 0, SERVICE_IDS
			// rules, an unknown type that is not ignorable, ...): tell
			// the service why and start afresh, as after a malformed frame.
			l.log.Warn("invalid message from the service; reconnecting", "msg", m.String(), "err", err)
			l.ws.Close(wsconn.ClosePolicyViolation, err.Error())
			l.fail(fmt.Errorf("%w: %w", ErrDisconnected, err))
			return
		}
		if err := l.s.handle(l, m); err != nil {
			l.fail(err)
			return
		}
	}
}

// readErr classifies why reading stopped.
func (l *link) readErr(err error) error {
	select {
	case <-l.done:
		return l.err // we closed it
	default:
	}
	var ce *wsconn.CloseError
	if errors.As(err, &ce) {
		return closeError(ce)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w: nothing received for %v (keepalive)", ErrDisconnected, l.live)
	}
	if errors.Is(err, wire.ErrMalformed) || errors.Is(err, wire.ErrTooLarge) {
		l.ws.Close(wsconn.CloseProtocolError, "malformed tunnel frame")
	}
	return fmt.Errorf("%w: %w", ErrDisconnected, err)
}

// deliver copies a DATA payload into c's receive buffer, waiting for room.
// A connection that stays full for StallTimeout is reset.
func (l *link) deliver(c *Conn, p []byte) {
	blocked := false
	for len(p) > 0 {
		c.mu.Lock()
		if c.closed || c.gone {
			c.mu.Unlock()
			break
		}
		if !c.gotData {
			c.gotData = true
			c.stopSilentLocked()
		}
		if room := l.s.cfg.ReceiveBuffer - c.rq.n; room > 0 {
			n := min(room, len(p))
			c.rq.write(p[:n])
			p = p[n:]
			c.mu.Unlock()
			signal(c.rwake)
			continue
		}
		c.dwait = true
		c.mu.Unlock()
		blocked = true
		var stall <-chan time.Time
		if l.s.cfg.StallTimeout > 0 {
			l.stall.Reset(l.s.cfg.StallTimeout)
			stall = l.stall.C
		}
		select {
		case <-c.dwake:
		case <-l.done:
			p = nil
		case <-stall:
			l.s.stalled(c)
			p = nil
		}
	}
	if blocked {
		l.stall.Stop()
		// We have not read the WebSocket meanwhile: pongs may be waiting.
		l.ws.SetLiveness(l.live)
	}
}

// writeLoop sends control messages first, then one DATA message per ready
// connection in turn, coalescing frames into WebSocket messages and
// flushing whenever nothing more is ready. It also sends the pings.
func (l *link) writeLoop() {
	defer l.wg.Done()
	fw := wire.NewFrameWriter(l.ws.Writer(context.Background()), 0)
	tick := time.NewTicker(l.s.cfg.KeepaliveInterval)
	defer tick.Stop()
	if err := l.ws.Ping(context.Background()); err != nil {
		l.fail(fmt.Errorf("%w: %w", ErrDisconnected, err))
		return
	}
	var batch []*Conn
	var ctrl []wire.Message
	for {
		var n int
		var err error
		batch, ctrl, n, err = l.drain(fw, batch, ctrl)
		if err == nil {
			select {
			case <-tick.C: // keep pinging under load too
				err = l.ws.Ping(context.Background())
			default:
			}
		}
		if err == nil && n == 0 {
			err = fw.Flush()
		}
		if err != nil {
			l.fail(fmt.Errorf("%w: %w", ErrDisconnected, err))
			return
		}
		if n > 0 {
			continue
		}
		select {
		case <-l.wake:
		case <-tick.C:
			if err := l.ws.Ping(context.Background()); err != nil {
				l.fail(fmt.Errorf("%w: %w", ErrDisconnected, err))
				return
			}
		case <-l.done:
			return
		}
	}
}

// drain does one round: every ready connection gets one DATA message,
// with pending control messages sent before each. It returns the number of
// messages written and the slices for reuse.
func (l *link) drain(fw *wire.FrameWriter, batch []*Conn, ctrl []wire.Message) ([]*Conn, []wire.Message, int, error) {
	l.mu.Lock()
	batch, l.ready = l.ready, batch[:0]
	l.mu.Unlock()
	n := 0
	var err error
	for i, c := range batch {
		batch[i] = nil
		if err != nil {
			continue
		}
		var k int
		if ctrl, k, err = l.writeCtrl(fw, ctrl); err != nil {
			continue
		}
		n += k
		var sent bool
		if sent, err = l.writeConn(fw, c); sent {
			n++
		}
	}
	if err == nil {
		var k int
		ctrl, k, err = l.writeCtrl(fw, ctrl)
		n += k
	}
	return batch[:0], ctrl, n, err
}

func (l *link) writeCtrl(fw *wire.FrameWriter, ctrl []wire.Message) ([]wire.Message, int, error) {
	l.mu.Lock()
	if len(l.ctrl) == 0 {
		l.mu.Unlock()
		return ctrl, 0, nil
	}
	ctrl, l.ctrl = l.ctrl, ctrl[:0]
	l.mu.Unlock()
	for i := range ctrl {
		if err := fw.Write(&ctrl[i]); err != nil {
			return ctrl[:0], 0, err
		}
		l.log.Debug("sent", "msg", ctrl[i].String())
	}
	n := len(ctrl)
	clear(ctrl)
	return ctrl[:0], n, nil
}

// frameOverhead bounds the bytes a DATA frame adds to its payload besides
// the service ID: length prefix, type, stream ID (a negative one takes ten
// bytes), payload tag and length, service ID tag and length, connection ID.
const frameOverhead = wire.FrameHeaderSize + 2 + 11 + 4 + 3 + 6

// writeConn sends one DATA message of c, or its final reset.
func (l *link) writeConn(fw *wire.FrameWriter, c *Conn) (bool, error) {
	s := l.s
	s.mu.Lock()
	st := c.st
	m := wire.Message{Type: wire.TypeData, StreamID: st.id, ServiceID: st.wireSvc}
	if st.connIDs {
		m.ConnectionID = c.id
	}
	probeID := st.probeID
	s.mu.Unlock()
	probeSent := false
	if restarted, err := l.restartConn(fw, c, m.StreamID); err != nil {
		return false, err
	} else if restarted {
		probeSent = true
	}
	if probeID != 0 {
		var err error
		if probeSent, err = l.startProbe(fw, c, probeID); err != nil {
			return false, err
		}
	}
	// A DATA message is never cut short to fill the end of a WebSocket
	// message: the message goes first. Cut, it would leave the rest of
	// its chunk for a small DATA of its own, and every later DATA of a
	// bulk transfer would straddle two chunks and split too.
	overhead := frameOverhead + len(m.ServiceID)
	c.mu.Lock()
	whole := min(c.sq.n, s.cfg.MaxDataSize)
	c.mu.Unlock()
	if fw.Available() < overhead+whole {
		if err := fw.Flush(); err != nil {
			return false, err
		}
	}
	c.mu.Lock()
	if c.gone {
		c.queued = false
		c.mu.Unlock()
		return probeSent, nil
	}
	if c.probeID != probeID {
		// The V1 retry started, ended or took over since st was read:
		// m may name the wrong stream. Try again.
		c.mu.Unlock()
		l.pushReady(c)
		return probeSent, nil
	}
	if c.sq.n > 0 {
		m.Payload = c.sq.peek(min(s.cfg.MaxDataSize, fw.Available()-overhead))
		err := fw.Write(&m) // fits: no flush under the lock
		var dup []byte
		if c.probeID != 0 && !c.probePending {
			dup = append(dup, m.Payload...) // the V1 retry gets it too
		}
		if c.replayOn {
			if len(c.replay)+len(m.Payload) > maxReplay {
				c.replayOn, c.replay = false, nil // too much to replay: no retry
				if c.retryTimer != nil {
					c.retryTimer.Stop()
					c.retryTimer = nil
				}
			} else {
				c.replay = append(c.replay, m.Payload...)
			}
		}
		c.sq.discard(len(m.Payload))
		first := !c.sentData
		c.sentData = true
		requeue := c.sq.n > 0 || c.closing
		c.queued = requeue
		if first && !c.gotData && s.watchSilence() {
			c.silent = time.AfterFunc(s.cfg.NoReplyWarning, func() { s.silent(c) })
		}
		probe := c.probeID
		c.mu.Unlock()
		signal(c.wwake)
		if requeue {
			l.pushReady(c)
		}
		if err == nil && dup != nil {
			err = fw.Write(&wire.Message{Type: wire.TypeData, StreamID: probe, Payload: dup})
		}
		return true, err
	}
	if !c.closing {
		c.queued = false
		c.mu.Unlock()
		return probeSent, nil
	}
	c.gone = true
	c.queued = false
	c.mu.Unlock()
	streamReset := s.finishLocalClose(c)
	m.Payload = nil
	if streamReset {
		m.Type, m.ConnectionID = wire.TypeStreamReset, 0
	} else {
		m.Type = wire.TypeConnectionReset
	}
	l.log.Debug("sent", "msg", m.String())
	return true, fw.Write(&m)
}

// startProbe writes the start of c's V1 retry if it is pending: a
// STREAM_START without service ID and the data sent so far, in V1
// framing. It reports whether it wrote anything.
func (l *link) startProbe(fw *wire.FrameWriter, c *Conn, id int32) (bool, error) {
	c.mu.Lock()
	if !c.probePending || c.probeID != id || c.gone {
		c.mu.Unlock()
		return false, nil
	}
	c.probePending = false
	replay := slices.Clone(c.replay) // kept: the retry may need starting again
	c.mu.Unlock()
	if err := l.writeV1Start(fw, id, replay); err != nil {
		return true, err
	}
	l.log.Debug("sent the V1 retry", "stream_id", id)
	return true, nil
}

// writeV1Start writes a STREAM_START without service ID for stream id and
// then replay, the data sent so far, in DATA messages of at most
// MaxDataSize bytes: the start of a connection in V1 framing.
func (l *link) writeV1Start(fw *wire.FrameWriter, id int32, replay []byte) error {
	if err := fw.Write(&wire.Message{Type: wire.TypeStreamStart, StreamID: id}); err != nil {
		return err
	}
	for len(replay) > 0 {
		n := min(len(replay), l.s.cfg.MaxDataSize)
		if err := fw.Write(&wire.Message{Type: wire.TypeData, StreamID: id, Payload: replay[:n]}); err != nil {
			return err
		}
		replay = replay[n:]
	}
	return nil
}

// restartConn writes a pending restart of c (see Session.rehomeLocked): a
// STREAM_START without service ID for stream id and the data sent so far.
func (l *link) restartConn(fw *wire.FrameWriter, c *Conn, id int32) (bool, error) {
	c.mu.Lock()
	if !c.restart || c.gone {
		c.mu.Unlock()
		return false, nil
	}
	c.restart = false
	replay := slices.Clone(c.replay)
	c.mu.Unlock()
	if err := l.writeV1Start(fw, id, replay); err != nil {
		return true, err
	}
	l.log.Debug("started the connection again in V1 framing", "stream_id", id)
	return true, nil
}

// closeError classifies a close frame from the service: going away,
// restarting or overloaded are worth a reconnect, and so is a protocol
// error (a fresh start is the best cure); anything else, a normal closure
// in particular, means the tunnel is closed.
func closeError(ce *wsconn.CloseError) error {
	switch ce.Code {
	case 1006: // no close frame at all: the connection dropped
		return fmt.Errorf("%w: %s", ErrDisconnected, ce.Reason)
	case wsconn.CloseGoingAway, wsconn.CloseInternalError, wsconn.CloseTryAgainLater, 1012 /* service restart */ :
		return fmt.Errorf("%w: the service closed the connection: %d %s", ErrDisconnected, ce.Code, ce.Reason)
	case wsconn.CloseProtocolError, wsconn.CloseUnsupportedData, wsconn.CloseMessageTooBig:
		return fmt.Errorf("%w: the service reported a protocol error: %d %s", ErrDisconnected, ce.Code, ce.Reason)
	}
	return fmt.Errorf("%w (close %d %s)", ErrTunnelClosed, ce.Code, ce.Reason)
}
