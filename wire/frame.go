package wire

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
)

// errEmptyFrame is a length prefix of 0: no Message encodes to nothing
// the protocol allows.
var errEmptyFrame = fmt.Errorf("%w: empty tunnel frame", ErrMalformed)

// SplitFrame reports the tunnel frame at the start of b, for code that
// reads into buffers of its own and hands frames on without copying (as
// tunneld's relay does): n is the frame's size with its 2-byte length
// prefix, the encoded Message being b[FrameHeaderSize:n]; n is 0 when b
// does not hold the whole frame yet. A length prefix of 0 is ErrMalformed.
// A frame never exceeds FrameHeaderSize+MaxMessageSize bytes (the
// prefix's range), so a buffer of that size always holds one. FrameReader
// splits its stream with it.
func SplitFrame(b []byte) (n int, err error) {
	if len(b) < FrameHeaderSize {
		return 0, nil
	}
	k := int(binary.BigEndian.Uint16(b))
	if k == 0 {
		return 0, errEmptyFrame
	}
	if n = FrameHeaderSize + k; n > len(b) {
		return 0, nil
	}
	return n, nil
}

// FrameReader reads tunnel frames from a byte stream: the concatenated
// payloads of the WebSocket binary messages received, in order. Frames may
// span message boundaries and one message may hold many frames.
type FrameReader struct {
	br   *bufio.Reader
	last int // bytes of the previous frame still to discard
	msg  Message
}

// readerBufferSize holds the largest frame, so Next can return views into the
// buffer instead of copying.
const readerBufferSize = FrameHeaderSize + MaxMessageSize

// NewFrameReader returns a FrameReader reading from r. Its buffer is
// allocated once, sized for the largest frame, and is all it ever holds.
func NewFrameReader(r io.Reader) *FrameReader {
	// Not bufio.NewReaderSize(r, ...): it would adopt r itself when r is a
	// large enough *bufio.Reader, and Reset would then reset the caller's.
	br := bufio.NewReaderSize(nil, readerBufferSize)
	br.Reset(r)
	return &FrameReader{br: br}
}

// Reset makes fr read from r, keeping its buffer.
func (fr *FrameReader) Reset(r io.Reader) {
	fr.br.Reset(r)
	fr.last = 0
}

// NextFrame returns the encoded Message of the next tunnel frame. The slice
// aliases fr's buffer and is valid until the next call. The length prefix is
// checked against MaxMessageSize before anything is read. At a clean end of
// stream between frames it returns io.EOF; a stream ending inside a frame
// returns io.ErrUnexpectedEOF.
func (fr *FrameReader) NextFrame() ([]byte, error) {
	if fr.last > 0 {
		if _, err := fr.br.Discard(fr.last); err != nil {
			return nil, err
		}
		fr.last = 0
	}
	hdr, err := fr.br.Peek(FrameHeaderSize)
	if err != nil {
		if err == io.EOF && len(hdr) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if _, err := SplitFrame(hdr); err != nil {
		fr.br.Discard(FrameHeaderSize)
		return nil, err
	}
	frame, err := fr.br.Peek(FrameHeaderSize + int(binary.BigEndian.Uint16(hdr)))
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	n, _ := SplitFrame(frame)
	fr.last = n
	return frame[FrameHeaderSize:n], nil
}

// Next reads and decodes the next tunnel frame. The returned Message is
// owned by fr and, like its Payload, valid until the next call.
func (fr *FrameReader) Next() (*Message, error) {
	b, err := fr.NextFrame()
	if err != nil {
		return nil, err
	}
	if err := fr.msg.Unmarshal(b); err != nil {
		return nil, err
	}
	return &fr.msg, nil
}

// Buffered returns the number of bytes read from the stream but not yet
// returned as frames.
func (fr *FrameReader) Buffered() int { return fr.br.Buffered() - fr.last }

// AppendFrame appends m as a tunnel frame (length prefix and encoding) to b.
// It fails with ErrTooLarge if the payload or the encoding exceeds the
// protocol limits, and with ErrMalformed if m encodes to nothing (every field
// zero), since receivers reject empty frames. On error b is returned
// unchanged.
func AppendFrame(b []byte, m *Message) ([]byte, error) {
	n, err := frameSize(m)
	if err != nil {
		return b, err
	}
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	return m.AppendMarshal(b), nil
}

// frameSize returns the size of m's encoding after checking it against the
// protocol limits.
func frameSize(m *Message) (int, error) {
	if len(m.Payload) > MaxPayloadSize {
		return 0, fmt.Errorf("%w: payload of %d bytes exceeds %d", ErrTooLarge, len(m.Payload), MaxPayloadSize)
	}
	n := m.Size()
	if n > MaxMessageSize {
		return 0, fmt.Errorf("%w: message of %d bytes exceeds %d", ErrTooLarge, n, MaxMessageSize)
	}
	if n == 0 {
		return 0, fmt.Errorf("%w: empty message (type not set)", ErrMalformed)
	}
	return n, nil
}

// MessageWriter sends one WebSocket binary message per call. The slice is
// only borrowed for the duration of the call.
type MessageWriter interface {
	WriteMessage(p []byte) error
}

// FrameWriter coalesces tunnel frames into WebSocket binary messages of at
// most MaxWebSocketMessageSize bytes. Frames are never split across
// messages. Nothing is sent until the buffer would overflow or Flush is
// called, so callers flush when they have nothing more to send right away.
type FrameWriter struct {
	w   MessageWriter
	buf []byte
	max int
}

// NewFrameWriter returns a FrameWriter sending to w in messages of at most
// maxMessage bytes (0 or anything above MaxWebSocketMessageSize means
// MaxWebSocketMessageSize; the value is raised to hold at least one largest
// frame).
func NewFrameWriter(w MessageWriter, maxMessage int) *FrameWriter {
	if maxMessage <= 0 || maxMessage > MaxWebSocketMessageSize {
		maxMessage = MaxWebSocketMessageSize
	}
	maxMessage = max(maxMessage, FrameHeaderSize+MaxMessageSize)
	return &FrameWriter{w: w, max: maxMessage}
}

// Write appends m as a tunnel frame, first sending the buffered frames as one
// message if m would not fit beside them. A message AppendFrame would refuse
// is refused the same way, and nothing is sent or buffered for it.
func (fw *FrameWriter) Write(m *Message) error {
	n, err := frameSize(m)
	if err != nil {
		return err
	}
	if fw.buf == nil {
		fw.buf = make([]byte, 0, fw.max)
	}
	if len(fw.buf)+FrameHeaderSize+n > fw.max {
		if err := fw.Flush(); err != nil {
			return err
		}
	}
	fw.buf = binary.BigEndian.AppendUint16(fw.buf, uint16(n))
	fw.buf = m.AppendMarshal(fw.buf)
	return nil
}

// WriteFrame appends an already encoded Message (without length prefix) as
// a tunnel frame, first sending the buffered frames if it would not fit
// beside them. It is used to forward frames without encoding them again; the
// bytes are copied, not checked. An empty frame wraps ErrMalformed, one over
// MaxMessageSize ErrTooLarge.
func (fw *FrameWriter) WriteFrame(encoded []byte) error {
	if len(encoded) == 0 {
		return fmt.Errorf("%w: empty tunnel frame", ErrMalformed)
	}
	if len(encoded) > MaxMessageSize {
		return fmt.Errorf("%w: frame of %d bytes exceeds %d", ErrTooLarge, len(encoded), MaxMessageSize)
	}
	if fw.buf == nil {
		fw.buf = make([]byte, 0, fw.max)
	}
	if len(fw.buf)+FrameHeaderSize+len(encoded) > fw.max {
		if err := fw.Flush(); err != nil {
			return err
		}
	}
	fw.buf = binary.BigEndian.AppendUint16(fw.buf, uint16(len(encoded)))
	fw.buf = append(fw.buf, encoded...)
	return nil
}

// Buffered returns the number of bytes waiting to be sent.
func (fw *FrameWriter) Buffered() int { return len(fw.buf) }

// Available returns how many more bytes fit in the current message.
func (fw *FrameWriter) Available() int { return fw.max - len(fw.buf) }

// Flush sends the buffered frames as one WebSocket message. It does nothing
// when no frame is buffered. The buffer is emptied even when WriteMessage
// fails: after a write error the connection is unusable and the frames are
// lost.
func (fw *FrameWriter) Flush() error {
	if len(fw.buf) == 0 {
		return nil
	}
	err := fw.w.WriteMessage(fw.buf)
	fw.buf = fw.buf[:0]
	return err
}
