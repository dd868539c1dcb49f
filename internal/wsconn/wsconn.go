package wsconn

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/net/http/httpproxy"
)

// MaxMessageSize is the largest WebSocket message accepted from a peer.
const MaxMessageSize = 131076

// Close codes used by the tunnel protocol.
const (
	CloseNormal          = websocket.CloseNormalClosure
	CloseGoingAway       = websocket.CloseGoingAway
	CloseProtocolError   = websocket.CloseProtocolError
	CloseUnsupportedData = websocket.CloseUnsupportedData
	ClosePolicyViolation = websocket.ClosePolicyViolation
	CloseMessageTooBig   = websocket.CloseMessageTooBig
	CloseInternalError   = websocket.CloseInternalServerErr
	CloseTryAgainLater   = websocket.CloseTryAgainLater
)

var (
	// ErrTextMessage reports a text message where only binary ones are allowed.
	ErrTextMessage = errors.New("wsconn: text message received")
	// ErrMessageTooBig reports a message over MaxMessageSize from the peer.
	ErrMessageTooBig = errors.New("wsconn: message exceeds 131076 bytes")
	// ErrBadHandshake reports a non-101 answer to the upgrade request; the
	// *HandshakeError carrying it has the status and body.
	ErrBadHandshake = errors.New("wsconn: handshake refused")
)

// CloseError is a close frame received from the peer.
type CloseError struct {
	Code   int
	Reason string
}

func (e *CloseError) Error() string {
	return fmt.Sprintf("websocket closed by peer: %d %s", e.Code, e.Reason)
}

// HandshakeError is an upgrade request answered with something else than
// 101 Switching Protocols.
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

// Conn is a WebSocket connection carrying binary messages.
type Conn struct {
	ws        *websocket.Conn
	cur       io.Reader
	closeOnce sync.Once

	// Liveness (SetLiveness): a watchdog timer, not a read deadline, so
	// that the reader's own delays are not taken for the peer's silence.
	epoch    time.Time    // lastLive counts from here (monotonic)
	live     atomic.Int64 // the liveness timeout; 0: none
	lastLive atomic.Int64 // when the peer last gave a sign of life, since epoch
	liveMu   sync.Mutex   // guards liveDog and liveOver
	liveDog  *time.Timer
	liveOver bool // the watchdog has fired for good, or the connection closed

	// Client connections (Dial) frame their binary messages here rather
	// than through gorilla, which copies each message into its write
	// buffer and masks it there in a second pass: writeMasked masks while
	// copying and sends the frame with one write call.
	client    bool
	wdeadline time.Time   // for writeMasked; the writer's goroutine only
	closeSent atomic.Bool // no data message may follow a close frame
	// wlock serializes message writes with the control frames wsconn
	// writes (pongs, pings, close), as gorilla's own write lock does for
	// its writes: a control write sets the socket's write deadline, which
	// must not cut a message write in progress short.
	wlock chan struct{}
	// werr is the first failed write under wlock: a write that failed
	// (a deadline, too) may have sent part of a frame, and nothing may
	// follow it on the wire, as gorilla does for its own writes.
	werr error
	// pendingPong is a pong left by the reader for the message writer
	// holding wlock, which sends it right after its message.
	pendingPong atomic.Pointer[[]byte]

	// Server connections (Accept) frame their binary messages here too:
	// gorilla's server write copies the first write buffer's worth of the
	// message and writes the rest with net.Buffers, which is two write
	// calls (two syscalls) through a wrapper such as tunneld's connection
	// limiter, and allocates. See writeFrame.
	// fr parses the frames a server connection receives (gorilla's reader
	// is not used on those): see readServer. rerr is the error that ended
	// the stream; closing is set during the closing handshake.
	fr      *frameReader
	rerr    error
	closing bool

	tcp  *net.TCPConn // plain TCP under the WebSocket: header and payload in one writev
	whdr [10]byte     // the frame header writev sends
	wvec [2][]byte    // writev's vector, emptied after each write
	wv   net.Buffers  // view of wvec that WriteTo consumes (a field: no allocation)
}

// writePools holds one pool of write buffers per buffer size: gorilla takes
// any buffer a pool returns, so a pool shared by two sizes would hand a
// connection configured for whole 131076-byte messages a smaller buffer,
// splitting each message into several frames and write calls.
var writePools sync.Map // int -> *sync.Pool

func writePool(size int) *sync.Pool {
	if p, ok := writePools.Load(size); ok {
		return p.(*sync.Pool)
	}
	p, _ := writePools.LoadOrStore(size, &sync.Pool{})
	return p.(*sync.Pool)
}

func newConn(ws *websocket.Conn) *Conn {
	ws.SetReadLimit(MaxMessageSize)
	c := &Conn{ws: ws, wlock: make(chan struct{}, 1), epoch: time.Now()}
	ws.SetPongHandler(func(string) error { c.noteLive(); return nil })
	ws.SetPingHandler(func(data string) error {
		c.noteLive()
		err := c.pong([]byte(data))
		if errors.Is(err, websocket.ErrCloseSent) || isTemporary(err) {
			return nil
		}
		return err
	})
	ws.SetCloseHandler(func(code int, text string) error {
		// Answer the close with the same code, as RFC 6455 asks.
		msg := websocket.FormatCloseMessage(code, "")
		if code == websocket.CloseNoStatusReceived {
			msg = websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
		}
		c.closeSent.Store(true)
		c.writeControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
		return nil
	})
	return c
}

func isTemporary(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// DialOptions configures Dial.
type DialOptions struct {
	// Header is sent with the upgrade request.
	Header http.Header
	// Subprotocols are offered in order of preference.
	Subprotocols []string
	// TLS configures wss:// connections; nil means system roots.
	TLS *tls.Config
	// Proxy returns the HTTP CONNECT proxy for the target, nil for none. If
	// Proxy is nil, ProxyFromEnvironment is used.
	Proxy func(target *url.URL) (*url.URL, error)
	// ReadBufferSize and WriteBufferSize size the connection's buffers;
	// 0 means 16 KiB and 32 KiB.
	ReadBufferSize, WriteBufferSize int
	// KeepSocketBuffers leaves the kernel's socket buffers to autotuning.
	// By default (Linux) the connection gets short kernel queues: see
	// Dial.
	KeepSocketBuffers bool
}

// ProxyFromEnvironment returns the proxy named by HTTPS_PROXY or
// https_proxy (honouring NO_PROXY), for ws:// and wss:// targets alike, as
// the reference local proxy does. User information in the proxy URL is
// sent as basic authentication.
func ProxyFromEnvironment(target *url.URL) (*url.URL, error) {
	cfg := httpproxy.Config{
		HTTPSProxy: firstEnv("HTTPS_PROXY", "https_proxy"),
		NoProxy:    firstEnv("NO_PROXY", "no_proxy"),
	}
	u := *target
	u.Scheme = "https"
	return cfg.ProxyFunc()(&u)
}

func firstEnv(names ...string) string {
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			return v
		}
	}
	return ""
}

// Dial opens a WebSocket connection to rawURL (ws:// or wss://). The
// returned response is the server's answer (its headers carry channel-id);
// a refused upgrade is a *HandshakeError.
//
// On Linux, unless opts.KeepSocketBuffers, the TCP connection gets short
// kernel queues once connected: TCP_NOTSENT_LOWAT 32 KiB, and on a link
// whose round trip is under about 8 ms SO_SNDBUF and SO_RCVBUF of twice
// the bandwidth-delay product at 2 Gbit/s, at least 32 KiB, with segments
// of at most 16 KiB (the doc comment of package wsconn says why). Through
// an HTTP CONNECT proxy the buffers keep autotuning: the round trip the
// kernel measures is the proxy's, not the path's.
func Dial(ctx context.Context, rawURL string, opts DialOptions) (*Conn, *http.Response, error) {
	proxy := opts.Proxy
	if proxy == nil {
		proxy = ProxyFromEnvironment
	}
	proxied := false // the round trip measured is then the proxy's only
	nd := &net.Dialer{}
	if !opts.KeepSocketBuffers && maxSegment > 0 {
		nd.Control = segmentControl(maxSegment)
	}
	d := websocket.Dialer{
		NetDialContext: nd.DialContext,
		Proxy: func(r *http.Request) (*url.URL, error) {
			u, err := proxy(r.URL)
			proxied = u != nil
			return u, err
		},
		TLSClientConfig:  opts.TLS,
		HandshakeTimeout: 30 * time.Second,
		Subprotocols:     opts.Subprotocols,
		ReadBufferSize:   orDefault(opts.ReadBufferSize, 16<<10),
		WriteBufferSize:  orDefault(opts.WriteBufferSize, 32<<10),
		WriteBufferPool:  writePool(orDefault(opts.WriteBufferSize, 32<<10)),
	}
	ws, resp, err := d.DialContext(ctx, rawURL, opts.Header)
	if err != nil {
		// ctx's deadline is also the socket's (connect, handshake): the
		// poller can report it before ctx's own timer has fired. Wait for
		// ctx so that a caller checking ctx.Err() sees why the dial
		// failed, rather than an i/o timeout it takes for the service's.
		if dl, ok := ctx.Deadline(); ok && ctx.Err() == nil && !time.Now().Before(dl) {
			<-ctx.Done()
		}
		if errors.Is(err, websocket.ErrBadHandshake) && resp != nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			return nil, resp, &HandshakeError{StatusCode: resp.StatusCode, Header: resp.Header, Body: string(body)}
		}
		return nil, resp, err
	}
	c := newConn(ws)
	c.client = true
	if !opts.KeepSocketBuffers {
		c.shortenQueues(!proxied) // best effort: the kernel's defaults otherwise
	}
	return c, resp, nil
}

func orDefault(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

// AcceptOptions configures Accept.
type AcceptOptions struct {
	// Subprotocol is echoed in the response; "" omits the header.
	Subprotocol string
	// Header is added to the 101 response.
	Header http.Header
	// ReadBufferSize is not used: server connections are read without a
	// buffer of their own (frames are parsed in the caller's buffer).
	// WriteBufferSize sizes the pooled buffer gorilla writes control
	// frames (and messages over TLS) with; 0 means 16 KiB.
	ReadBufferSize, WriteBufferSize int
	// KeepSocketBuffers leaves the kernel's socket buffers to autotuning.
	// By default (Linux) the connection gets the short kernel queues
	// described at Dial.
	KeepSocketBuffers bool
}

// Accept upgrades an HTTP request to a WebSocket connection. On failure the
// response has been written.
func Accept(w http.ResponseWriter, r *http.Request, opts AcceptOptions) (*Conn, error) {
	h := http.Header{}
	for k, v := range opts.Header {
		h[k] = v
	}
	if opts.Subprotocol != "" {
		h.Set("Sec-WebSocket-Protocol", opts.Subprotocol)
	}
	u := websocket.Upgrader{
		// wsconn reads server connections itself, without a buffer: the
		// smallest gorilla takes (125 bytes) rather than the 4 KiB one
		// it would keep from the HTTP server.
		ReadBufferSize:  1,
		WriteBufferSize: orDefault(opts.WriteBufferSize, 16<<10),
		WriteBufferPool: writePool(orDefault(opts.WriteBufferSize, 16<<10)),
		CheckOrigin:     func(*http.Request) bool { return true },
		Error: func(w http.ResponseWriter, r *http.Request, status int, reason error) {
			http.Error(w, reason.Error(), status)
		},
	}
	ws, err := u.Upgrade(w, r, h)
	if err != nil {
		return nil, err
	}
	c := newConn(ws)
	c.fr = &frameReader{}
	if tcp, ok := ws.NetConn().(*net.TCPConn); ok {
		c.tcp = tcp
	} else if _, ok := ws.NetConn().(*tls.Conn); !ok {
		// A wrapper exposing its connection (NetConn) is taken as a view
		// of it, as for the socket options: writes go to the TCP socket
		// under it, since net.Buffers cannot reach writev through a
		// wrapper.
		if tcp, err := c.tcpConn(); err == nil {
			c.tcp = tcp
		}
	}
	if !opts.KeepSocketBuffers {
		c.shortenQueues(true) // best effort: the kernel's defaults otherwise
	}
	return c, nil
}

// Subprotocol returns the negotiated subprotocol.
func (c *Conn) Subprotocol() string { return c.ws.Subprotocol() }

// NetConn returns the underlying connection.
func (c *Conn) NetConn() net.Conn { return c.ws.NetConn() }

// SetLiveness makes reads fail with a timeout (a net.Error) when nothing
// (message, ping or pong) arrives from the peer for d, counted from this
// call; zero turns the check off. Arriving is what the kernel sees: data
// received but not read yet, because the reader was busy elsewhere (its
// consumer full) or the process did not get the CPU, counts as a sign of
// life, so a late reader is never told that a live peer went silent.
// SetLiveness may be called again at any time, to restart the count.
func (c *Conn) SetLiveness(d time.Duration) {
	c.noteLive()
	old := time.Duration(c.live.Swap(int64(d)))
	if d == old && d > 0 {
		return // the watchdog is armed and re-arms itself
	}
	c.liveMu.Lock()
	defer c.liveMu.Unlock()
	if c.liveOver {
		return
	}
	switch {
	case d <= 0:
		if c.liveDog != nil {
			c.liveDog.Stop()
		}
	case c.liveDog == nil:
		c.liveDog = time.AfterFunc(d, c.checkLive)
	default:
		c.liveDog.Reset(d)
	}
}

// noteLive records a sign of life from the peer (a message, ping or pong
// begins, or the watchdog found its data waiting).
func (c *Conn) noteLive() {
	c.lastLive.Store(int64(time.Since(c.epoch)))
}

// checkLive is the liveness watchdog: it re-arms itself for the rest of
// the period while the peer shows signs of life, and otherwise makes
// reads fail with a timeout (a read deadline in the past).
func (c *Conn) checkLive() {
	d := time.Duration(c.live.Load())
	if d <= 0 {
		return
	}
	silent := time.Since(c.epoch) - time.Duration(c.lastLive.Load())
	if silent < d {
		c.rearmLive(d - silent)
		return
	}
	if n, err := c.unread(); err == nil && n > 0 {
		// Bytes from the peer wait in the kernel: it is alive, and the
		// reader is behind.
		c.noteLive()
		c.rearmLive(d)
		return
	}
	c.liveMu.Lock()
	over := c.liveOver
	c.liveOver = true
	c.liveMu.Unlock()
	if !over {
		c.ws.SetReadDeadline(time.Unix(1, 0))
	}
}

func (c *Conn) rearmLive(after time.Duration) {
	c.liveMu.Lock()
	if !c.liveOver && c.live.Load() > 0 {
		c.liveDog.Reset(after)
	}
	c.liveMu.Unlock()
}

// stopLive stops the watchdog for good.
func (c *Conn) stopLive() {
	c.liveMu.Lock()
	c.liveOver = true
	if c.liveDog != nil {
		c.liveDog.Stop()
	}
	c.liveMu.Unlock()
}

// unread returns the bytes received on the TCP connection under c and not
// read yet.
func (c *Conn) unread() (int, error) {
	tcp, err := c.tcpConn()
	if err != nil {
		return 0, err
	}
	return tcpUnread(tcp)
}

// Read reads from the concatenated payloads of the binary messages received.
// A text message ends the stream with ErrTextMessage (close 1003) and a
// message over MaxMessageSize with ErrMessageTooBig (close 1009), after
// the closing handshake (which takes up to 2 s if the peer does not answer;
// the connection is closed when Read returns); a close frame from the peer
// ends it with a *CloseError.
func (c *Conn) Read(p []byte) (int, error) {
	if c.fr != nil {
		return c.readServer(p)
	}
	for {
		if c.cur == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				return 0, c.mapErr(err)
			}
			c.noteLive()
			if typ != websocket.BinaryMessage {
				c.closeHandshake(CloseUnsupportedData, "text frames are not allowed", true)
				return 0, ErrTextMessage
			}
			c.cur = r
		}
		n, err := c.cur.Read(p)
		if err == io.EOF {
			c.cur = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		if err != nil {
			return n, c.mapErr(err)
		}
		return n, nil
	}
}

func (c *Conn) mapErr(err error) error {
	var ne net.Error
	if !errors.As(err, &ne) {
		// A protocol error: gorilla has sent a close frame itself.
		c.closeSent.Store(true)
	}
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return &CloseError{Code: ce.Code, Reason: ce.Text}
	}
	if errors.Is(err, websocket.ErrReadLimit) {
		// gorilla has already sent 1009 (without a reason): this only
		// waits for the reply.
		c.closeHandshake(CloseMessageTooBig, "message exceeds 131076 bytes", false)
		return ErrMessageTooBig
	}
	return err
}

// WriteMessage sends p as one binary message of one frame, without
// allocating: on a client connection (Dial) masked, with one write call;
// on a server connection (Accept) over plain TCP with one writev, over TLS
// in as few records as the frame's size allows (see writeFrame). After a
// close frame has been sent or received it returns websocket.ErrCloseSent.
func (c *Conn) WriteMessage(p []byte) (err error) {
	c.wlock <- struct{}{}
	defer func() { c.unlockWrite(err) }()
	if len(p) > MaxMessageSize {
		return c.ws.WriteMessage(websocket.BinaryMessage, p)
	}
	if c.closeSent.Load() {
		return websocket.ErrCloseSent
	}
	if c.werr != nil {
		return c.werr
	}
	if c.client {
		return c.writeMasked(p)
	}
	return c.writeFrame(p)
}

// unlockWrite ends a message write that returned err: it sends the pong
// the reader left meanwhile, if any and if the write succeeded (after a
// failed one the connection is lost), then releases wlock.
func (c *Conn) unlockWrite(err error) {
	if p := c.pendingPong.Swap(nil); p != nil && err == nil {
		// An error here is the connection's: the next write reports it.
		c.noteWriteErr(c.ws.WriteControl(websocket.PongMessage, *p, time.Now().Add(5*time.Second)))
	}
	<-c.wlock
}

// pong answers a ping. It does not wait for a message write in progress,
// which can be blocked for long by a peer that reads slowly (the reader,
// and so the whole other direction, would stop meanwhile): the pong is
// then left for that writer, which sends it right after its message. Only
// the latest ping needs an answer (RFC 6455 section 5.5.3).
func (c *Conn) pong(data []byte) error {
	select {
	case c.wlock <- struct{}{}:
		c.pendingPong.Store(nil) // superseded
	default:
		c.pendingPong.Store(&data)
		// The writer may have released the lock before seeing it.
		select {
		case c.wlock <- struct{}{}:
		default:
			return nil
		}
		p := c.pendingPong.Swap(nil)
		if p == nil { // the writer sent it
			<-c.wlock
			return nil
		}
		data = *p
	}
	defer func() { <-c.wlock }()
	return c.noteWriteErr(c.ws.WriteControl(websocket.PongMessage, data, time.Now().Add(5*time.Second)))
}

// noteWriteErr records the first error of a write made under wlock and
// returns err.
func (c *Conn) noteWriteErr(err error) error {
	if err != nil && c.werr == nil && !errors.Is(err, websocket.ErrCloseSent) {
		c.werr = err
	}
	return err
}

// maxClientHeader is the largest header of a client frame: two bytes, an
// eight-byte length and the masking key.
const maxClientHeader = 2 + 8 + 4

// maskBufs are the buffers writeMasked builds frames in, lent for one
// write so that idle connections hold none.
var maskBufs = sync.Pool{New: func() any {
	b := make([]byte, maxClientHeader+MaxMessageSize)
	return &b
}}

// writeMasked sends p as one masked binary frame (RFC 6455 section 5.3)
// with a single write call. The control frames that gorilla writes on its
// own (a close frame after a protocol error in the reader) are single
// write calls too, and net.Conn and tls.Conn never interleave the bytes of
// two calls, so frames stay whole.
//
// The caller holds wlock and has checked that the connection can write.
func (c *Conn) writeMasked(p []byte) (err error) {
	bp := maskBufs.Get().(*[]byte)
	defer maskBufs.Put(bp)
	b := *bp
	b[0] = 0x80 | websocket.BinaryMessage // FIN
	n := 2
	switch {
	case len(p) <= 125:
		b[1] = 0x80 | byte(len(p))
	case len(p) <= 0xffff:
		b[1] = 0x80 | 126
		binary.BigEndian.PutUint16(b[2:], uint16(len(p)))
		n = 4
	default:
		b[1] = 0x80 | 127
		binary.BigEndian.PutUint64(b[2:], uint64(len(p)))
		n = 10
	}
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], rand.Uint32())
	n += copy(b[n:], key[:])
	maskCopy(b[n:], p, key)
	nc := c.ws.NetConn()
	// Control writes move the socket's deadline: set ours every time.
	if err := nc.SetWriteDeadline(c.wdeadline); err != nil {
		return c.noteWriteErr(err)
	}
	_, err = nc.Write(b[:n+len(p)])
	return c.noteWriteErr(err)
}

// frameHeader writes the header of an unmasked final binary frame of n
// bytes into b and returns its length (2, 4 or 10).
func frameHeader(b []byte, n int) int {
	b[0] = 0x80 | websocket.BinaryMessage // FIN
	switch {
	case n <= 125:
		b[1] = byte(n)
		return 2
	case n <= 0xffff:
		b[1] = 126
		binary.BigEndian.PutUint16(b[2:], uint16(n))
		return 4
	default:
		b[1] = 127
		binary.BigEndian.PutUint64(b[2:], uint64(n))
		return 10
	}
}

// tlsRecord is the largest TLS record payload (crypto/tls seals and sends
// what one Write call is given as records of up to this size, one syscall
// each, once dynamic record sizing is over).
const tlsRecord = 16 << 10

// writeFrame sends p as one unmasked binary frame (a server's), without
// allocating. On plain TCP header and payload go out with one writev,
// without a copy. Otherwise (TLS) with two write calls that make as few
// records as one call would, copying at most 16 KiB: first the header
// and the head of p that is left over when the rest is whole records
// (len(p) mod 16 KiB), then the rest. Two calls are safe as no one else
// writes on the connection meanwhile: wsconn's control frames wait for
// wlock, and gorilla writes nothing of its own (its reader is not used on
// server connections).
//
// The caller holds wlock and has checked that the connection can write.
func (c *Conn) writeFrame(p []byte) (err error) {
	if c.tcp != nil {
		if err := c.tcp.SetWriteDeadline(c.wdeadline); err != nil {
			return c.noteWriteErr(err)
		}
		n := frameHeader(c.whdr[:], len(p))
		c.wvec = [2][]byte{c.whdr[:n], p}
		c.wv = c.wvec[:]
		_, err = c.wv.WriteTo(c.tcp)
		c.wvec, c.wv = [2][]byte{}, nil // p is the caller's again
		return c.noteWriteErr(err)
	}
	nc := c.ws.NetConn()
	if err := nc.SetWriteDeadline(c.wdeadline); err != nil {
		return c.noteWriteErr(err)
	}
	head := len(p) % tlsRecord
	if len(p) <= tlsRecord {
		head = len(p)
	}
	bp := headBufs.Get().(*[]byte)
	defer headBufs.Put(bp)
	b := *bp
	n := frameHeader(b, len(p))
	n += copy(b[n:], p[:head])
	if _, err = nc.Write(b[:n]); err != nil || head == len(p) {
		return c.noteWriteErr(err)
	}
	_, err = nc.Write(p[head:])
	return c.noteWriteErr(err)
}

// headBufs are the buffers writeFrame sends a frame's header and head in
// over TLS, lent for one write.
var headBufs = sync.Pool{New: func() any {
	b := make([]byte, 10+tlsRecord)
	return &b
}}

// writeControl writes a control frame once wsconn's write lock is free
// (waiting at most until deadline, as gorilla's WriteControl does).
func (c *Conn) writeControl(typ int, data []byte, deadline time.Time) error {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case c.wlock <- struct{}{}:
	case <-t.C:
		return errWriteTimeout
	}
	defer func() { <-c.wlock }()
	return c.noteWriteErr(c.ws.WriteControl(typ, data, deadline))
}

// errWriteTimeout is a control frame that could not be written before its
// deadline because a message write held the connection.
var errWriteTimeout = &timeoutError{}

type timeoutError struct{}

func (*timeoutError) Error() string   { return "wsconn: write timeout" }
func (*timeoutError) Timeout() bool   { return true }
func (*timeoutError) Temporary() bool { return true }

// SetWriteDeadline sets the deadline for message writes. Call it from the
// writing goroutine.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.wdeadline = t
	return c.ws.SetWriteDeadline(t)
}

// Ping sends a ping control frame.
func (c *Conn) Ping(payload []byte) error {
	return c.writeControl(websocket.PingMessage, payload, time.Now().Add(10*time.Second))
}

// CloseWith sends a close frame with code and reason (truncated to fit a
// control frame) and closes the connection. Only the first close has
// effect.
func (c *Conn) CloseWith(code int, reason string) error {
	var err error
	c.closeOnce.Do(func() {
		if len(reason) > 123 {
			reason = reason[:123]
		}
		c.stopLive()
		c.closeSent.Store(true)
		c.writeControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
		err = c.ws.Close()
	})
	return err
}

// closeWait bounds the closing handshake after a protocol error.
const closeWait = 2 * time.Second

// closeHandshake ends the connection after the reader found a protocol
// error: a close frame, then reading and dropping until the peer answers
// it (or closes), for at most closeWait, then the TCP close. Closing at
// once would reset the connection if the peer's data were still unread,
// and a reset can destroy the close frame before the peer reads it.
// framed says whether the WebSocket framing can still be parsed; if not
// (after an oversized frame header), raw bytes are dropped until the peer
// closes its side. It runs on the reader's goroutine.
func (c *Conn) closeHandshake(code int, reason string, framed bool) {
	c.stopLive() // closeWait bounds the wait from now
	c.SendClose(code, reason)
	// Pings must not extend the deadline; pongs cannot be sent any more.
	c.ws.SetPingHandler(nil)
	c.ws.SetPongHandler(nil)
	c.ws.SetReadDeadline(time.Now().Add(closeWait))
	if framed {
		for {
			if _, _, err := c.ws.NextReader(); err != nil {
				break // the peer's close reply (a CloseError), or the deadline
			}
		}
	} else {
		io.Copy(io.Discard, c.ws.NetConn())
	}
	c.CloseWith(code, reason) // no second close frame: gorilla refuses it
}

// SendClose sends a close frame with code and reason (truncated to fit a
// control frame) but leaves the connection open, so the peer's close reply
// can still be read: the closing handshake of RFC 6455, which spares the
// peer a TCP reset. No message can be written afterwards; Close or
// CloseWith then closes the connection (without a second close frame).
func (c *Conn) SendClose(code int, reason string) error {
	if len(reason) > 123 {
		reason = reason[:123]
	}
	c.closeSent.Store(true)
	return c.writeControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
}

// Close closes the connection with a normal close frame.
func (c *Conn) Close() error { return c.CloseWith(CloseNormal, "") }

// Abort closes the connection at once, without a close frame, as a
// dropped connection: blocked reads and writes return.
func (c *Conn) Abort() error {
	c.stopLive()
	return c.ws.NetConn().Close()
}

// SetSocketBuffers sets the kernel send and receive buffer sizes (SO_SNDBUF,
// SO_RCVBUF) of the TCP connection under c, through TLS; 0 leaves one as it
// is. A fixed size turns the kernel's autotuning off, which on loopback
// and fast links lets each buffer grow to megabytes: data queued there can
// no longer be reordered, so it delays whatever is sent after it. It
// reports an error when the connection is not TCP.
func (c *Conn) SetSocketBuffers(send, recv int) error {
	tcp, err := c.tcpConn()
	if err != nil {
		return err
	}
	if send > 0 {
		if err := tcp.SetWriteBuffer(send); err != nil {
			return err
		}
	}
	if recv > 0 {
		if err := tcp.SetReadBuffer(recv); err != nil {
			return err
		}
	}
	return nil
}
