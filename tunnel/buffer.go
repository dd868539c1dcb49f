package tunnel

import (
	"sync"
	"time"
)

// chunkSize is the unit of connection buffers. Buffers hold pooled chunks
// only while they hold data, so an idle connection holds no buffer memory.
const chunkSize = 32 << 10

type chunk [chunkSize]byte

var chunkPool = sync.Pool{New: func() any { return new(chunk) }}

// bufq is a FIFO byte queue made of pooled chunks. It is not safe for
// concurrent use; Conn guards it with its mutex.
type bufq struct {
	chunks []*chunk
	head   int // read offset in chunks[0]
	tail   int // write offset in the last chunk
	n      int // bytes queued
}

// write appends all of p.
func (q *bufq) write(p []byte) {
	for len(p) > 0 {
		if len(q.chunks) == 0 || q.tail == chunkSize {
			q.chunks = append(q.chunks, chunkPool.Get().(*chunk))
			q.tail = 0
		}
		k := copy(q.chunks[len(q.chunks)-1][q.tail:], p)
		q.tail += k
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
	end := chunkSize
	if len(q.chunks) == 1 {
		end = q.tail
	}
	b := q.chunks[0][q.head:end]
	if len(b) > max {
		b = b[:max]
	}
	return b
}

// discard consumes n bytes (n <= q.n), returning emptied chunks to the pool.
func (q *bufq) discard(n int) {
	q.n -= n
	for n > 0 {
		end := chunkSize
		if len(q.chunks) == 1 {
			end = q.tail
		}
		k := min(n, end-q.head)
		q.head += k
		n -= k
		if q.head == end {
			q.popChunk()
		}
	}
	if q.n == 0 && len(q.chunks) > 0 {
		q.popChunk()
	}
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

func (q *bufq) popChunk() {
	chunkPool.Put(q.chunks[0])
	copy(q.chunks, q.chunks[1:])
	q.chunks[len(q.chunks)-1] = nil
	q.chunks = q.chunks[:len(q.chunks)-1]
	q.head = 0
	if len(q.chunks) == 0 {
		q.tail = 0
	}
}

// reset drops everything queued.
func (q *bufq) reset() {
	for _, c := range q.chunks {
		chunkPool.Put(c)
	}
	clear(q.chunks)
	q.chunks = q.chunks[:0]
	q.head, q.tail, q.n = 0, 0, 0
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
