package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Seeds of the two directions of a bulk transfer.
const (
	seedUp   = 21
	seedDown = 22
)

func stream(seed byte, n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{seed}), n)
}

// checker compares what is written to it with a seed's stream: whatever
// arrives must be an unaltered, in-order prefix.
type checker struct {
	gen  *rand.ChaCha8
	want []byte
	n    int64
	bad  bool
}

func newChecker(seed byte) *checker { return &checker{gen: rand.NewChaCha8([32]byte{seed})} }

func (c *checker) Write(b []byte) (int, error) {
	if c.bad {
		return 0, errCorrupt
	}
	if cap(c.want) < len(b) {
		c.want = make([]byte, len(b))
	}
	w := c.want[:len(b)]
	c.gen.Read(w)
	c.n += int64(len(b))
	if !bytes.Equal(w, b) {
		c.bad = true
		return 0, errCorrupt
	}
	return len(b), nil
}

var errCorrupt = errors.New("CORRUPTED: received bytes differ from those sent")

// services are the destination's local services, shared by all tunnels:
// BULK (checked transfers) and ECHO.
type services struct {
	bulk, echo net.Listener
	corrupt    atomic.Int64 // corrupted transfers seen by BULK
	wg         sync.WaitGroup
	mu         sync.Mutex
	conns      map[net.Conn]struct{}
}

func startServices() (*services, error) {
	s := &services{conns: map[net.Conn]struct{}{}}
	var err error
	if s.bulk, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return nil, err
	}
	if s.echo, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		s.bulk.Close()
		return nil, err
	}
	s.serve(s.bulk, s.handleBulk)
	s.serve(s.echo, func(c net.Conn) { io.Copy(c, c) })
	return s, nil
}

func (s *services) serve(ln net.Listener, handle func(net.Conn)) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				c.SetDeadline(time.Now().Add(10 * time.Minute))
				handle(c)
				c.Close()
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			}()
		}
	}()
}

// handleBulk: a 16-byte header (bytes the client sends, bytes it wants),
// then both directions at once; once both are done, a half-close (which
// ends the tunneled connection after everything was delivered).
func (s *services) handleBulk(c net.Conn) {
	var hdr [16]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	up, down := int64(binary.BigEndian.Uint64(hdr[:8])), int64(binary.BigEndian.Uint64(hdr[8:]))
	werr := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, stream(seedDown, down))
		werr <- err
	}()
	chk := newChecker(seedUp)
	_, err := io.Copy(chk, io.LimitReader(c, up))
	if chk.bad {
		s.corrupt.Add(1)
	}
	if err != nil || chk.n != up {
		c.Close()
		<-werr
		return
	}
	if <-werr == nil {
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c)
	}
}

func (s *services) close() {
	s.bulk.Close()
	s.echo.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// opTimeout bounds one operation: a stuck connection is a failure too.
const opTimeout = 2 * time.Minute

// dialCtx connects to addr; the connection is closed when ctx ends, so
// that stopping the workload interrupts operations at once.
func dialCtx(ctx context.Context, addr string) (net.Conn, func(), error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	c.SetDeadline(time.Now().Add(opTimeout))
	stop := context.AfterFunc(ctx, func() { c.Close() })
	return c, func() { stop(); c.Close() }, nil
}

// bulk runs one checked transfer of up and down bytes. It returns the
// bytes received and whether anything arrived corrupted.
func bulk(ctx context.Context, addr string, up, down int64) (int64, bool, error) {
	c, done, err := dialCtx(ctx, addr)
	if err != nil {
		return 0, false, err
	}
	defer done()
	var hdr [16]byte
	binary.BigEndian.PutUint64(hdr[:8], uint64(up))
	binary.BigEndian.PutUint64(hdr[8:], uint64(down))
	werr := make(chan error, 1)
	go func() {
		if _, err := c.Write(hdr[:]); err != nil {
			werr <- err
			return
		}
		_, err := io.Copy(c, stream(seedUp, up))
		werr <- err
	}()
	chk := newChecker(seedDown)
	_, rerr := io.Copy(chk, c)
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	w := <-werr
	switch {
	case chk.bad:
		return chk.n, true, errCorrupt
	case rerr != nil:
		return chk.n, false, fmt.Errorf("bulk read after %d of %d bytes: %w", chk.n, down, rerr)
	case chk.n != down:
		return chk.n, false, fmt.Errorf("bulk: connection ended after %d of %d bytes", chk.n, down)
	case w != nil:
		return chk.n, false, fmt.Errorf("bulk write: %w", w)
	}
	return chk.n, false, nil
}

// echoSession runs n round trips of a small message on one connection and
// returns the slowest.
func echoSession(ctx context.Context, addr string, n int, pause time.Duration) (time.Duration, error) {
	c, done, err := dialCtx(ctx, addr)
	if err != nil {
		return 0, err
	}
	defer done()
	msg := make([]byte, 64)
	got := make([]byte, 64)
	var worst time.Duration
	for i := range n {
		binary.BigEndian.PutUint64(msg, uint64(i))
		t0 := time.Now()
		c.SetDeadline(t0.Add(30 * time.Second))
		if _, err := c.Write(msg); err != nil {
			return worst, fmt.Errorf("echo %d: %w", i, err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			return worst, fmt.Errorf("echo %d: %w", i, err)
		}
		if !bytes.Equal(got, msg) {
			return worst, errCorrupt
		}
		worst = max(worst, time.Since(t0))
		select {
		case <-ctx.Done():
			return worst, nil
		case <-time.After(pause):
		}
	}
	return worst, nil
}

// churn opens a connection, exchanges one small message and closes it.
func churn(ctx context.Context, addr string) error {
	c, done, err := dialCtx(ctx, addr)
	if err != nil {
		return err
	}
	defer done()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte("churn")); err != nil {
		return err
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("churn: %w", err)
	}
	if string(got) != "churn" {
		return errCorrupt
	}
	return nil
}
