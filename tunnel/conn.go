package tunnel

import (
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"
)

// Conn is one tunneled connection: a net.Conn carrying the bytes of one TCP
// connection between the source and the destination. It is safe for
// concurrent use.
//
// Write copies into a bounded send buffer (Config.SendBuffer) and blocks
// while it is full; the session sends it in the background. Read takes from
// a bounded receive buffer (Config.ReceiveBuffer). Deadlines fail with an
// error satisfying os.ErrDeadlineExceeded (a net.Error whose Timeout is
// true); use after Close fails with net.ErrClosed.
//
// The protocol has no half-close: Close sends whatever Write has buffered
// and then resets the connection (CONNECTION_RESET on V3, STREAM_RESET on
// V1/V2), after which the peer sees end of file. When the peer closes, Read
// returns the data already received and then io.EOF, and Write fails with
// an error wrapping ErrStreamReset. When the session loses its WebSocket,
// Read returns the data already received and then an error wrapping
// ErrDisconnected.
type Conn struct {
	s        *Session
	l        *link
	st       *stream // guarded by s.mu
	id       uint32  // connection ID: 1 for the first of a stream
	service  string
	streamID int32

	// rmu serializes Read and WriteTo, wmu Write and ReadFrom: WriteTo
	// and ReadFrom work on the buffers outside mu.
	rmu, wmu sync.Mutex

	mu       sync.Mutex
	rq, sq   bufq
	rerr     error // returned by Read once rq is empty
	werr     error // returned by Write
	closed   bool  // Close was called
	closing  bool  // after Close: flush sq, then send the reset
	gone     bool  // unregistered: nothing more will be sent or received
	queued   bool  // in the link's ready list
	gotData  bool
	sentData bool
	dwait    bool // the link's reader waits for room in rq
	silent   *time.Timer
	reason   error // see ResetReason

	// The V1 retry (source; see Config.V1Retry).
	replayOn     bool        // keep a copy of what is sent, for a retry
	replay       []byte      // what was sent so far, at most maxReplay
	retryTimer   *time.Timer // fires the retry
	probeID      int32       // the retry's stream ID while it runs, else 0
	probePending bool        // the writer has yet to start the retry
	restart      bool        // the writer has to start the connection again on its stream, in V1 framing

	rwake, wwake, dwake chan struct{} // 1-buffered wake-ups for readers, writers, the link reader
	rdl, wdl            deadline
}

func newConn(s *Session, l *link, st *stream, id uint32) *Conn {
	return &Conn{
		s: s, l: l, st: st, id: id, service: st.service, streamID: st.id,
		rwake: make(chan struct{}, 1), wwake: make(chan struct{}, 1), dwake: make(chan struct{}, 1),
		rdl: makeDeadline(), wdl: makeDeadline(),
	}
}

// ServiceID returns the service the connection belongs to ("" on V1).
func (c *Conn) ServiceID() string { return c.service }

// StreamID returns the protocol stream ID carrying the connection.
func (c *Conn) StreamID() int32 { return c.streamID }

// ConnectionID returns the connection's ID within its stream (1 for the
// first; also 1 on V1/V2, which have no connection IDs on the wire).
func (c *Conn) ConnectionID() uint32 { return c.id }

// Addr is the address of a Conn: where it sits in the tunnel.
type Addr struct {
	ServiceID    string
	StreamID     int32
	ConnectionID uint32
}

// Network returns "sectun".
func (a Addr) Network() string { return "sectun" }

func (a Addr) String() string {
	return a.ServiceID + "/" + strconv.Itoa(int(a.StreamID)) + "/" + strconv.FormatUint(uint64(a.ConnectionID), 10)
}

// LocalAddr returns the connection's Addr.
func (c *Conn) LocalAddr() net.Addr { return Addr{c.service, c.streamID, c.id} }

// RemoteAddr returns the connection's Addr, the same on both ends.
func (c *Conn) RemoteAddr() net.Addr { return c.LocalAddr() }

// Read reads received data. See Conn for what it returns at the end.
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return 0, net.ErrClosed
		}
		dl := c.rdl.wait()
		if isClosed(dl) {
			c.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		if c.rq.n > 0 {
			n := c.rq.read(p)
			wakeReader := c.dwait
			c.dwait = false
			more := c.rq.n > 0 || c.rerr != nil
			c.mu.Unlock()
			if wakeReader {
				signal(c.dwake)
			}
			if more {
				signal(c.rwake) // pass the turn to a concurrent reader
			}
			return n, nil
		}
		if c.rerr != nil {
			err := c.rerr
			c.mu.Unlock()
			signal(c.rwake)
			return 0, err
		}
		if len(p) == 0 {
			c.mu.Unlock()
			return 0, nil
		}
		c.mu.Unlock()
		select {
		case <-c.rwake:
		case <-dl:
		}
	}
}

// Write queues p for sending, blocking while the send buffer is full.
// Concurrent writes do not interleave.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	total := 0
	for {
		c.mu.Lock()
		dl, err := c.writableLocked()
		if err != nil {
			return total, err
		}
		if len(p) == 0 {
			c.mu.Unlock()
			return total, nil
		}
		if room := c.s.cfg.SendBuffer - c.sq.n; room > 0 {
			n := min(room, len(p))
			c.sq.write(p[:n])
			p = p[n:]
			total += n
			push := !c.queued
			c.queued = true
			c.mu.Unlock()
			if push {
				c.l.pushReady(c)
			}
			if len(p) == 0 {
				return total, nil
			}
			continue
		}
		c.mu.Unlock()
		select {
		case <-c.wwake:
		case <-dl:
		}
	}
}

// writableLocked, called with c.mu held, returns the write deadline's
// channel, or why nothing more can be queued: the Conn is closed, the
// session failed to write (passed on to the next waiting writer too), or
// the deadline passed. On error it has released c.mu.
func (c *Conn) writableLocked() (<-chan struct{}, error) {
	if c.closed {
		c.mu.Unlock()
		return nil, net.ErrClosed
	}
	if err := c.werr; err != nil {
		c.mu.Unlock()
		signal(c.wwake)
		return nil, err
	}
	dl := c.wdl.wait()
	if isClosed(dl) {
		c.mu.Unlock()
		return nil, os.ErrDeadlineExceeded
	}
	return dl, nil
}

// writeToMax bounds the bytes WriteTo hands to one Write call.
const writeToMax = 4 * chunkSize

// WriteTo writes received data to w until the connection ends, without a
// copy through a buffer of its own: it implements io.WriterTo, which
// io.Copy uses. It returns nil at the peer's end of file, else what Read
// would return (the read deadline applies to the wait for data, not to w)
// or w's error. Received data is consumed only once w took it. WriteTo
// and Read exclude each other.
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	var total int64
	var vec [][]byte
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return total, net.ErrClosed
		}
		dl := c.rdl.wait()
		if isClosed(dl) {
			c.mu.Unlock()
			return total, os.ErrDeadlineExceeded
		}
		if c.rq.n > 0 {
			var gen uint32
			vec, gen = c.rq.peekv(writeToMax, vec)
			c.mu.Unlock()
			var n int
			var err error
			for _, b := range vec {
				var k int
				k, err = w.Write(b)
				n += k
				if err != nil {
					break
				}
			}
			c.mu.Lock()
			c.rq.unpin(gen, n)
			wakeReader := c.dwait
			c.dwait = false
			c.mu.Unlock()
			if wakeReader {
				signal(c.dwake)
			}
			total += int64(n)
			if err != nil {
				return total, err
			}
			continue
		}
		if err := c.rerr; err != nil {
			c.mu.Unlock()
			signal(c.rwake)
			if err == io.EOF {
				err = nil
			}
			return total, err
		}
		c.mu.Unlock()
		select {
		case <-c.rwake:
		case <-dl:
		}
	}
}

// readFromMin is the least free space ReadFrom reads into: less would
// mean more, smaller reads.
const readFromMin = 8 << 10

// ReadFrom reads from r until io.EOF or an error and queues the data for
// sending, reading straight into the send buffer rather than through a
// buffer of its own: it implements io.ReaderFrom, which io.Copy uses. It
// blocks while the send buffer is full (the write deadline applies to that
// wait, not to r). It returns nil at r's EOF, r's other errors, or what
// Write would return. Data read after the connection ended is dropped. A
// Close or reset while ReadFrom waits for room ends it at once; while it
// waits in r.Read, when that Read returns (close r or set a deadline on
// it to end it sooner). ReadFrom and Write exclude each other.
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	var total int64
	want := min(readFromMin, c.s.cfg.SendBuffer)
	for {
		c.mu.Lock()
		dl, err := c.writableLocked()
		if err != nil {
			return total, err
		}
		room := c.s.cfg.SendBuffer - c.sq.n
		if room < want {
			c.mu.Unlock()
			select {
			case <-c.wwake:
			case <-dl:
			}
			continue
		}
		b, res := c.sq.reserve(min(want, chunkSize))
		c.mu.Unlock()
		n, rerr := r.Read(b[:min(len(b), room)])
		c.mu.Lock()
		ok := c.sq.commit(res, n)
		if ok && c.gone {
			// Terminated, or closed and its reset already sent while r
			// was read: nothing more goes out.
			c.sq.reset()
			ok = false
		}
		push := false
		if ok && n > 0 {
			total += int64(n)
			push = !c.queued
			c.queued = true
		}
		c.mu.Unlock()
		if push {
			c.l.pushReady(c)
		}
		if rerr != nil {
			if rerr == io.EOF {
				rerr = nil
			}
			return total, rerr
		}
	}
}

// Close closes the connection: buffered writes are still sent, then the
// peer is told (see Conn). It never blocks and is idempotent.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.rq.reset()
	push := false
	if !c.gone {
		c.closing = true
		push = !c.queued
		c.queued = true
	} else {
		c.sq.reset()
	}
	c.stopSilentLocked()
	c.mu.Unlock()
	c.rdl.stop()
	c.wdl.stop()
	signal(c.rwake)
	signal(c.wwake)
	signal(c.dwake)
	if push {
		c.l.pushReady(c)
	}
	return nil
}

// Reject (destination) reports that the local service could not be
// reached: the peer gets STREAM_RESET, as from the reference local proxy,
// or CONNECTION_RESET when other connections of the stream are open (so
// that they survive). Pending data is dropped. The Conn is closed.
func (c *Conn) Reject() error {
	c.s.reject(c)
	return c.Close()
}

// SetDeadline sets both the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.rdl.set(t)
	c.wdl.set(t)
	return nil
}

// SetReadDeadline sets the deadline for Read calls, pending ones included.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.rdl.set(t)
	return nil
}

// SetWriteDeadline sets the deadline for Write calls, pending ones included.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.wdl.set(t)
	return nil
}

// terminate ends the connection from the session's side: nothing more
// will be sent; Read returns what is buffered and then rerr, Write werr. It
// reports whether the connection was still live.
func (c *Conn) terminate(rerr, werr error) bool {
	c.mu.Lock()
	if c.gone {
		c.mu.Unlock()
		return false
	}
	c.gone = true
	if c.rerr == nil {
		c.rerr = rerr
	}
	if c.werr == nil {
		c.werr = werr
	}
	c.sq.reset()
	c.stopSilentLocked()
	c.mu.Unlock()
	signal(c.rwake)
	signal(c.wwake)
	signal(c.dwake)
	return true
}

func (c *Conn) stopSilentLocked() {
	if c.silent != nil {
		c.silent.Stop()
		c.silent = nil
	}
	if c.retryTimer != nil {
		c.retryTimer.Stop()
		c.retryTimer = nil
	}
	c.replayOn, c.replay = false, nil
}

// ResetReason (source) tells why the destination ended the connection
// before any reply, when the messages tell: ErrPeerNotConnected,
// ErrServiceRefused or ErrResetBeforeReply (all wrap ErrStreamReset). It
// is nil while the connection is open, after a local close, and after a
// reset that followed a reply. Read still returns io.EOF at such a reset.
func (c *Conn) ResetReason() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reason
}

// buffered returns the bytes held in the receive and send buffers.
func (c *Conn) buffered() (recv, send int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rq.n, c.sq.n
}
