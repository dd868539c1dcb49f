package wsconn

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode/utf8"
)

// frameReader parses the frames a connection receives, for either role:
// a server's are masked client frames, a client's unmasked server frames
// (RFC 6455 section 5.1: each side refuses the other form). It has no
// buffer of its own: the bytes are read into the caller's buffer, where
// the payload of data frames is unmasked in place (a client's just moved)
// over the frame headers. Only a partial header and a control frame's
// payload are kept between reads (about 140 bytes), so an idle connection
// holds no read buffer. Reader goroutine only.
type frameReader struct {
	role Role
	hdr  [14]byte // the current frame's header, as far as received
	nhdr int
	ctl  [maxControlPayload]byte // the current control frame's payload
	nctl int

	inFrame   bool  // the header is complete; remaining payload bytes follow
	op        byte  // the current frame's opcode
	fin       bool  // the current frame ends its message
	remaining int64 // payload bytes of the current frame not yet read
	masked    bool  // the current frame is masked (a server's reader: always)
	key       [4]byte
	keyPos    int  // offset of the next payload byte in the masking key
	inMsg     bool // a binary message has begun and not ended
	msgLen    int64
	started   bool // a binary message began: a sign of life
}

// frameEvent is what parse stopped at, besides the end of its input.
type frameEvent int

const (
	evNone    frameEvent = iota
	evControl            // a control frame is complete: op, ctl[:nctl]
	evText               // a text message begins (refused: close 1003)
	evTooBig             // a message over MaxMessageSize (close 1009)
)

// parse consumes b[in:end], bytes received from the peer. The payload of
// binary frames is unmasked and moved to b[out:] (out <= in: headers only
// shrink the data); it returns the new out and in. It stops early, with
// in at the first byte not consumed, after a complete control frame, at
// the start of a text message or an oversized one (an event), or at a
// protocol error (an error wrapping ErrProtocol).
func (r *frameReader) parse(b []byte, out, in, end int) (int, int, frameEvent, error) {
	for in < end {
		if !r.inFrame {
			// Header: 2 bytes, then the extended length and the masking key.
			need := 2
			if r.nhdr >= 2 {
				need = r.headerLen()
			}
			k := min(need-r.nhdr, end-in)
			copy(r.hdr[r.nhdr:], b[in:in+k])
			r.nhdr += k
			in += k
			if r.nhdr < need {
				continue
			}
			if need == 2 {
				if err := r.checkFirst(); err != nil {
					return out, in, evNone, err
				}
				if r.headerLen() > 2 {
					continue // the rest of the header
				}
			}
			ev, err := r.startFrame()
			if err != nil || ev != evNone {
				return out, in, ev, err
			}
			if r.remaining == 0 {
				if ev := r.endFrame(); ev != evNone {
					return out, in, ev, nil
				}
			}
			continue
		}
		k := int(min(r.remaining, int64(end-in)))
		switch {
		case r.op >= opClose && r.masked:
			maskCopy(r.ctl[r.nctl:], b[in:in+k], r.rotatedKey())
			r.nctl += k
		case r.op >= opClose:
			copy(r.ctl[r.nctl:], b[in:in+k])
			r.nctl += k
		case r.masked:
			maskCopy(b[out:out+k], b[in:in+k], r.rotatedKey())
			out += k
		default:
			if out != in {
				copy(b[out:out+k], b[in:in+k])
			}
			out += k
		}
		in += k
		r.keyPos = (r.keyPos + k) & 3
		r.remaining -= int64(k)
		if r.remaining == 0 {
			if ev := r.endFrame(); ev != evNone {
				return out, in, ev, nil
			}
		}
	}
	return out, in, evNone, nil
}

// headerLen is the length of the current header, from its first 2 bytes.
func (r *frameReader) headerLen() int {
	n := 2
	if r.hdr[1]&0x80 != 0 {
		n += 4
	}
	switch r.hdr[1] & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	return n
}

func protocolError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

// checkFirst checks the first 2 bytes of a header.
func (r *frameReader) checkFirst() error {
	b0, b1 := r.hdr[0], r.hdr[1]
	if b0&0x70 != 0 {
		return protocolError("reserved bits set (no extension was negotiated)")
	}
	switch masked := b1&0x80 != 0; {
	case r.role == RoleServer && !masked:
		return protocolError("unmasked client frame")
	case r.role == RoleClient && masked:
		return protocolError("masked server frame")
	}
	op := b0 & 0x0f
	fin := b0&0x80 != 0
	switch op {
	case opClose, opPing, opPong:
		if !fin {
			return protocolError("fragmented control frame")
		}
		if b1&0x7f > maxControlPayload {
			return protocolError("control frame payload over 125 bytes")
		}
	case opContinuation:
		if !r.inMsg {
			return protocolError("continuation frame without a message")
		}
	case opText, opBinary:
		if r.inMsg {
			return protocolError("new message before the final frame of the last")
		}
	default:
		return protocolError("reserved opcode %d", op)
	}
	return nil
}

// startFrame sets up the frame whose header is complete.
func (r *frameReader) startFrame() (frameEvent, error) {
	h := r.hdr[:r.nhdr]
	r.nhdr = 0
	var n uint64
	switch h[1] & 0x7f {
	case 126:
		n = uint64(binary.BigEndian.Uint16(h[2:]))
	case 127:
		// Lengths not in their shortest form are accepted, as gorilla did.
		n = binary.BigEndian.Uint64(h[2:])
		if n>>63 != 0 {
			return evNone, protocolError("length with its most significant bit set")
		}
	default:
		n = uint64(h[1] & 0x7f)
	}
	r.masked = h[1]&0x80 != 0
	if r.masked {
		copy(r.key[:], h[len(h)-4:])
	}
	r.keyPos = 0
	r.op = h[0] & 0x0f
	r.fin = h[0]&0x80 != 0
	switch r.op {
	case opText:
		// Set up like a binary frame, so that a closing handshake can
		// read past it.
		r.inMsg = !r.fin
		r.remaining, r.inFrame = int64(n), true
		return evText, nil
	case opBinary, opContinuation:
		if r.op == opBinary {
			r.msgLen = 0
			r.started = true
		}
		if n > MaxMessageSize || r.msgLen+int64(n) > MaxMessageSize {
			return evTooBig, nil
		}
		r.msgLen += int64(n)
		r.inMsg = !r.fin
	default:
		r.nctl = 0
	}
	r.remaining = int64(n)
	r.inFrame = true
	return evNone, nil
}

// endFrame ends the frame whose payload is complete: a control frame is
// an event.
func (r *frameReader) endFrame() frameEvent {
	r.inFrame = false
	if r.op >= opClose {
		return evControl
	}
	return evNone
}

// rotatedKey is the masking key as it applies from the next payload byte.
func (r *frameReader) rotatedKey() [4]byte {
	k, i := r.key, r.keyPos
	return [4]byte{k[i&3], k[(i+1)&3], k[(i+2)&3], k[(i+3)&3]}
}

// closePayload parses a close frame's payload: the code (1005 when
// there is none) and the reason.
func closePayload(p []byte) (int, string, error) {
	switch {
	case len(p) == 0:
		return CloseNoStatus, "", nil
	case len(p) == 1:
		return 0, "", protocolError("close frame payload of 1 byte")
	}
	code := int(binary.BigEndian.Uint16(p))
	if !validCloseCode(code) {
		return 0, "", protocolError("bad close code %d", code)
	}
	if !utf8.Valid(p[2:]) {
		return 0, "", protocolError("close reason not UTF-8")
	}
	return code, string(p[2:]), nil
}

// validCloseCode reports whether a peer may send code (RFC 6455 section
// 7.4, the IANA registry; 3000-4999 are for libraries and applications).
func validCloseCode(code int) bool {
	switch code {
	case 1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013:
		return true
	}
	return code >= 3000 && code <= 4999
}

// Read reads from the concatenated payloads of the binary messages
// received, for either role: frames are parsed out of bytes read straight
// into p, as many as the connection has (over TLS at most a record);
// moving payload over the frame headers costs nothing extra, it is
// unmasked in the same pass. Pings are answered, and pings, pongs and
// messages count as signs of life (live.go). A text message ends the
// stream with ErrTextMessage (close 1003) and a message over
// MaxMessageSize with ErrMessageTooBig (close 1009), after the closing
// handshake (which takes up to 2 s if the peer does not answer; the
// connection is closed when Read returns); a frame breaking RFC 6455
// with an error wrapping ErrProtocol, after a close frame 1002; a close
// frame from the peer, answered with the same code, with a *CloseError,
// and so does a connection that ends without one (code 1006). One
// goroutine at a time may read.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if c.rerr != nil {
			return 0, c.rerr
		}
		var n int
		var err error
		if len(c.pre) > 0 {
			n = copy(p, c.pre)
			c.pre = c.pre[n:]
		} else {
			n, err = c.nc.Read(p)
		}
		out, in := 0, 0
		for in < n && c.rerr == nil {
			var ev frameEvent
			var perr error
			out, in, ev, perr = c.fr.parse(p, out, in, n)
			if c.fr.started {
				// Once per message (however many began in this read).
				c.fr.started = false
				c.live.note()
			}
			switch {
			case perr != nil:
				c.rerr = c.protocolFail(perr)
			case ev == evControl:
				c.rerr = c.control()
			case ev == evText:
				c.closeHandshake(CloseUnsupportedData, "text frames are not allowed", p[in:n], true)
				c.rerr = ErrTextMessage
			case ev == evTooBig:
				c.closeHandshake(CloseMessageTooBig, "message exceeds 131076 bytes", nil, false)
				c.rerr = ErrMessageTooBig
			}
		}
		if err != nil && c.rerr == nil {
			c.rerr = c.readFail(err)
		}
		if out > 0 {
			return out, nil // an error waits for the next call
		}
	}
}

// readFail maps an error of the connection's Read: the end of the stream
// is an abnormal closure (a *CloseError 1006); other errors stay as they
// are. After an error that is not a net.Error (a timeout, a closed
// connection) no close frame can be answered any more.
func (c *Conn) readFail(err error) error {
	if isNetError(err) {
		return err
	}
	c.closeSent.Store(true)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return &CloseError{Code: CloseAbnormal, Reason: io.ErrUnexpectedEOF.Error()}
	}
	return err
}

// protocolFail answers a protocol error with close 1002 and returns err.
// It does not wait for the peer's answer: the framing may be lost.
func (c *Conn) protocolFail(err error) error {
	c.SendClose(CloseProtocolError, err.Error())
	return err
}

// control acts on the complete control frame in c.fr: a ping is answered
// (not while closing), a ping or pong is a sign of life, a close frame is
// answered with the same code and ends the stream with a *CloseError.
func (c *Conn) control() error {
	payload := c.fr.ctl[:c.fr.nctl]
	switch c.fr.op {
	case opPing:
		if c.closing {
			return nil
		}
		c.live.note()
		if c.closeSent.Load() {
			return nil // no pong after a close frame
		}
		err := c.pong(payload)
		if err == nil || isTimeout(err) {
			return nil
		}
		return err
	case opPong:
		if !c.closing {
			c.live.note()
		}
		return nil
	}
	code, reason, err := closePayload(payload)
	if err != nil {
		return c.protocolFail(err)
	}
	// Answer with the same code, as RFC 6455 asks (1000 for none).
	reply := code
	if code == CloseNoStatus {
		reply = CloseNormal
	}
	if !c.closeSent.Swap(true) {
		c.writeClose(reply, "")
	}
	return &CloseError{Code: code, Reason: reason}
}

// closeWait bounds the closing handshake after a protocol error.
const closeWait = 2 * time.Second

// closeHandshake ends the connection after the reader found a message it
// refuses: a close frame, then reading and dropping until the peer
// answers it (or closes), for at most closeWait, then the TCP close.
// Closing at once would reset the connection if the peer's data were
// still unread, and a reset can destroy the close frame before the peer
// reads it. rest holds the bytes read after the offending frame's header.
// framed says whether the framing can still be parsed; if not (after an
// oversized frame header), raw bytes are dropped until the peer closes
// its side. It runs on the reader's goroutine.
func (c *Conn) closeHandshake(code int, reason string, rest []byte, framed bool) {
	c.live.stop() // closeWait bounds the wait from now
	c.SendClose(code, reason)
	c.closing = true // pings are not answered and do not count
	c.nc.SetReadDeadline(time.Now().Add(closeWait))
	if !framed {
		io.Copy(io.Discard, c.nc)
	} else if !c.dropFrames(rest) {
		var buf [4 << 10]byte
		for {
			n, err := c.nc.Read(buf[:])
			if c.dropFrames(buf[:n]) || err != nil {
				break
			}
		}
	}
	c.Close(code, reason) // no second close frame
}

// dropFrames parses b and drops its data; it reports whether the stream
// ended: the peer's close frame (answered by control), or a protocol
// error.
func (c *Conn) dropFrames(b []byte) bool {
	in := 0
	for in < len(b) {
		var ev frameEvent
		var err error
		_, in, ev, err = c.fr.parse(b, in, in, len(b))
		if err != nil {
			return true
		}
		if ev == evControl && c.fr.op == opClose {
			c.control()
			return true
		}
		if ev == evTooBig {
			return true // the framing is lost
		}
	}
	return false
}

func isNetError(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne)
}
