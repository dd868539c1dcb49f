package tunnel

import (
	"sync"
	"time"

	"github.com/sectun/sectun/wire"
)

// chunkSize is the unit of connection buffers: the largest DATA payload,
// so that a full chunk is sent as one DATA message (a chunk of any other
// size would leave a small DATA for its remainder). Buffers hold pooled
// chunks only while they hold data, so an idle connection holds no buffer
// memory.
const chunkSize = wire.MaxPayloadSize

type chunk [chunkSize]byte

var chunkPool = sync.Pool{New: func() any { return new(chunk) }}

// seg is the filled part c[lo:hi] of a chunk; each chunk belongs to one
// segment.
type seg struct {
	c      *chunk
	lo, hi int
}

// bufq is a FIFO byte queue made of pooled chunks. It is not safe for
// concurrent use; Conn guards it with its mutex. Two operations let one
// side work on the memory outside the lock, without a copy through a
// buffer of its own: reserve/commit (the producer reads from a socket
// straight into the last chunk, past the queued bytes) and
// peekv/unpin (the consumer writes queued bytes to a socket, then
// discards them). reset during either drops the chunks involved instead
// of pooling them, and the gen check makes the late commit or unpin a
// no-op.
type bufq struct {
	segs []seg
	n    int    // bytes queued
	resv bool   // the last chunk past hi is being filled outside the lock
	pin  bool   // queued bytes are being read outside the lock
	gen  uint32 // incremented by reset
}

func (q *bufq) last() *seg { return &q.segs[len(q.segs)-1] }

// write appends all of p. It must not be called while a reservation is
// open.
func (q *bufq) write(p []byte) {
	for len(p) > 0 {
		if len(q.segs) == 0 || q.last().hi == chunkSize {
			q.segs = append(q.segs, seg{c: chunkPool.Get().(*chunk)})
		}
		s := q.last()
		k := copy(s.c[s.hi:], p)
		s.hi += k
		q.n += k
		p = p[k:]
	}
}

// peek returns up to max queued bytes that are contiguous in memory,
// without consuming them.
func (q *bufq) peek(max int) []byte {
	if q.n == 0 {
		return nil
	}
	s := &q.segs[0]
	b := s.c[s.lo:s.hi]
	if len(b) > max {
		b = b[:max]
	}
	return b
}

// discard consumes n bytes (n <= q.n), returning emptied chunks to the
// pool.
func (q *bufq) discard(n int) {
	q.n -= n
	for n > 0 {
		s := &q.segs[0]
		k := min(n, s.hi-s.lo)
		s.lo += k
		n -= k
		if s.lo == s.hi {
			q.popFront()
		}
	}
}

// popFront drops the first segment, which is empty, unless it is the last
// one and reserved: its chunk is being filled.
func (q *bufq) popFront() {
	if len(q.segs) == 1 && q.resv {
		return
	}
	if !q.pin {
		chunkPool.Put(q.segs[0].c)
	}
	copy(q.segs, q.segs[1:])
	q.segs[len(q.segs)-1] = seg{}
	q.segs = q.segs[:len(q.segs)-1]
}

// read moves queued bytes into p.
func (q *bufq) read(p []byte) int {
	total := 0
	for len(p) > 0 && q.n > 0 {
		b := q.peek(len(p))
		k := copy(p, b)
		q.discard(k)
		p = p[k:]
		total += k
	}
	return total
}

// reservation is space past the queued bytes handed out by reserve.
type reservation struct {
	c   *chunk
	gen uint32
}

// reserve returns free space after the queued bytes, at least minFree
// bytes (minFree <= chunkSize) or what remains of the last chunk if that
// is more, for the caller to fill outside the lock and then commit. No
// write or other reservation may happen until commit.
func (q *bufq) reserve(minFree int) ([]byte, reservation) {
	if len(q.segs) > 0 {
		if s := q.last(); s.lo == s.hi {
			s.lo, s.hi = 0, 0 // left empty by the last reservation: all free
		}
	}
	if len(q.segs) == 0 || chunkSize-q.last().hi < minFree {
		q.segs = append(q.segs, seg{c: chunkPool.Get().(*chunk)})
	}
	q.resv = true
	s := q.last()
	return s.c[s.hi:], reservation{s.c, q.gen}
}

// commit queues the first n bytes of the reserved space. It reports false
// if the queue was reset meanwhile: nothing is queued then, and the chunk
// went back to the pool.
func (q *bufq) commit(r reservation, n int) bool {
	q.resv = false
	if q.gen != r.gen {
		chunkPool.Put(r.c) // reset dropped it rather than pool it under the reader
		return false
	}
	s := q.last()
	s.hi += n
	q.n += n
	if s.lo == s.hi {
		// Nothing came and nothing waits: hold no empty chunk. (Only the
		// last segment may be empty, and only while reserved.)
		chunkPool.Put(s.c)
		*s = seg{}
		q.segs = q.segs[:len(q.segs)-1]
	}
	return true
}

// peekv returns up to max queued bytes, as slices of the chunks, into
// bufs, and pins them: until unpin, reset does not pool the chunks, so
// the caller may read them outside the lock. It returns the generation for
// unpin.
func (q *bufq) peekv(max int, bufs [][]byte) ([][]byte, uint32) {
	bufs = bufs[:0]
	for i := range q.segs {
		if max <= 0 {
			break
		}
		s := &q.segs[i]
		b := s.c[s.lo:s.hi]
		if len(b) > max {
			b = b[:max]
		}
		if len(b) > 0 {
			bufs = append(bufs, b)
			max -= len(b)
		}
	}
	q.pin = true
	return bufs, q.gen
}

// unpin ends a peekv and consumes the n bytes the caller used, unless the
// queue was reset meanwhile.
func (q *bufq) unpin(gen uint32, n int) {
	q.pin = false
	if q.gen == gen && n > 0 {
		q.discard(n)
	}
}

// reset drops everything queued. Chunks being filled (reserve) or read
// (peekv) outside the lock are left to the garbage collector or, for a
// reservation, to commit.
func (q *bufq) reset() {
	for i, s := range q.segs {
		if q.pin || (q.resv && i == len(q.segs)-1) {
			continue
		}
		chunkPool.Put(s.c)
	}
	clear(q.segs)
	q.segs = q.segs[:0]
	q.n = 0
	q.gen++
}

// deadline is a settable deadline whose wait channel is closed when it
// passes (the scheme of net.Pipe).
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	cancel chan struct{}
}

func makeDeadline() deadline { return deadline{cancel: make(chan struct{})} }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the timer fired: wait until its func has closed cancel
	}
	d.timer = nil
	closed := isClosed(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		cancel := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(cancel) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
