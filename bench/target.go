package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The target server speaks a tiny protocol: the first byte of a
// connection chooses what it does.
//
//	'E'                  echo everything until EOF
//	'S'                  stream: write stream seedDown and discard what
//	                     arrives, until the client closes
//	'B' size(u64) verify bulk: read size bytes (checking them against
//	                     stream seedUp) while writing size bytes of stream
//	                     seedDown; then write the check's result: the
//	                     offset of the first wrong byte (int64, -1 for
//	                     none), the SHA-256 of what was read (zeros unless
//	                     verify is 'H') and the time (UnixNano) at which
//	                     the last byte was read
//
// Integers are big-endian. The protocol has no half-close, so sizes come
// first. The harness and the target share a clock, so the time of the
// upload's end needs no adjustment.
const (
	modeEcho   = 'E'
	modeBulk   = 'B'
	modeStream = 'S'

	seedUp   = 1 // stream the client uploads
	seedDown = 2 // stream the target sends back

	copyBuf  = 256 << 10
	pingSize = 64
	tailSize = 8 + sha256.Size + 8
)

// verifyMode is how bulk data is checked.
type verifyMode byte

const (
	// verifyCompare compares every byte with the expected stream: exact,
	// and at memory speed, so that checking never limits the baseline.
	verifyCompare verifyMode = 'C'
	// verifySHA256 compares the SHA-256 of the bytes with that of the
	// expected stream (about 650 MB/s per core on the reference machine:
	// it caps the baseline's throughput).
	verifySHA256 verifyMode = 'H'
)

// patternLen is the period of a stream: the stream of a seed is a random
// block of this length repeated. It is a multiple of no buffer or frame
// size, so a lost, repeated or misplaced chunk shows.
const patternLen = 1<<20 + 4099

var (
	patternMu sync.Mutex
	patterns  = map[byte][]byte{}
	sumsMu    sync.Mutex
	sums      = map[[2]int64][]byte{}
)

// pattern returns the repeated block of stream seed.
func pattern(seed byte) []byte {
	patternMu.Lock()
	defer patternMu.Unlock()
	p, ok := patterns[seed]
	if !ok {
		p = make([]byte, patternLen)
		rand.NewChaCha8([32]byte{seed}).Read(p)
		patterns[seed] = p
	}
	return p
}

// sendStream writes size bytes of stream seed to w, straight from the
// pattern (no copy, no generation cost).
func sendStream(w io.Writer, seed byte, size int64) error {
	p := pattern(seed)
	for off := int64(0); off < size; {
		i := int(off % patternLen)
		n := min(len(p)-i, copyBuf, int(min(size-off, math.MaxInt32)))
		if _, err := w.Write(p[i : i+n]); err != nil {
			return err
		}
		off += int64(n)
	}
	return nil
}

// streamSum returns the SHA-256 of the first size bytes of stream seed.
func streamSum(seed byte, size int64) []byte {
	sumsMu.Lock()
	defer sumsMu.Unlock()
	key := [2]int64{int64(seed), size}
	if s, ok := sums[key]; ok {
		return s
	}
	h := sha256.New()
	sendStream(h, seed, size)
	sums[key] = h.Sum(nil)
	return sums[key]
}

// verifier checks a received stream as it arrives.
type verifier struct {
	mode verifyMode
	p    []byte
	off  int64
	bad  int64 // offset of the first wrong byte, -1 for none
	h    hash.Hash
}

func newVerifier(mode verifyMode, seed byte) *verifier {
	v := &verifier{mode: mode, p: pattern(seed), bad: -1}
	if mode == verifySHA256 {
		v.h = sha256.New()
	}
	return v
}

func (v *verifier) write(b []byte) {
	if v.h != nil {
		v.h.Write(b)
		v.off += int64(len(b))
		return
	}
	for len(b) > 0 {
		i := int(v.off % patternLen)
		n := min(len(b), len(v.p)-i)
		if v.bad < 0 && !bytes.Equal(b[:n], v.p[i:i+n]) {
			for k := range n {
				if b[k] != v.p[i+k] {
					v.bad = v.off + int64(k)
					break
				}
			}
		}
		v.off += int64(n)
		b = b[n:]
	}
}

// sum returns the SHA-256 (verifySHA256) or nil.
func (v *verifier) sum() []byte {
	if v.h == nil {
		return nil
	}
	return v.h.Sum(nil)
}

// check returns an error if the stream of seed, size bytes, was not
// received intact, given the verifier's results.
func check(mode verifyMode, seed byte, size, bad int64, sum []byte) error {
	if mode == verifySHA256 {
		if !bytes.Equal(sum, streamSum(seed, size)) {
			return errors.New("SHA-256 mismatch")
		}
		return nil
	}
	if bad >= 0 {
		return fmt.Errorf("wrong byte at offset %d", bad)
	}
	return nil
}

// recvStream reads exactly size bytes from r into v. If first is not nil
// it is closed once 1 MiB has arrived.
func recvStream(r io.Reader, v *verifier, size int64, first chan<- struct{}) error {
	buf := make([]byte, copyBuf)
	var got int64
	for got < size {
		n, err := r.Read(buf[:min(int64(len(buf)), size-got)])
		v.write(buf[:n])
		got += int64(n)
		if first != nil && got >= 1<<20 {
			close(first)
			first = nil
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("after %d of %d bytes: %w", got, size, err)
		}
	}
	if first != nil {
		close(first)
	}
	return nil
}

// target is the harness's destination service.
type target struct {
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	open map[net.Conn]bool
}

func newTarget() (*target, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	t := &target{ln: ln, open: map[net.Conn]bool{}}
	t.wg.Go(t.serve)
	return t, nil
}

func (t *target) addr() string { return t.ln.Addr().String() }

func (t *target) serve() {
	for {
		c, err := t.ln.Accept()
		if err != nil {
			return
		}
		t.mu.Lock()
		t.open[c] = true
		t.mu.Unlock()
		t.wg.Go(func() {
			t.handle(c)
			c.Close()
			t.mu.Lock()
			delete(t.open, c)
			t.mu.Unlock()
		})
	}
}

func (t *target) handle(c net.Conn) {
	var hdr [1]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	switch hdr[0] {
	case modeEcho:
		// Small buffers: the idle scenario holds a thousand of these.
		buf := make([]byte, 4<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	case modeStream:
		go func() {
			io.Copy(io.Discard, c)
			c.Close() // ends the writer too
		}()
		sendStream(c, seedDown, math.MaxInt64)
	case modeBulk:
		var hdr [9]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		size := int64(binary.BigEndian.Uint64(hdr[:8]))
		v := newVerifier(verifyMode(hdr[8]), seedUp)
		werr := make(chan error, 1)
		go func() { werr <- sendStream(c, seedDown, size) }()
		err := recvStream(c, v, size, nil)
		upDone := time.Now()
		if err != nil || <-werr != nil {
			return
		}
		var tail [tailSize]byte
		binary.BigEndian.PutUint64(tail[:8], uint64(v.bad))
		copy(tail[8:], v.sum())
		binary.BigEndian.PutUint64(tail[8+sha256.Size:], uint64(upDone.UnixNano()))
		if _, err := c.Write(tail[:]); err != nil {
			return
		}
		io.Copy(io.Discard, c) // until the client closes
	}
}

// close stops the server and waits for its connections to end.
func (t *target) close() {
	t.ln.Close()
	t.mu.Lock()
	for c := range t.open {
		c.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
}

// --- client side ---

func dial(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 30 * time.Second}
	return d.DialContext(ctx, "tcp", addr)
}

// bulkTimes are the durations of the two directions of a bulk transfer,
// both from the start of the dial.
type bulkTimes struct{ up, down time.Duration }

// bulk moves size bytes each way through addr at once and checks both
// streams. first, if not nil, is closed once data flows downstream.
func bulk(ctx context.Context, addr string, size int64, mode verifyMode, first chan<- struct{}) (bulkTimes, error) {
	if mode == verifySHA256 {
		streamSum(seedUp, size) // computed once, outside the timing
		streamSum(seedDown, size)
	}
	start := time.Now()
	c, err := dial(ctx, addr)
	if err != nil {
		return bulkTimes{}, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	// At least 1 MB/s, and never less than a minute.
	c.SetDeadline(time.Now().Add(time.Minute + time.Duration(size/1e6)*time.Second))
	var hdr [10]byte
	hdr[0] = modeBulk
	binary.BigEndian.PutUint64(hdr[1:], uint64(size))
	hdr[9] = byte(mode)
	if _, err := c.Write(hdr[:]); err != nil {
		return bulkTimes{}, err
	}
	werr := make(chan error, 1)
	go func() { werr <- sendStream(c, seedUp, size) }()
	v := newVerifier(mode, seedDown)
	err = recvStream(c, v, size, first)
	down := time.Since(start)
	if err != nil {
		c.Close()
		<-werr
		return bulkTimes{}, fmt.Errorf("reading the download: %w", err)
	}
	if err := <-werr; err != nil {
		return bulkTimes{}, fmt.Errorf("writing the upload: %w", err)
	}
	var tail [tailSize]byte
	if _, err := io.ReadFull(c, tail[:]); err != nil {
		return bulkTimes{}, fmt.Errorf("reading the target's check: %w", err)
	}
	if err := check(mode, seedDown, size, v.bad, v.sum()); err != nil {
		return bulkTimes{}, fmt.Errorf("the downloaded data differs from what the target sent: %w", err)
	}
	if err := check(mode, seedUp, size, int64(binary.BigEndian.Uint64(tail[:8])), tail[8:8+sha256.Size]); err != nil {
		return bulkTimes{}, fmt.Errorf("the target received different data than was uploaded: %w", err)
	}
	upDone := time.Unix(0, int64(binary.BigEndian.Uint64(tail[8+sha256.Size:])))
	return bulkTimes{up: upDone.Sub(start), down: down}, nil
}

// loadConn is a connection carrying data both ways as fast as the path
// allows (the target's stream mode), for the fair scenario.
type loadConn struct {
	c        net.Conn
	received atomic.Int64
	sent     atomic.Int64
	wg       sync.WaitGroup
}

// startLoad opens a stream-mode connection to addr and waits until data
// flows back (1 MiB).
func startLoad(ctx context.Context, addr string) (*loadConn, error) {
	c, err := dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{modeStream}); err != nil {
		c.Close()
		return nil, err
	}
	l := &loadConn{c: c}
	flowing := make(chan struct{})
	l.wg.Go(func() {
		buf := make([]byte, copyBuf)
		signal := flowing
		for {
			n, err := c.Read(buf)
			if l.received.Add(int64(n)) >= 1<<20 && signal != nil {
				close(signal)
				signal = nil
			}
			if err != nil {
				return
			}
		}
	})
	l.wg.Go(func() {
		sendStream(writeCounter{c, &l.sent}, seedUp, math.MaxInt64)
	})
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case <-flowing:
		return l, nil
	case <-t.C:
		err = errors.New("no data flowing within 30 s")
	case <-ctx.Done():
		err = ctx.Err()
	}
	l.stop()
	return nil, err
}

// writeCounter counts the bytes written through it.
type writeCounter struct {
	w io.Writer
	n *atomic.Int64
}

func (w writeCounter) Write(b []byte) (int, error) {
	n, err := w.w.Write(b)
	w.n.Add(int64(n))
	return n, err
}

// stop closes the connection and waits for its goroutines.
func (l *loadConn) stop() {
	l.c.Close()
	l.wg.Wait()
}

// echoConn dials addr and switches the connection to echo mode.
func echoConn(ctx context.Context, addr string) (net.Conn, error) {
	c, err := dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{modeEcho}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// roundTrip writes msg and reads its echo into buf (same length).
func roundTrip(c net.Conn, msg, buf []byte) error {
	if _, err := c.Write(msg); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if !bytes.Equal(msg, buf) {
		return errors.New("the echo differs from the message")
	}
	return nil
}

// pinger is an echo connection for timed 64-byte round trips.
type pinger struct {
	c        net.Conn
	msg, buf []byte
	seq      uint64
	halt     func() bool
}

// newPinger connects to addr and makes 20 untimed round trips.
func newPinger(ctx context.Context, addr string) (*pinger, error) {
	c, err := echoConn(ctx, addr)
	if err != nil {
		return nil, err
	}
	p := &pinger{c: c, msg: make([]byte, pingSize), buf: make([]byte, pingSize)}
	p.halt = context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	for range 20 {
		if _, err := p.once(); err != nil {
			p.close()
			return nil, fmt.Errorf("warm-up round trip: %w", err)
		}
	}
	return p, nil
}

func (p *pinger) once() (time.Duration, error) {
	p.seq++
	binary.BigEndian.PutUint64(p.msg, p.seq)
	p.c.SetDeadline(time.Now().Add(30 * time.Second))
	t0 := time.Now()
	err := roundTrip(p.c, p.msg, p.buf)
	return time.Since(t0), err
}

// run times up to n round trips; once stop is closed it returns as soon
// as it has at least minSamples.
func (p *pinger) run(n, minSamples int, stop <-chan struct{}) ([]time.Duration, error) {
	samples := make([]time.Duration, 0, min(n, 1<<16))
	for len(samples) < n {
		if len(samples) >= minSamples {
			select {
			case <-stop:
				return samples, nil
			default:
			}
		}
		d, err := p.once()
		if err != nil {
			return samples, fmt.Errorf("round trip %d: %w", p.seq, err)
		}
		samples = append(samples, d)
	}
	return samples, nil
}

func (p *pinger) close() {
	p.halt()
	p.c.Close()
}

// pingPong times n 64-byte round trips on a new echo connection to addr.
func pingPong(ctx context.Context, addr string, n int) ([]time.Duration, error) {
	p, err := newPinger(ctx, addr)
	if err != nil {
		return nil, err
	}
	defer p.close()
	return p.run(n, n, nil)
}

// connsResult is the outcome of opening many connections at once.
type connsResult struct {
	ok       int
	setup    []time.Duration // dial to first echo of the successful ones, sorted
	firstErr error
}

// openMany opens k connections to addr at once; each does rounds 64-byte
// round trips, and all stay open until every one has finished.
func openMany(ctx context.Context, addr string, k, rounds int) connsResult {
	type result struct {
		setup time.Duration
		err   error
	}
	var (
		ready, finished sync.WaitGroup
		start           = make(chan struct{})
		release         = make(chan struct{})
		results         = make(chan result, k)
	)
	ready.Add(k)
	finished.Add(k)
	for i := range k {
		go func() {
			ready.Done()
			<-start
			setup, c, err := openOne(ctx, addr, i, rounds)
			finished.Done()
			if c != nil {
				<-release
				c.Close()
			}
			results <- result{setup, err}
		}()
	}
	ready.Wait()
	close(start)
	finished.Wait()
	close(release)
	var res connsResult
	for range k {
		r := <-results
		if r.err != nil {
			if res.firstErr == nil {
				res.firstErr = r.err
			}
			continue
		}
		res.ok++
		res.setup = append(res.setup, r.setup)
	}
	slices.Sort(res.setup)
	return res
}

// openOne dials addr and does rounds round trips; it returns the time to
// the first echo and the open connection.
func openOne(ctx context.Context, addr string, id, rounds int) (time.Duration, net.Conn, error) {
	t0 := time.Now()
	c, err := echoConn(ctx, addr)
	if err != nil {
		return 0, nil, err
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	msg, buf := make([]byte, pingSize), make([]byte, pingSize)
	var setup time.Duration
	for r := range rounds {
		binary.BigEndian.PutUint64(msg, uint64(id))
		msg[8] = byte(r)
		if err := roundTrip(c, msg, buf); err != nil {
			c.Close()
			return 0, nil, fmt.Errorf("round trip %d: %w", r, err)
		}
		if r == 0 {
			setup = time.Since(t0)
		}
	}
	c.SetDeadline(time.Time{})
	return setup, c, nil
}

// openIdle opens k echo connections to addr, 64 at a time, each after one
// round trip, and returns them open.
func openIdle(ctx context.Context, addr string, k int) ([]net.Conn, error) {
	conns := make([]net.Conn, k)
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for i := range k {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			_, c, err := openOne(ctx, addr, i, 1)
			if err != nil {
				mu.Lock()
				firstErr = cmp.Or(firstErr, err)
				mu.Unlock()
				return
			}
			conns[i] = c
		})
	}
	wg.Wait()
	if firstErr != nil {
		closeAll(conns)
		return nil, firstErr
	}
	return conns, nil
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}
