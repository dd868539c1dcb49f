package tcptest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"time"
)

// Stream returns the deterministic byte stream named by seed: endless,
// the same on every call and machine, and different for different seeds
// (ChaCha8 keyed by seed), so a transfer can be checked without keeping
// what was sent.
func Stream(seed byte) io.Reader { return rand.NewChaCha8([32]byte{seed}) }

// StreamSum returns the SHA-256 of the first size bytes of Stream(seed).
func StreamSum(seed byte, size int64) []byte {
	h := sha256.New()
	io.CopyN(h, Stream(seed), size)
	return h.Sum(nil)
}

// verifier is an io.Writer that checks what is written against
// Stream(seed), remembering the offset of the first difference.
type verifier struct {
	want io.Reader
	buf  []byte
	n    int64 // bytes checked
	bad  int64 // offset of the first differing byte; -1 if none
}

func newVerifier(seed byte) *verifier {
	return &verifier{want: Stream(seed), buf: make([]byte, 32<<10), bad: -1}
}

func (v *verifier) Write(p []byte) (int, error) {
	for done := 0; done < len(p); {
		chunk := p[done:min(len(p), done+len(v.buf))]
		want := v.buf[:len(chunk)]
		io.ReadFull(v.want, want) // ChaCha8 never fails
		if v.bad < 0 && !bytes.Equal(chunk, want) {
			for i := range chunk {
				if chunk[i] != want[i] {
					v.bad = v.n + int64(i)
					break
				}
			}
		}
		v.n += int64(len(chunk))
		done += len(chunk)
	}
	return len(p), nil
}

func (v *verifier) err(what string) error {
	if v.bad >= 0 {
		return fmt.Errorf("tcptest: %s differs from what was sent from byte %d on", what, v.bad)
	}
	return nil
}

// guard makes blocking calls on c fail once ctx is done, or after Timeout
// when ctx has no deadline. stop undoes it and returns ctx's error if ctx
// ended first: then c's deadline is left in the past.
func guard(ctx context.Context, c net.Conn) (stop func() error) {
	cancel := context.CancelFunc(func() {})
	if _, ok := ctx.Deadline(); !ok {
		ctx, cancel = context.WithTimeout(ctx, Timeout)
	}
	// A deadline in the past wakes every blocked Read and Write at once.
	unhook := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	return func() error {
		defer cancel()
		if unhook() {
			return nil
		}
		return ctx.Err()
	}
}

// wrap adds ctx's error, if it ended the call, to err.
func wrap(err, ctxErr error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	msg := fmt.Sprintf(format, args...)
	if ctxErr != nil {
		return fmt.Errorf("tcptest: %s: %w (%w)", msg, err, ctxErr)
	}
	return fmt.Errorf("tcptest: %s: %w", msg, err)
}

// exchange writes size bytes of Stream(sendSeed) to c on a goroutine of
// its own while it reads into v until EOF (size < 0) or size bytes, then
// half-closes c's write side if closeWrite; it returns the read's and the
// write's errors. A failed read unblocks the write (a deadline in the
// past).
func exchange(c net.Conn, sendSeed byte, size int64, closeWrite bool, v *verifier, readSize int64) (rerr, werr error) {
	errc := make(chan error, 1)
	go func() {
		_, err := io.CopyN(c, Stream(sendSeed), size)
		if err == nil && closeWrite {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	if readSize < 0 {
		_, rerr = io.Copy(v, c)
	} else {
		_, rerr = io.CopyN(v, c, readSize)
	}
	if rerr != nil {
		c.SetDeadline(time.Unix(1, 0))
	}
	return rerr, <-errc
}

// Echoed writes size bytes of Stream(seed) to c, whose peer echoes, while
// it reads size bytes back, and checks they are what it wrote. It leaves c
// open, unless ctx ends first: it returns when done, on an I/O error, or
// when ctx is done (or after Timeout if ctx has no deadline), and then c
// is left with a deadline in the past.
func Echoed(ctx context.Context, c net.Conn, size int64, seed byte) error {
	stop := guard(ctx, c)
	v := newVerifier(seed)
	rerr, werr := exchange(c, seed, size, false, v, size)
	if err := ioErr(rerr, werr, stop(), v, size, "the echo"); err != nil {
		return err
	}
	return v.err("the echo")
}

// EchoedToEOF is Echoed for a peer that echoes until EOF and then closes
// (as Echo does): after the data it half-closes c's write side, and it
// checks that exactly the data comes back, followed by EOF.
func EchoedToEOF(ctx context.Context, c *net.TCPConn, size int64, seed byte) error {
	stop := guard(ctx, c)
	v := newVerifier(seed)
	rerr, werr := exchange(c, seed, size, true, v, -1)
	if err := ioErr(rerr, werr, stop(), v, size, "the echo"); err != nil {
		return err
	}
	if v.n != size {
		return fmt.Errorf("tcptest: the echo ended after %d bytes, want the %d sent", v.n, size)
	}
	return v.err("the echo")
}

// ioErr describes the first of an exchange's read and write errors.
func ioErr(rerr, werr, ctxErr error, v *verifier, size int64, what string) error {
	if rerr != nil {
		return wrap(rerr, ctxErr, "reading %s after %d of %d bytes", what, v.n, size)
	}
	return wrap(werr, ctxErr, "writing")
}

// BulkHandler returns a Server handler for Bulk: it reads size bytes,
// hashing them, while it writes size bytes of Stream(seed); then it writes
// the SHA-256 of what it read and discards anything more until EOF.
func BulkHandler(size int64, seed byte) func(net.Conn) {
	return func(c net.Conn) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			io.CopyN(c, Stream(seed), size)
		}()
		h := sha256.New()
		if _, err := io.CopyN(h, c, size); err != nil {
			c.Close() // unblock the writer: the client is gone
		}
		<-done
		c.Write(h.Sum(nil))
		io.Copy(io.Discard, c)
	}
}

// Bulk is the client of a BulkHandler(size, serverSeed) behind c: it sends
// size bytes of Stream(clientSeed) while it reads the server's size bytes,
// checks them against Stream(serverSeed), then reads the hash of what the
// server received and checks it. Both directions run at once, so it
// measures (and stresses) a full-duplex path. It leaves c open.
func Bulk(ctx context.Context, c net.Conn, size int64, clientSeed, serverSeed byte) error {
	stop := guard(ctx, c)
	v := newVerifier(serverSeed)
	rerr, werr := exchange(c, clientSeed, size, false, v, size)
	var got [sha256.Size]byte
	if rerr == nil && werr == nil {
		if _, err := io.ReadFull(c, got[:]); err != nil {
			return wrap(err, stop(), "reading the hash of what the server received")
		}
	}
	if err := ioErr(rerr, werr, stop(), v, size, "the server's data"); err != nil {
		return err
	}
	if err := v.err("the server's data"); err != nil {
		return err
	}
	if !bytes.Equal(got[:], StreamSum(clientSeed, size)) {
		return errors.New("tcptest: the server received different data from what was sent")
	}
	return nil
}

// RoundTrip writes msg to c, reads len(msg) bytes back and checks they are
// msg: one small exchange with an echo service behind c. It leaves c
// open.
func RoundTrip(ctx context.Context, c net.Conn, msg []byte) error {
	stop := guard(ctx, c)
	_, werr := c.Write(msg)
	got := make([]byte, len(msg))
	var rerr error
	if werr == nil {
		_, rerr = io.ReadFull(c, got)
	}
	ctxErr := stop()
	if werr != nil {
		return wrap(werr, ctxErr, "writing %q", msg)
	}
	if rerr != nil {
		return wrap(rerr, ctxErr, "reading the echo of %q", msg)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("tcptest: echo %q, want %q", got, msg)
	}
	return nil
}

// DialRoundTrip dials addr, does one RoundTrip of msg and closes the
// connection: is an echo service reachable at addr, and does it answer?
func DialRoundTrip(ctx context.Context, addr string, msg []byte) error {
	ctx, cancel := context.WithTimeout(ctx, Timeout) // the earlier deadline wins
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("tcptest: dial %s: %w", addr, err)
	}
	defer c.Close()
	return RoundTrip(ctx, c, msg)
}
