package tunnel

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"testing/synctest"
	"time"
)

// TestBufq checks the chunked queue against bytes.Buffer.
func TestBufq(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var q bufq
	var model bytes.Buffer
	src := make([]byte, 3*chunkSize)
	for i := range src {
		src[i] = byte(i * 7)
	}
	for i := range 20000 {
		switch op := r.IntN(4); {
		case op == 0:
			n := r.IntN(len(src))
			if r.IntN(4) == 0 {
				n = r.IntN(10)
			}
			q.write(src[:n])
			model.Write(src[:n])
		case op == 1:
			p := make([]byte, r.IntN(2*chunkSize))
			n := q.read(p)
			want := model.Next(len(p))
			if !bytes.Equal(p[:n], want) {
				t.Fatalf("op %d: read differs", i)
			}
		case op == 2:
			b := q.peek(r.IntN(chunkSize) + 1)
			if !bytes.HasPrefix(model.Bytes(), b) {
				t.Fatalf("op %d: peek differs", i)
			}
			q.discard(len(b))
			model.Next(len(b))
		case op == 3 && r.IntN(50) == 0:
			q.reset()
			model.Reset()
		}
		if q.n != model.Len() {
			t.Fatalf("op %d: n = %d, want %d", i, q.n, model.Len())
		}
		if q.n == 0 && len(q.segs) != 0 {
			t.Fatalf("op %d: empty queue holds %d chunks", i, len(q.segs))
		}
		if max := (q.n+chunkSize-1)/chunkSize + 1; len(q.segs) > max {
			t.Fatalf("op %d: %d chunks for %d bytes", i, len(q.segs), q.n)
		}
	}
}

func TestDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := makeDeadline()
		if isClosed(d.wait()) {
			t.Fatal("zero deadline expired")
		}
		d.set(time.Now().Add(time.Second))
		ch := d.wait()
		time.Sleep(999 * time.Millisecond)
		if isClosed(ch) {
			t.Fatal("expired early")
		}
		time.Sleep(2 * time.Millisecond)
		if !isClosed(ch) {
			t.Fatal("not expired")
		}
		d.set(time.Time{})
		if isClosed(d.wait()) {
			t.Fatal("cleared deadline still expired")
		}
		d.set(time.Now().Add(-time.Second))
		if !isClosed(d.wait()) {
			t.Fatal("past deadline not expired")
		}
		d.set(time.Now().Add(time.Hour))
		d.stop()
		d.set(time.Now().Add(time.Minute)) // after stop: must not block
		d.stop()
	})
}

// TestBufqOutsideLock checks reserve/commit and peekv/unpin, the
// operations that let the memory be filled or drained outside the lock,
// against bytes.Buffer, with resets in the middle of both.
func TestBufqOutsideLock(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var q bufq
	var model bytes.Buffer
	src := make([]byte, 3*chunkSize)
	for i := range src {
		src[i] = byte(i * 11)
	}
	var vec [][]byte
	for i := range 5000 {
		switch op := r.IntN(5); op {
		case 0:
			n := r.IntN(2 * chunkSize)
			q.write(src[:n])
			model.Write(src[:n])
		case 1, 2:
			b, res := q.reserve(r.IntN(chunkSize) + 1)
			if len(b) == 0 {
				t.Fatalf("op %d: empty reservation", i)
			}
			k := 0
			if r.IntN(4) != 0 { // else: the reader returned nothing
				k = copy(b[:r.IntN(len(b)+1)], src)
			}
			if r.IntN(30) == 0 {
				q.reset()
				model.Reset()
				if q.commit(res, k) {
					t.Fatalf("op %d: commit after reset", i)
				}
				break
			}
			if !q.commit(res, k) {
				t.Fatalf("op %d: commit failed", i)
			}
			model.Write(src[:k])
		case 3, 4:
			var gen uint32
			vec, gen = q.peekv(r.IntN(4*chunkSize)+1, vec)
			var got []byte
			for _, b := range vec {
				got = append(got, b...)
			}
			if !bytes.HasPrefix(model.Bytes(), got) {
				t.Fatalf("op %d: peekv differs", i)
			}
			n := r.IntN(len(got) + 1)
			if r.IntN(30) == 0 {
				q.reset()
				model.Reset()
			} else {
				model.Next(n)
			}
			q.unpin(gen, n)
		}
		if q.n != model.Len() {
			t.Fatalf("op %d: n = %d, want %d", i, q.n, model.Len())
		}
		if q.n == 0 && len(q.segs) != 0 {
			t.Fatalf("op %d: empty queue holds %d chunks", i, len(q.segs))
		}
		if q.resv || q.pin {
			t.Fatalf("op %d: left reserved or pinned", i)
		}
		sum := 0
		for j, sg := range q.segs {
			if sg.lo == sg.hi {
				t.Fatalf("op %d: segment %d of %d is empty", i, j, len(q.segs))
			}
			sum += sg.hi - sg.lo
		}
		if sum != q.n {
			t.Fatalf("op %d: segments hold %d bytes, n = %d", i, sum, q.n)
		}
	}
}
