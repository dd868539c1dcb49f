package tunnel

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/sectun/sectun/tunnel/internal/fakeservice"
)

var errEnough = errors.New("enough")

// collector takes want bytes, then fails every Write with errEnough.
type collector struct {
	buf  bytes.Buffer
	want int
}

func (c *collector) Write(p []byte) (int, error) {
	if room := c.want - c.buf.Len(); len(p) >= room {
		c.buf.Write(p[:room])
		return room, errEnough
	}
	return c.buf.Write(p)
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

// TestReadFromWriteTo moves data both ways at once with ReadFrom (from
// readers returning odd sizes) and WriteTo, and checks every byte; a
// failing writer stops WriteTo with its error and consumes only what it
// took; WriteTo reports the peer's end as nil.
func TestReadFromWriteTo(t *testing.T) {
	_, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, nil)
	a, b := dialAccept(t, src, dst, "SSH1")
	up, down := randBytes(1, 3<<20+17), randBytes(2, 2<<20+5)
	type res struct {
		got []byte
		n   int64
		err error
	}
	recv := func(c *Conn, want int, ch chan<- res) {
		w := &collector{want: want}
		c.SetReadDeadline(time.Now().Add(testTimeout))
		n, err := c.WriteTo(w)
		ch <- res{w.buf.Bytes(), n, err}
	}
	gotUp, gotDown := make(chan res, 1), make(chan res, 1)
	go recv(b, len(up)-1000, gotUp) // stops 1000 bytes short
	go recv(a, len(down), gotDown)
	var wg sync.WaitGroup
	send := func(c *Conn, p []byte, r io.Reader) {
		defer wg.Done()
		c.SetWriteDeadline(time.Now().Add(testTimeout))
		n, err := c.ReadFrom(r)
		if err != nil || n != int64(len(p)) {
			t.Errorf("ReadFrom: %d of %d bytes, %v", n, len(p), err)
		}
	}
	wg.Add(2)
	go send(a, up, iotest.HalfReader(bytes.NewReader(up)))
	go send(b, down, io.MultiReader(iotest.OneByteReader(bytes.NewReader(down[:100])), bytes.NewReader(down[100:])))
	wg.Wait()
	for _, c := range []struct {
		ch   chan res
		want []byte
	}{{gotUp, up[:len(up)-1000]}, {gotDown, down}} {
		r := <-c.ch
		if !errors.Is(r.err, errEnough) || r.n != int64(len(c.want)) || !bytes.Equal(r.got, c.want) {
			t.Fatalf("WriteTo: %d bytes (want %d), %v, data equal: %v", r.n, len(c.want), r.err, bytes.Equal(r.got, c.want))
		}
	}
	// What the failing writer did not take is still there.
	if rest := readN(t, b, 1000); !bytes.Equal(rest, up[len(up)-1000:]) {
		t.Fatal("the bytes after a failed write were lost")
	}
	a.Close()
	b.SetReadDeadline(time.Now().Add(testTimeout))
	if n, err := b.WriteTo(io.Discard); n != 0 || err != nil {
		t.Fatalf("WriteTo after the peer closed: %d, %v; want 0, nil", n, err)
	}
	if _, err := a.WriteTo(io.Discard); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("WriteTo after Close: %v", err)
	}
	if _, err := a.ReadFrom(bytes.NewReader(up)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ReadFrom after Close: %v", err)
	}
}

// errReader returns its data, then err.
type errReader struct {
	data []byte
	err  error
}

func (r *errReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// TestReadFromErrorsAndDeadlines: a reader's error is returned after its
// data is sent; the deadlines bound the waits for room and for data; a
// Close while ReadFrom waits on its reader ends it cleanly.
func TestReadFromErrorsAndDeadlines(t *testing.T) {
	_, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, func(s, d *Config) {
		s.SendBuffer, d.ReceiveBuffer = 64<<10, 64<<10
	})
	a, b := dialAccept(t, src, dst, "SSH1")
	boom := errors.New("boom")
	n, err := a.ReadFrom(&errReader{data: []byte("partial"), err: boom})
	if n != 7 || !errors.Is(err, boom) {
		t.Fatalf("ReadFrom: %d, %v; want 7, boom", n, err)
	}
	if got := readN(t, b, 7); string(got) != "partial" {
		t.Fatalf("got %q", got)
	}

	b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := b.WriteTo(io.Discard); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WriteTo with nothing to read: %v, want a deadline error", err)
	}

	// b does not read: the tunnel fills up and then a's send buffer.
	a.SetWriteDeadline(time.Now().Add(2 * time.Second))
	start := time.Now()
	_, err = a.ReadFrom(iotest.HalfReader(zeroReader{}))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("ReadFrom into a full tunnel: %v after %v, want a deadline error", err, time.Since(start))
	}

	// Close while ReadFrom waits in its reader (on a fresh tunnel: b's
	// full buffer holds this one up until the stall timeout).
	_, src, dst = pair(t, fakeservice.Options{Services: []string{"SSH1"}}, nil)
	c, _ := dialAccept(t, src, dst, "SSH1")
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := c.ReadFrom(pr)
		done <- err
	}()
	pw.Write([]byte("x")) // ReadFrom is reading, or about to read again
	c.Close()
	go pw.Write([]byte("late")) // ReadFrom may take it, or have returned
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("ReadFrom after Close: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("ReadFrom did not return after Close")
	}
	pr.Close() // unblocks the late write if nobody took it
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestReadFromWaitEnds: a ReadFrom waiting for room in a full send buffer
// returns at once when the Conn is closed (net.ErrClosed) or reset by the
// peer (ErrStreamReset), and the reservation it held is given back.
func TestReadFromWaitEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(a, b *Conn)
		want error
	}{
		{"Close", func(a, b *Conn) { a.Close() }, net.ErrClosed},
		{"peer reset", func(a, b *Conn) { b.Close() }, ErrStreamReset},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, func(s, d *Config) {
				s.SendBuffer, d.ReceiveBuffer = 64<<10, 64<<10
				d.StallTimeout = -1
			})
			a, b := dialAccept(t, src, dst, "SSH1")
			done := make(chan error, 1)
			go func() {
				_, err := a.ReadFrom(zeroReader{}) // b does not read: fills up
				done <- err
			}()
			// Wait until a's send buffer is full: ReadFrom waits for room.
			deadline := time.Now().Add(testTimeout)
			for {
				if _, send := a.buffered(); send > 64<<10-readFromMin {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("send buffer never filled")
				}
				time.Sleep(5 * time.Millisecond)
			}
			start := time.Now()
			tc.end(a, b)
			select {
			case err := <-done:
				if !errors.Is(err, tc.want) {
					t.Fatalf("ReadFrom: %v, want %v", err, tc.want)
				}
				if d := time.Since(start); d > 2*time.Second {
					t.Fatalf("ReadFrom returned %v after the end", d)
				}
			case <-time.After(testTimeout):
				t.Fatal("ReadFrom did not return")
			}
			a.mu.Lock()
			resv := a.sq.resv
			a.mu.Unlock()
			if resv {
				t.Fatal("send buffer left reserved")
			}
		})
	}
}
