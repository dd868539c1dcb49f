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
		if q.n == 0 && len(q.chunks) != 0 {
			t.Fatalf("op %d: empty queue holds %d chunks", i, len(q.chunks))
		}
		if max := (q.n+chunkSize-1)/chunkSize + 1; len(q.chunks) > max {
			t.Fatalf("op %d: %d chunks for %d bytes", i, len(q.chunks), q.n)
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
