package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/time/rate"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/wsconn"
	"github.com/sectun/sectun/wire"
)

// limiterBurst lets one full WebSocket message through at once.
const limiterBurst = wire.MaxWebSocketMessageSize

// Peer is one end of a pairing as the pairing sees it: something whole,
// already checked tunnel frames can be sent to. A local WebSocket peer is
// one; a remote end (AttachRemote), whose client is connected to another
// node and reached over a link, is another. The pairing (one per tunnel
// on this node) keeps everything else in one place for both kinds: which
// end is current (replacement), the active streams (STREAM_RESET when an
// end goes), the answers to frames for an absent end, the bandwidth
// limits and the traffic counters.
//
// The pairing never calls Send concurrently for one Peer, and never after
// Close, Abort or a failed Send.
type Peer interface {
	// Send delivers frames to the end: one or more whole tunnel frames
	// (2-byte length prefixes included), at most one WebSocket message
	// (131076 bytes), already checked by the relay that read them. It
	// blocks while the end does not accept more: that is the
	// backpressure, which stops the sender's reader. b must not be
	// modified, nor retained after Send returns. An error means the end
	// cannot take frames any more; the Peer has closed itself (or will)
	// as the error calls for, and the pairing sends it nothing more.
	Send(frames []byte) error
	// Close ends the end with a WebSocket close code and reason (a
	// local peer sends a close frame; a remote end ends its link, and
	// the other node closes its client as its own store tells it). It
	// may be called from any goroutine; only the first Close or Abort
	// counts. It returns within about a second; a Send in progress on
	// another goroutine may be cut (after 250 ms for a local peer).
	Close(code int, reason string)
	// Abort drops the end at once, as a crash would (no close frame, no
	// TLS close_notify): it never blocks, and a Send in progress fails.
	Abort()
}

// end is one end of a pairing, local or remote, as the pairing keeps it.
// A local peer and an Attachment embed one.
type end struct {
	peer  Peer
	local *peer // the WebSocket peer when the end is on this node; nil if remote
	t     *tunnel
	mode  Mode
	idx   int    // modeIndex(mode)
	epoch uint64 // Grant.Epoch or Remote.Epoch; 0: none (single node)
	log   *slog.Logger

	// closed is set when frames from and to this end must no longer be
	// relayed: replaced (under t.mu), closed, detached, a failed Send.
	closed atomic.Bool

	// wmu serializes Sends to the end: frames forwarded by the other
	// end's feeder and the messages the relay sends itself.
	wmu sync.Mutex
	cnt counters // frames from this end
}

// errDropped is a send to an end that is gone, or from one.
var errDropped = errors.New("relay: end gone")

// send delivers frames from the end from (nil: the relay's own) to e.
func (e *end) send(from *end, b []byte) error {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	return e.sendLocked(from, b)
}

func (e *end) sendLocked(from *end, b []byte) error {
	if e.closed.Load() || (from != nil && from.closed.Load()) {
		return errDropped
	}
	if err := e.peer.Send(b); err != nil {
		e.closed.Store(true)
		return err
	}
	return nil
}

// closeWith stops relaying to and from e and closes its Peer.
func (e *end) closeWith(code int, reason string) {
	e.closed.Store(true)
	e.peer.Close(code, reason)
}

// abort stops relaying to and from e and drops its Peer.
func (e *end) abort() {
	e.closed.Store(true)
	e.peer.Abort()
}

// outBuf is a FrameWriter (up to 131076 bytes) lent to sendMsgs for the
// messages the relay itself sends.
type outBuf struct {
	fw  *wire.FrameWriter
	dst *end // nil: discard what is written
	err error
}

var outBufs = sync.Pool{New: func() any {
	o := &outBuf{}
	o.fw = wire.NewFrameWriter(o, 0)
	return o
}}

func (o *outBuf) WriteMessage(b []byte) error {
	if o.dst == nil {
		return nil
	}
	return o.dst.sendLocked(nil, b)
}

// sendMsgs sends messages of the relay's own to e (after the frames
// already sent to it): STREAM_RESET and CONNECTION_RESET.
func (e *end) sendMsgs(msgs ...*wire.Message) {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	if e.closed.Load() {
		return
	}
	o := outBufs.Get().(*outBuf)
	o.dst = e
	var err error
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
	if err != nil && !errors.Is(err, errDropped) {
		e.log.Debug("sending the relay's messages failed", "err", err)
	}
}

// sendResets tells e that the streams are gone.
func (e *end) sendResets(refs []streamRef) {
	if len(refs) == 0 {
		return
	}
	msgs := make([]*wire.Message, len(refs))
	for i, s := range refs {
		msgs[i] = &wire.Message{Type: wire.TypeStreamReset, StreamID: s.id, ServiceID: s.service}
	}
	e.log.Debug("resetting the streams of the other end", "streams", len(refs))
	e.sendMsgs(msgs...)
}

// leave takes e out of its pairing if it is still the current end of its
// mode, and out of the relay: forget, run under r.mu, drops e from r's
// registry of ends, and e's counters are folded into r's totals. It returns
// whether e was current and, if so, the other end (nil if none) and the
// streams that end must get STREAM_RESET for; the caller sends those and
// notifies the pairing's watchers, outside the locks. A local peer's close
// and a remote end's Detach both end with it.
func (e *end) leave(r *Relay, forget func()) (other *end, resets []streamRef, current bool) {
	t := e.t
	r.mu.Lock()
	t.mu.Lock()
	current = t.ends[e.idx].Load() == e
	if current {
		t.ends[e.idx].Store(nil)
		resets = t.takeStreams()
		other = t.ends[1-e.idx].Load()
	}
	t.mu.Unlock()
	forget()
	r.totals.add(&e.cnt)
	r.mu.Unlock()
	return other, resets, current
}

// tunnel is the pairing of a tunnel with at least one end on this node
// (or whose last local disconnection is still being reported).
type tunnel struct {
	id       string
	services atomic.Pointer[[]string]
	// ends holds the current end of each side (index modeIndex). Written
	// under mu (and the relay's mu); read without locks on the data path.
	ends [2]atomic.Pointer[end]
	// limiters caps each direction, indexed by the sender's end; nil when
	// unlimited.
	limiters [2]*rate.Limiter

	mu sync.Mutex
	// streams maps a service ID ("" for the anonymous one) to its active
	// stream ID, as started by STREAM_START and ended by STREAM_RESET.
	streams map[string]int32
	// anon mirrors streams[""] (0: none) for a lock-free check on DATA.
	anon atomic.Int32

	notifyMu sync.Mutex
	reported [2]bool // last connected state given to PeerChanged
}

// streamRef is an active stream.
type streamRef struct {
	service string
	id      int32
}

func modeIndex(m store.Mode) int {
	switch m {
	case store.ModeSource:
		return 0
	case store.ModeDestination:
		return 1
	}
	return -1
}

func (t *tunnel) setServices(s []string) {
	if cur := t.services.Load(); cur != nil && slices.Equal(*cur, s) {
		return
	}
	s = slices.Clone(s)
	t.services.Store(&s)
}

// hasService reports whether a frame may carry service ID s: with no
// services only "", else "" (a V1 peer) or one of them.
func (t *tunnel) hasService(s string) bool {
	if s == "" {
		return true
	}
	p := t.services.Load()
	return p != nil && slices.Contains(*p, s)
}

// takeStreams returns the active streams and forgets them. t.mu is held.
func (t *tunnel) takeStreams() []streamRef {
	if len(t.streams) == 0 {
		return nil
	}
	refs := make([]streamRef, 0, len(t.streams))
	for s, id := range t.streams {
		refs = append(refs, streamRef{s, id})
	}
	slices.SortFunc(refs, func(a, b streamRef) int {
		if a.service < b.service {
			return -1
		}
		if a.service > b.service {
			return 1
		}
		return 0
	})
	clear(t.streams)
	t.anon.Store(0)
	return refs
}

// anonConflict reports a frame that names service s for stream id while id
// is the anonymous service's active stream (and not s's): a stream started
// without a service ID cannot later carry one. t.mu is held.
func (t *tunnel) anonConflict(s string, id int32) bool {
	if s == "" {
		return false
	}
	a, ok := t.streams[""]
	if !ok || a != id {
		return false
	}
	return t.streams[s] != id
}

// ruleBreak is a frame that breaks a rule only the pairing can check
// (it needs the stream state); the local reader closes its peer with it.
type ruleBreak struct {
	code   int
	reason string
}

func (e *ruleBreak) Error() string { return fmt.Sprintf("relay: %s", e.reason) }

var errAnonService = &ruleBreak{wsconn.ClosePolicyViolation, "service ID on a stream started without one"}

// route relays the tunnel frame buf[start:stop] (length prefix included),
// decoded as m, from the end from, through fw (the feeder's forwarder):
// every frame of every end, local or remote, goes through here. The frame
// has been checked (wire.Message.Validate for from's role, the tunnel's
// service IDs) by the node that read it. checked frames come from a remote
// end, whose node also applied the checks needing stream state; for
// local frames route applies them and returns a *ruleBreak.
func (t *tunnel) route(from *end, fw *forwarder, buf []byte, start, stop int, m *wire.Message, checked bool) error {
	switch m.Type {
	case wire.TypeData:
		if id := t.anon.Load(); !checked && id != 0 && id == m.StreamID && m.ServiceID != "" {
			t.mu.Lock()
			bad := t.anonConflict(m.ServiceID, m.StreamID)
			t.mu.Unlock()
			if bad {
				return errAnonService
			}
		}
	case wire.TypeStreamStart, wire.TypeStreamReset, wire.TypeConnectionStart, wire.TypeConnectionReset:
		return t.routeControl(from, fw, buf, start, stop, m, checked)
	}
	// DATA, or an unknown type marked ignorable: the other end may know it.
	dst := t.ends[1-from.idx].Load()
	if dst == nil {
		from.cnt.dropped.Add(1)
		return nil
	}
	fw.queue(dst, buf, start, stop)
	return nil
}

// routeControl relays a stream control frame, updating the stream state
// in the same critical section that picks the receiver, so that a
// replacement or departure resets exactly the streams the receiver was
// given a start of.
func (t *tunnel) routeControl(from *end, fw *forwarder, buf []byte, start, stop int, m *wire.Message, checked bool) error {
	t.mu.Lock()
	if from.closed.Load() {
		t.mu.Unlock()
		from.cnt.dropped.Add(1)
		return nil
	}
	if !checked && m.Type != wire.TypeStreamStart && t.anonConflict(m.ServiceID, m.StreamID) {
		t.mu.Unlock()
		return errAnonService
	}
	dst := t.ends[1-from.idx].Load()
	if dst == nil || dst.closed.Load() {
		t.mu.Unlock()
		from.cnt.dropped.Add(1)
		// Nobody will answer: say so rather than leave the client hanging.
		// fw's frames are for the other end: no order to keep with them.
		switch m.Type {
		case wire.TypeStreamStart:
			from.sendMsgs(&wire.Message{Type: wire.TypeStreamReset, StreamID: m.StreamID, ServiceID: m.ServiceID})
		case wire.TypeConnectionStart:
			from.sendMsgs(&wire.Message{Type: wire.TypeConnectionReset, StreamID: m.StreamID, ServiceID: m.ServiceID, ConnectionID: m.ConnectionID})
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
	fw.queue(dst, buf, start, stop)
	return nil
}

// pace makes the feeder of the end at index idx wait for n bytes of
// frames it relayed, under the tunnel's bandwidth limit (none: no wait).
func (t *tunnel) pace(ctx context.Context, idx, n int) error {
	lim := t.limiters[idx]
	for lim != nil && n > 0 {
		k := min(n, limiterBurst)
		if err := lim.WaitN(ctx, k); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// forwarder lends its feeder's buffer to the other end: a run of frames
// for one end that lie one after the other in the feeder's buffer goes out
// as one Send (one WebSocket message of at most 131076 bytes) without
// being copied. The rule that makes this safe is the forwarder's: what it
// holds aliases the feeder's buffer, so the feeder calls flush before it
// reads into that buffer again, moves bytes in it or releases it, and
// before it returns to a caller that owns the buffer (Deliver). A
// forwarder belongs to its feeder's goroutine.
type forwarder struct {
	from   *end
	to     *end   // where the held frames go; nil: none held
	buf    []byte // the held frames are buf[lo:hi]
	lo, hi int
	n      int64 // frames held
	// hold brackets a Send that may block (the local reader's keepalive
	// while it does not read); nil: none.
	hold func(bool)
}

// held reports whether frames wait for flush.
func (f *forwarder) held() bool { return f.to != nil }

// queue adds the frame buf[start:stop] for dst: it extends the held run
// when the frame follows it in the same buffer and still fits in one
// message; otherwise the run goes out first (blocking the feeder: that is
// the backpressure).
func (f *forwarder) queue(dst *end, buf []byte, start, stop int) {
	// Counted when handed on, so that the counters already include a
	// frame its receiver has read; a failed Send counts them dropped too.
	f.from.cnt.frames.Add(1)
	f.from.cnt.bytes.Add(int64(stop - start))
	if f.to == dst && f.hi == start && stop-f.lo <= wire.MaxWebSocketMessageSize && &f.buf[0] == &buf[0] {
		f.hi = stop
		f.n++
		return
	}
	f.flush()
	f.to, f.buf, f.lo, f.hi, f.n = dst, buf, start, stop, 1
}

// flush sends the held frames and releases the buffer.
func (f *forwarder) flush() {
	dst := f.to
	if dst == nil {
		return
	}
	b, n := f.buf[f.lo:f.hi], f.n
	f.to, f.buf, f.n = nil, nil, 0
	if f.hold != nil {
		f.hold(true)
	}
	err := dst.send(f.from, b)
	if f.hold != nil {
		f.hold(false)
	}
	if err != nil {
		f.from.cnt.dropped.Add(n)
	}
}
