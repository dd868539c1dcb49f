package wsconn

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// ErrProtocol reports a frame from the peer that breaks RFC 6455 (an
// unmasked client frame, reserved bits or opcodes, a bad control frame, a
// continuation without a start): the connection is answered with close
// 1002. The error wrapping it says which rule.
var ErrProtocol = errors.New("wsconn: protocol error")

// Frame opcodes (RFC 6455 section 5.2).
const (
	opContinuation = 0
	opText         = 1
	opBinary       = 2
	opClose        = 8
	opPing         = 9
	opPong         = 10
)

// maxControlPayload is the largest control frame payload.
const maxControlPayload = 125

// frameReader parses the frames a server receives (masked client frames)
// out of the bytes read from the connection, without a buffer of its own:
// the bytes are read into the caller's buffer, where the payload of data
// frames is unmasked in place and moved over the frame headers. Only a
// partial header and a control frame's payload are kept between reads
// (about 140 bytes), so an idle connection holds no read buffer. Reader
// goroutine only.
type frameReader struct {
	hdr  [14]byte // the current frame's header, as far as received
	nhdr int
	ctl  [maxControlPayload]byte // the current control frame's payload
	nctl int

	inFrame   bool  // the header is complete; remaining payload bytes follow
	op        byte  // the current frame's opcode
	fin       bool  // the current frame ends its message
	remaining int64 // payload bytes of the current frame not yet read
	key       [4]byte
	keyPos    int  // offset of the next payload byte in the masking key
	inMsg     bool // a binary message has begun and not ended
	msgLen    int64
	started   bool // a binary message began: the liveness deadline restarts
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
				continue // the rest of the header (a client's has a key)
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
		if r.op >= opClose {
			maskCopy(r.ctl[r.nctl:], b[in:in+k], r.rotatedKey())
			r.nctl += k
		} else {
			maskCopy(b[out:out+k], b[in:in+k], r.rotatedKey())
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
	switch r.hdr[1] & 0x7f {
	case 126:
		return 2 + 2 + 4
	case 127:
		return 2 + 8 + 4
	}
	return 2 + 4
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
	if b1&0x80 == 0 {
		return protocolError("unmasked client frame")
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
	copy(r.key[:], h[len(h)-4:])
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
		return 1005, "", nil // CloseNoStatusReceived
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

// readServer is Read on a server connection: frames are parsed by c.fr
// out of bytes read straight into p, as many as the connection has (over
// TLS at most a record). Moving payload over the frame headers before it
// costs nothing extra: it is unmasked in the same pass.
func (c *Conn) readServer(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	nc := c.ws.NetConn()
	for {
		if c.rerr != nil {
			return 0, c.rerr
		}
		n, err := nc.Read(p)
		out, in := 0, 0
		for in < n && c.rerr == nil {
			var ev frameEvent
			var perr error
			out, in, ev, perr = c.fr.parse(p, out, in, n)
			if c.fr.started {
				// As gorilla's reader did it, once per message (however
				// many began in this read).
				c.fr.started = false
				c.noteLive()
			}
			switch {
			case perr != nil:
				c.rerr = c.protocolFail(perr)
			case ev == evControl:
				c.rerr = c.control()
			case ev == evText:
				c.closeHandshakeServer(CloseUnsupportedData, "text frames are not allowed", p[in:n])
				c.rerr = ErrTextMessage
			case ev == evTooBig:
				c.closeHandshake(CloseMessageTooBig, "message exceeds 131076 bytes", false)
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

// readFail maps an error of the connection's Read as gorilla did: the end
// of the stream is an abnormal closure (a *CloseError 1006); other errors
// stay as they are. After an error that is not a net.Error (a timeout, a
// closed connection) no close frame can be answered any more.
func (c *Conn) readFail(err error) error {
	if isNetError(err) {
		return err
	}
	c.closeSent.Store(true)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return &CloseError{Code: websocket.CloseAbnormalClosure, Reason: io.ErrUnexpectedEOF.Error()}
	}
	return err
}

// protocolFail answers a protocol error with close 1002 and returns err.
// Like gorilla, it does not wait for the peer's answer: the framing may be
// lost.
func (c *Conn) protocolFail(err error) error {
	reason := err.Error()
	if len(reason) > maxControlPayload-2 {
		reason = reason[:maxControlPayload-2]
	}
	c.SendClose(CloseProtocolError, reason)
	return err
}

// control acts on the complete control frame in c.fr: a ping is answered
// (not while closing), a ping or pong restarts the liveness deadline, a
// close frame is answered with the same code and ends the stream with a
// *CloseError.
func (c *Conn) control() error {
	payload := c.fr.ctl[:c.fr.nctl]
	switch c.fr.op {
	case opPing:
		if c.closing {
			return nil
		}
		c.noteLive()
		err := c.pong(append([]byte(nil), payload...))
		if err == nil || errors.Is(err, websocket.ErrCloseSent) || isTemporary(err) {
			return nil
		}
		return err
	case opPong:
		if !c.closing {
			c.noteLive()
		}
		return nil
	}
	code, reason, err := closePayload(payload)
	if err != nil {
		return c.protocolFail(err)
	}
	// Answer with the same code, as RFC 6455 asks (1000 for none).
	reply := code
	if code == websocket.CloseNoStatusReceived {
		reply = CloseNormal
	}
	c.closeSent.Store(true)
	c.writeControl(websocket.CloseMessage, websocket.FormatCloseMessage(reply, ""), time.Now().Add(time.Second))
	return &CloseError{Code: code, Reason: reason}
}

// closeHandshakeServer is closeHandshake for a server connection whose
// framing is intact: rest holds the bytes read after the offending frame's
// header, parsed (and dropped) before reading on.
func (c *Conn) closeHandshakeServer(code int, reason string, rest []byte) {
	c.stopLive() // closeWait bounds the wait from now
	c.SendClose(code, reason)
	c.closing = true // pings are not answered and do not extend the deadline
	c.ws.SetReadDeadline(time.Now().Add(closeWait))
	if !c.dropFrames(rest) {
		var buf [4 << 10]byte
		nc := c.ws.NetConn()
		for {
			n, err := nc.Read(buf[:])
			if c.dropFrames(buf[:n]) || err != nil {
				break
			}
		}
	}
	c.CloseWith(code, reason) // no second close frame: gorilla refuses it
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
