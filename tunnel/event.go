package tunnel

import (
	"log/slog"
	"sync"
	"time"
)

// Event is something that happened to a Session, passed to Config.OnEvent.
// It is one of the types below.
type Event interface{ event() }

// Connected: a WebSocket to the service is up and ready (after SERVICE_IDS
// on V2/V3). Reconnect is true for all but the session's first.
type Connected struct {
	Services  []string // the tunnel's service IDs; nil if not announced
	Version   int      // negotiated protocol version, 1 to 3
	ChannelID string   // the service's id for this WebSocket, for support requests
	Reconnect bool
}

// Disconnected: the WebSocket was lost; every open Conn failed with Err.
type Disconnected struct{ Err error }

// Reconnecting: the session waits Delay before connection attempt Attempt
// (1 = the first attempt after the loss). Err is the previous failure.
type Reconnecting struct {
	Attempt int
	Delay   time.Duration
	Err     error
}

// StreamStarted: a stream started (STREAM_START), locally by Dial or by the
// peer (Remote). ConnectionID is 1 on V3 and 0 for V1/V2 streams.
type StreamStarted struct {
	ServiceID    string
	StreamID     int32
	ConnectionID uint32
	Remote       bool
}

// ConnectionStarted: a further connection of an active stream started
// (CONNECTION_START, V3).
type ConnectionStarted struct {
	ServiceID    string
	StreamID     int32
	ConnectionID uint32
	Remote       bool
}

// StreamReset: a stream ended (STREAM_RESET), sent by this end or received
// from the peer (Remote).
type StreamReset struct {
	ServiceID string
	StreamID  int32
	Remote    bool
}

// ConnectionReset: one connection ended (CONNECTION_RESET).
type ConnectionReset struct {
	ServiceID    string
	StreamID     int32
	ConnectionID uint32
	Remote       bool
}

// SessionReset: the service reset every stream (SESSION_RESET).
type SessionReset struct{}

// PeerVersionDetected (source): the destination's replies show it speaks an
// older protocol version; the session now speaks it too. Set
// Config.PeerVersion to Version to skip detection.
type PeerVersionDetected struct {
	ServiceID string
	Version   int
}

// PeerSilent (source): a new connection sent data and got nothing back for
// After. Reported once per session: it often means a V1/V2 destination.
type PeerSilent struct {
	ServiceID string
	StreamID  int32
	After     time.Duration
}

// DestinationStatus (source): what the session learned about the
// destination's presence: Connected when it answered (data or a
// connection reset), not Connected when the service reset a connection in
// the way it does for a missing destination, or all streams when it left.
type DestinationStatus struct{ Connected bool }

// Stopped: the session ended for good (Close, 4xx refusal, tunnel closed,
// attempts exhausted). Err is what Session.Err returns. It is the last event.
type Stopped struct{ Err error }

func (Connected) event()           {}
func (Disconnected) event()        {}
func (Reconnecting) event()        {}
func (StreamStarted) event()       {}
func (ConnectionStarted) event()   {}
func (StreamReset) event()         {}
func (ConnectionReset) event()     {}
func (SessionReset) event()        {}
func (PeerVersionDetected) event() {}
func (PeerSilent) event()          {}
func (Stopped) event()             {}
func (DestinationStatus) event()   {}

const maxQueuedEvents = 1024

// eventQueue delivers events to a callback from one goroutine, in order,
// without ever blocking the sender: it is bounded and drops beyond
// maxQueuedEvents.
type eventQueue struct {
	fn      func(Event)
	log     *slog.Logger
	mu      sync.Mutex
	q       []Event
	closed  bool
	dropped int
	wake    chan struct{}
	done    chan struct{}
}

func newEventQueue(fn func(Event), log *slog.Logger) *eventQueue {
	e := &eventQueue{fn: fn, log: log, wake: make(chan struct{}, 1), done: make(chan struct{})}
	if fn == nil {
		close(e.done)
		return e
	}
	go e.run()
	return e
}

func (e *eventQueue) emit(ev Event) {
	if e.fn == nil {
		return
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	if len(e.q) >= maxQueuedEvents {
		e.dropped++
		e.mu.Unlock()
		return
	}
	e.q = append(e.q, ev)
	e.mu.Unlock()
	signal(e.wake)
}

func (e *eventQueue) run() {
	defer close(e.done)
	var batch []Event
	for {
		e.mu.Lock()
		batch, e.q = e.q, batch[:0]
		closed, dropped := e.closed, e.dropped
		e.dropped = 0
		e.mu.Unlock()
		if dropped > 0 {
			e.log.Warn("events dropped: OnEvent is too slow", "dropped", dropped)
		}
		for i, ev := range batch {
			e.fn(ev)
			batch[i] = nil
		}
		if len(batch) == 0 && closed {
			return
		}
		if len(batch) == 0 {
			<-e.wake
		}
	}
}

// close delivers what is queued and waits for the callback goroutine.
func (e *eventQueue) close() {
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	signal(e.wake)
	<-e.done
}

// signal does a non-blocking send on a 1-buffered channel.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
