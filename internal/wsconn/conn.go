package wsconn

import (
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// MaxMessageSize is the largest WebSocket message accepted from a peer.
const MaxMessageSize = 131076

// Close codes used by the tunnel protocol (RFC 6455 section 7.4).
const (
	CloseNormal          = 1000
	CloseGoingAway       = 1001
	CloseProtocolError   = 1002
	CloseUnsupportedData = 1003
	CloseNoStatus        = 1005 // received only: a close frame without a code
	CloseAbnormal        = 1006 // never sent: the connection ended without a close frame
	ClosePolicyViolation = 1008
	CloseMessageTooBig   = 1009
	CloseInternalError   = 1011
	CloseTryAgainLater   = 1013
)

// Role is the side of a WebSocket connection: it decides the framing
// (clients mask what they send, servers must not).
type Role int

const (
	RoleClient Role = iota // the connection was dialed (Dial)
	RoleServer             // the connection was accepted (Accept)
)

func (r Role) String() string {
	if r == RoleServer {
		return "server"
	}
	return "client"
}

var (
	// ErrTextMessage reports a text message where only binary ones are allowed.
	ErrTextMessage = errors.New("wsconn: text message received")
	// ErrMessageTooBig reports a message over MaxMessageSize from the peer.
	ErrMessageTooBig = errors.New("wsconn: message exceeds 131076 bytes")
	// ErrBadHandshake reports a non-101 answer to the upgrade request; the
	// *HandshakeError carrying it has the status and body.
	ErrBadHandshake = errors.New("wsconn: handshake refused")
	// ErrCloseSent is returned by writes after a close frame was sent or
	// received: no data message may follow it.
	ErrCloseSent = errors.New("wsconn: close frame sent")
	// ErrProtocol reports a frame from the peer that breaks RFC 6455 (a
	// client frame not masked or a server frame masked, reserved bits or
	// opcodes, a bad control frame, a continuation without a start): the
	// connection is answered with close 1002. The error wrapping it says
	// which rule.
	ErrProtocol = errors.New("wsconn: protocol error")
)

// CloseError is a close frame received from the peer, or (code 1006) a
// connection that ended without one.
type CloseError struct {
	Code   int
	Reason string
}

func (e *CloseError) Error() string {
	return fmt.Sprintf("websocket closed by peer: %d %s", e.Code, e.Reason)
}

// HandshakeError is an upgrade request answered with something else than
// 101 Switching Protocols (or a 101 that is not a WebSocket upgrade).
type HandshakeError struct {
	StatusCode int
	Header     http.Header
	Body       string // at most the first KiB
}

func (e *HandshakeError) Error() string {
	msg := fmt.Sprintf("websocket handshake refused: HTTP %d", e.StatusCode)
	if e.Body != "" {
		msg += ": " + e.Body
	}
	return msg
}

func (e *HandshakeError) Unwrap() error { return ErrBadHandshake }

// Conn is a WebSocket connection carrying binary messages, for either
// role. Its framing is wsconn's own, both ways: one frame reader (read.go)
// and one write funnel (write.go) that data, ping, pong and close frames
// all go through; liveness is in live.go.
type Conn struct {
	role        Role
	nc          net.Conn     // the connection: TLS, TCP, or a wrapper
	tcp         *net.TCPConn // the TCP socket under nc; nil if unknown
	raw         syscall.RawConn
	subprotocol string

	// Read side: the reader's goroutine only (see read.go).
	fr      frameReader
	pre     []byte // bytes received with the handshake's answer, read first
	rerr    error  // what ended the stream
	closing bool   // in the closing handshake: pings are not answered

	// Write side: the funnel (see write.go).
	wlock       chan struct{} // held by the one write in progress
	werr        error         // the first failed write (under wlock)
	closeSent   atomic.Bool
	pendingPong atomic.Pointer[[]byte]
	writeTO     time.Duration // bounds a message write whose ctx has none
	wctx        wctxWatch     // the ctx of the last message write, watched
	hdr         [14]byte      // frame header (under wlock)
	ctl         [14 + maxControlPayload]byte
	wvec        [2][]byte
	wv          net.Buffers
	writev      bool // nc is the TCP socket itself: header and payload in one writev

	live liveness // see live.go

	unreadMu  sync.Mutex
	unreadFn  func(uintptr) // SIOCINQ into unreadN (allocated once)
	unreadN   int
	unreadErr error

	closeOnce sync.Once
}

func newConn(nc net.Conn, role Role, subprotocol string) *Conn {
	c := &Conn{role: role, nc: nc, subprotocol: subprotocol, wlock: make(chan struct{}, 1)}
	c.fr.role = role
	c.live.init(c)
	if tcp, err := tcpUnder(nc); err == nil {
		c.tcp = tcp
		c.raw, _ = tcp.SyscallConn()
		c.writev = nc == net.Conn(tcp)
		if _, ok := nc.(*tls.Conn); !ok && !c.writev {
			// A wrapper exposing its connection (NetConn) is taken as a
			// view of it, as for the socket options: writes go to the
			// TCP socket under it, since net.Buffers cannot reach writev
			// through a wrapper.
			c.writev = true
		}
	}
	return c
}

// tcpUnder returns the TCP connection under nc: through TLS and through
// any wrapper with a NetConn method (tls.Conn has one; so does tunneld's
// connection limiter), at most a few levels deep.
func tcpUnder(nc net.Conn) (*net.TCPConn, error) {
	for range 8 {
		if tcp, ok := nc.(*net.TCPConn); ok {
			return tcp, nil
		}
		u, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		nc = u.NetConn()
	}
	return nil, fmt.Errorf("wsconn: %T is not a TCP connection", nc)
}

// Role returns the connection's role.
func (c *Conn) Role() Role { return c.role }

// Subprotocol returns the negotiated subprotocol.
func (c *Conn) Subprotocol() string { return c.subprotocol }

// NetConn returns the underlying connection. Reading or writing it
// bypasses the framing; it is there for addresses and TLS state.
func (c *Conn) NetConn() net.Conn { return c.nc }

// Unread returns the bytes received on the TCP connection under c and not
// read yet (SIOCINQ on Linux): what the kernel holds, not counting what a
// TLS layer already took. It fails where that cannot be known (not TCP,
// not Linux). It does not allocate; it may be called from any goroutine.
func (c *Conn) Unread() (int, error) {
	if c.raw == nil {
		return 0, errors.New("wsconn: no TCP socket under the connection")
	}
	c.unreadMu.Lock()
	defer c.unreadMu.Unlock()
	if c.unreadFn == nil {
		c.unreadFn = func(fd uintptr) { c.unreadN, c.unreadErr = ioctlInq(fd) }
	}
	c.unreadN, c.unreadErr = 0, nil
	if err := c.raw.Control(c.unreadFn); err != nil {
		return 0, err
	}
	return c.unreadN, c.unreadErr
}

// SetSocketBuffers sets the kernel send and receive buffer sizes (SO_SNDBUF,
// SO_RCVBUF) of the TCP connection under c, through TLS; 0 leaves one as it
// is. A fixed size turns the kernel's autotuning off, which on loopback
// and fast links lets each buffer grow to megabytes: data queued there can
// no longer be reordered, so it delays whatever is sent after it. It
// reports an error when the connection is not TCP.
func (c *Conn) SetSocketBuffers(send, recv int) error {
	if c.tcp == nil {
		return fmt.Errorf("wsconn: %T is not a TCP connection", c.nc)
	}
	if send > 0 {
		if err := c.tcp.SetWriteBuffer(send); err != nil {
			return err
		}
	}
	if recv > 0 {
		if err := c.tcp.SetReadBuffer(recv); err != nil {
			return err
		}
	}
	return nil
}

// AcceptOptions configures Accept.
type AcceptOptions struct {
	// Subprotocol is echoed in the response; "" omits the header.
	Subprotocol string
	// Header is added to the 101 response.
	Header http.Header
	// WriteTimeout bounds each message write whose context has no
	// deadline; 0 means none.
	WriteTimeout time.Duration
	// KeepSocketBuffers leaves the kernel's socket buffers to autotuning.
	// By default (Linux) the connection gets the short kernel queues
	// described at Dial.
	KeepSocketBuffers bool
}

// acceptGUID is RFC 6455's key suffix.
const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + acceptGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// handshakeTimeout bounds writing the 101 answer and the client's whole
// handshake.
const handshakeTimeout = 30 * time.Second

// Accept upgrades an HTTP request to a WebSocket connection (RFC 6455
// section 4.2): the request must be a GET with Connection: Upgrade,
// Upgrade: websocket, Sec-WebSocket-Version: 13 and a 16-byte key, and no
// bytes may follow it before the answer. On failure an HTTP error has
// been written (400, 405 for another method) unless the connection was
// already taken over.
func Accept(w http.ResponseWriter, r *http.Request, opts AcceptOptions) (*Conn, error) {
	fail := func(status int, msg string) (*Conn, error) {
		w.Header().Set("Sec-Websocket-Version", "13")
		http.Error(w, "websocket: "+msg, status)
		return nil, errors.New("wsconn: " + msg)
	}
	switch {
	case r.Method != http.MethodGet:
		return fail(http.StatusMethodNotAllowed, "request method is not GET")
	case !headerHasToken(r.Header, "Connection", "upgrade"):
		return fail(http.StatusBadRequest, "the client is not using the websocket protocol: 'upgrade' token not found in 'Connection' header")
	case !headerHasToken(r.Header, "Upgrade", "websocket"):
		return fail(http.StatusBadRequest, "the client is not using the websocket protocol: 'websocket' token not found in 'Upgrade' header")
	case r.Header.Get("Sec-Websocket-Version") != "13":
		return fail(http.StatusBadRequest, "unsupported version: 13 not found in 'Sec-Websocket-Version' header")
	}
	key := r.Header.Get("Sec-Websocket-Key")
	if b, err := base64.StdEncoding.DecodeString(key); err != nil || len(b) != 16 {
		return fail(http.StatusBadRequest, "not a websocket handshake: 'Sec-WebSocket-Key' header must be Base64 encoded value of 16-byte in length")
	}
	nc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return fail(http.StatusInternalServerError, "cannot take over the connection: "+err.Error())
	}
	if brw.Reader.Buffered() > 0 {
		nc.Close()
		return nil, errors.New("wsconn: client sent data before the handshake was complete")
	}
	var b strings.Builder
	b.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ")
	b.WriteString(acceptKey(key))
	b.WriteString("\r\n")
	if opts.Subprotocol != "" {
		b.WriteString("Sec-WebSocket-Protocol: " + opts.Subprotocol + "\r\n")
	}
	for k, vs := range opts.Header {
		for _, v := range vs {
			if strings.ContainsAny(k+v, "\r\n") {
				continue
			}
			b.WriteString(k + ": " + v + "\r\n")
		}
	}
	b.WriteString("\r\n")
	nc.SetWriteDeadline(time.Now().Add(handshakeTimeout))
	if _, err := nc.Write([]byte(b.String())); err != nil {
		nc.Close()
		return nil, fmt.Errorf("wsconn: writing the handshake's answer: %w", err)
	}
	nc.SetDeadline(time.Time{})
	c := newConn(nc, RoleServer, opts.Subprotocol)
	c.writeTO = opts.WriteTimeout
	if !opts.KeepSocketBuffers {
		c.shortenQueues(true) // best effort: the kernel's defaults otherwise
	}
	return c, nil
}

func headerHasToken(h http.Header, name, want string) bool {
	for _, v := range h.Values(name) {
		for part := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(part), want) {
				return true
			}
		}
	}
	return false
}

// Abort closes the connection at once, without a close frame, as a
// dropped connection: blocked reads and writes return. It closes the TCP
// socket itself, so under TLS no close_notify is written, and it never
// blocks. Later Close calls do nothing.
func (c *Conn) Abort() error {
	c.live.stop()
	var err error
	done := false
	c.closeOnce.Do(func() {
		done = true
		c.closeSent.Store(true)
		if c.tcp != nil {
			err = c.tcp.Close()
		} else {
			err = c.nc.Close()
		}
	})
	if !done && c.tcp != nil {
		// Closed already, perhaps by a Close blocked in close_notify:
		// cutting the socket ends that too.
		c.tcp.Close()
	}
	return err
}

// SetReadDeadline makes a Read in progress, and later ones, fail with a
// timeout once t passes (a zero t removes it); the liveness watchdog sets
// one of its own when it fires.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }
