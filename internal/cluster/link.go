package cluster

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sectun/sectun/internal/server/relay"
)

// The link protocol (one TCP or TLS 1.3 connection per cross-node
// tunnel):
//
//	dialer -> acceptor: "SECTUN-LINK/1\n", then a hello: u32 length + JSON
//	acceptor -> dialer: a reply: u32 length + JSON
//	then, both ways: records of a 4-byte header (type byte, u24 length)
//	and a payload: 'D' whole tunnel frames (each with its 2-byte length,
//	already validated by the node that read them from its client), 'P' a
//	ping (empty; any record proves the other node alive).
const linkMagic = "SECTUN-LINK/1\n"

const (
	recData = 'D'
	recPing = 'P'
	// maxRecord bounds a record's payload: the relay sends at most 131076
	// bytes of frames per Send.
	maxRecord = 131076
	// maxHello bounds the hello and the reply.
	maxHello = 4096
)

// ErrLink wraps link protocol failures (bad magic, hello, record).
var ErrLink = errors.New("cluster: link protocol error")

// hello is the dialer's first message.
type hello struct {
	Tunnel string `json:"tunnel"`
	// Mode and Epoch are the dialer's local end (the acceptor attaches it
	// as a remote end of that mode).
	Mode  relay.Mode `json:"mode"`
	Epoch uint64     `json:"epoch"`
	// PeerEpoch is the epoch the dialer read for the acceptor's local end
	// of the other mode; the acceptor binds only if its local peer has it.
	PeerEpoch   uint64 `json:"peer_epoch"`
	Node        string `json:"node"`
	Incarnation int64  `json:"incarnation"`
}

// reply is the acceptor's answer.
type reply struct {
	// Status is "ok", "stale" (an epoch does not match), "not-here" (no
	// local peer of the other mode yet) or "refused" (bad hello or
	// identity).
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
}

func writeJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	buf := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	copy(buf[4:], b)
	_, err = w.Write(buf)
	return err
}

func readJSON(r io.Reader, v any) error {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(h[:])
	if n > maxHello {
		return fmt.Errorf("%w: message of %d bytes", ErrLink, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %v", ErrLink, err)
	}
	return nil
}

// certSHA256 is the fingerprint of a TLS connection's peer certificate.
func certSHA256(c net.Conn) []byte {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return nil
	}
	sum := sha256.Sum256(certs[0].Raw)
	return sum[:]
}

// link is one established link: the relay.Peer of the remote end on this
// node, and the pump of what the other node sends to the Attachment.
type link struct {
	conn  net.Conn
	br    *bufio.Reader
	log   *slog.Logger
	ping  time.Duration
	ready chan struct{} // closed once Send may write (after the reply)

	wmu  sync.Mutex
	wbuf []byte
	hdr  [4]byte

	att       atomic.Pointer[relay.Attachment]
	deliver   func([]byte) error // att.Deliver; set before run
	records   atomic.Uint64      // records read: liveness
	inDeliver atomic.Bool
	closeOnce sync.Once
	done      chan struct{}
	onEnd     func()
}

func newLink(conn net.Conn, ping time.Duration, log *slog.Logger) *link {
	return &link{
		conn:  conn,
		br:    bufio.NewReaderSize(conn, 64<<10),
		log:   log,
		ping:  ping,
		ready: make(chan struct{}),
		wbuf:  make([]byte, 4+maxRecord),
		done:  make(chan struct{}),
	}
}

// Send implements relay.Peer: one 'D' record per call, written at once.
func (l *link) Send(frames []byte) error {
	if len(frames) > maxRecord {
		return fmt.Errorf("%w: %d bytes of frames in one send", ErrLink, len(frames))
	}
	select {
	case <-l.ready:
	case <-l.done:
		return net.ErrClosed
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	n := len(frames)
	l.wbuf[0], l.wbuf[1], l.wbuf[2], l.wbuf[3] = recData, byte(n>>16), byte(n>>8), byte(n)
	copy(l.wbuf[4:], frames)
	_, err := l.conn.Write(l.wbuf[:4+n])
	return err
}

// Close implements relay.Peer: the other node sees the link end and
// detaches its side (its client gets STREAM_RESET and stays connected).
func (l *link) Close(code int, reason string) {
	l.log.Debug("link closed by the relay", "code", code, "reason", reason)
	l.end()
}

// Abort implements relay.Peer.
func (l *link) Abort() { l.end() }

// end closes the connection once; the pump then detaches.
func (l *link) end() {
	l.closeOnce.Do(func() {
		close(l.done)
		l.conn.Close()
	})
}

// run pumps records to the attachment and watches liveness until the link
// ends; then it detaches. It returns when both are done.
func (l *link) run() {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		l.watch()
	}()
	err := l.readLoop()
	l.end()
	if a := l.att.Load(); a != nil {
		a.Detach()
	}
	wg.Wait()
	if l.onEnd != nil {
		l.onEnd()
	}
	if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) && !errors.Is(err, relay.ErrDetached) {
		l.log.Info("link ended", "err", err)
	}
}

func (l *link) readLoop() error {
	buf := make([]byte, maxRecord)
	deliver := l.deliver
	if deliver == nil {
		deliver = l.att.Load().Deliver
	}
	for {
		if _, err := io.ReadFull(l.br, l.hdr[:]); err != nil {
			return err
		}
		n := int(l.hdr[1])<<16 | int(l.hdr[2])<<8 | int(l.hdr[3])
		if n > maxRecord {
			return fmt.Errorf("%w: record of %d bytes", ErrLink, n)
		}
		if _, err := io.ReadFull(l.br, buf[:n]); err != nil {
			return err
		}
		l.records.Add(1)
		switch l.hdr[0] {
		case recData:
			l.inDeliver.Store(true)
			err := deliver(buf[:n])
			l.inDeliver.Store(false)
			if err != nil {
				return err
			}
		case recPing:
		default:
			return fmt.Errorf("%w: record type %q", ErrLink, l.hdr[0])
		}
	}
}

// watch ends the link when nothing came from the other node for three
// ping intervals (unless this side's reader is held up delivering to a
// slow local client); ping sends the pings, in its own goroutine since a
// write to a dead node may block until watch closes the connection.
func (l *link) watch() {
	pinged := make(chan struct{})
	go func() { defer close(pinged); l.pinger() }()
	defer func() { <-pinged }()
	t := time.NewTicker(l.ping)
	defer t.Stop()
	last, quiet := l.records.Load(), 0
	for {
		select {
		case <-l.done:
			return
		case <-t.C:
		}
		if n := l.records.Load(); n != last || l.inDeliver.Load() {
			last, quiet = n, 0
			continue
		}
		quiet++
		if quiet >= 3 {
			l.log.Warn("link silent: ending it", "silent_for", (3 * l.ping).String())
			l.end()
			return
		}
	}
}

var pingRecord = []byte{recPing, 0, 0, 0}

func (l *link) pinger() {
	t := time.NewTicker(l.ping)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			return
		case <-l.ready:
		}
		select {
		case <-l.done:
			return
		case <-t.C:
		}
		if l.wmu.TryLock() { // a Send in progress proves us alive anyway
			_, err := l.conn.Write(pingRecord)
			l.wmu.Unlock()
			if err != nil {
				l.end()
				return
			}
		}
	}
}
