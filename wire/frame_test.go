package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

// chunkReader returns one chunk per Read, as a WebSocket connection returns
// the payload of one binary message; a chunk larger than the caller's
// buffer takes several reads. After the last chunk it returns err, or
// io.EOF if err is nil.
type chunkReader struct {
	chunks [][]byte
	err    error
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.chunks) > 0 && len(r.chunks[0]) == 0 {
		r.chunks = r.chunks[1:]
	}
	if len(r.chunks) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0])
	r.chunks[0] = r.chunks[0][n:]
	return n, nil
}

// splitAt cuts b into chunks of the given sizes (cycled; 0 counts as 1).
func splitAt(b []byte, sizes []int) [][]byte {
	if len(sizes) == 0 {
		return [][]byte{b}
	}
	var chunks [][]byte
	for i := 0; len(b) > 0; i++ {
		n := min(max(sizes[i%len(sizes)], 1), len(b))
		chunks = append(chunks, b[:n])
		b = b[n:]
	}
	return chunks
}

// recordWriter is a MessageWriter keeping a copy of every message.
type recordWriter struct {
	msgs [][]byte
	err  error
}

func (w *recordWriter) WriteMessage(p []byte) error {
	if w.err != nil {
		return w.err
	}
	w.msgs = append(w.msgs, bytes.Clone(p))
	return nil
}

// frameStream returns the tunnel frames holding bodies.
func frameStream(bodies ...[]byte) []byte {
	var b []byte
	for _, body := range bodies {
		b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
		b = append(b, body...)
	}
	return b
}

func TestFrameReaderSplits(t *testing.T) {
	bodies := [][]byte{
		(&Message{Type: TypeServiceIDs, AvailableServiceIDs: []string{"SSH1"}}).Marshal(),
		(&Message{Type: TypeStreamStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1}).Marshal(),
		(&Message{Type: TypeData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1, Payload: bytes.Repeat([]byte("x"), 1000)}).Marshal(),
		bytes.Repeat([]byte{0xaa}, MaxMessageSize), // largest frame, not decoded
		{0x08, 0x04},
	}
	stream := frameStream(bodies...)
	for _, tc := range []struct {
		name  string
		sizes []int
	}{
		{"one chunk", nil},
		{"bytewise", []int{1}},
		{"header split", []int{1, 3, 2, 7}},
		{"websocket messages", []int{MaxWebSocketMessageSize}},
		{"4096-byte frames", []int{4096}},
		{"odd", []int{65537, 3, 65535}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fr := NewFrameReader(&chunkReader{chunks: splitAt(bytes.Clone(stream), tc.sizes)})
			for i, want := range bodies {
				got, err := fr.NextFrame()
				if err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("frame %d: got %d bytes, want %d", i, len(got), len(want))
				}
			}
			for range 2 {
				if _, err := fr.NextFrame(); err != io.EOF {
					t.Fatalf("after the last frame: %v, want io.EOF", err)
				}
			}
		})
	}
}

func TestFrameReaderEnds(t *testing.T) {
	type step struct {
		frame string // hex body expected, when err is nil
		err   error
	}
	for _, tc := range []struct {
		name  string
		input string
		steps []step
	}{
		{"empty stream", "", []step{{err: io.EOF}}},
		{"one header byte", "00", []step{{err: io.ErrUnexpectedEOF}}},
		{"header only", "00 02", []step{{err: io.ErrUnexpectedEOF}}},
		{"short body", "00 02 08", []step{{err: io.ErrUnexpectedEOF}}},
		{"one frame", "00 02 0804", []step{{frame: "0804"}, {err: io.EOF}}},
		{"frame then stray byte", "00 02 0804 00", []step{{frame: "0804"}, {err: io.ErrUnexpectedEOF}}},
		{"frame then short frame", "00 02 0804 00 03 08", []step{{frame: "0804"}, {err: io.ErrUnexpectedEOF}}},
		{"largest length, short", "ff ff 00", []step{{err: io.ErrUnexpectedEOF}}},
		{"zero-length frame", "00 00 00 02 0804", []step{{err: ErrMalformed}, {frame: "0804"}, {err: io.EOF}}},
		{"zero-length frames", "00 00 00 00", []step{{err: ErrMalformed}, {err: ErrMalformed}, {err: io.EOF}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, sizes := range [][]int{nil, {1}} {
				fr := NewFrameReader(&chunkReader{chunks: splitAt(unhex(t, tc.input), sizes)})
				for i, s := range tc.steps {
					got, err := fr.NextFrame()
					if s.err != nil {
						// io.EOF must be exactly io.EOF, callers compare with ==.
						if s.err == io.EOF && err != io.EOF || !errors.Is(err, s.err) {
							t.Fatalf("chunks %v, step %d: err = %v, want %v", sizes, i, err, s.err)
						}
						continue
					}
					if err != nil || !bytes.Equal(got, unhex(t, s.frame)) {
						t.Fatalf("chunks %v, step %d: got % x, %v; want %s", sizes, i, got, err, s.frame)
					}
				}
			}
		})
	}
}

func TestFrameReaderReadError(t *testing.T) {
	boom := errors.New("connection lost")
	for _, input := range []string{"", "00", "00 05 08", "00 02 0804"} {
		fr := NewFrameReader(&chunkReader{chunks: [][]byte{unhex(t, input)}, err: boom})
		var err error
		for range 3 {
			if _, err = fr.NextFrame(); err != nil {
				break
			}
		}
		if !errors.Is(err, boom) {
			t.Errorf("input %q: err = %v, want the reader's error", input, err)
		}
	}
}

func TestFrameReaderNext(t *testing.T) {
	msgs := []Message{
		{Type: TypeServiceIDs, AvailableServiceIDs: []string{"SSH1", "HTTP1"}},
		{Type: TypeStreamStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1},
		{Type: TypeData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1, Payload: []byte("hello")},
	}
	var stream []byte
	for i := range msgs {
		var err error
		if stream, err = AppendFrame(stream, &msgs[i]); err != nil {
			t.Fatal(err)
		}
	}
	// A frame that is not a Message, one with an oversized payload, then a
	// good one: bad frames are consumed, reading goes on.
	stream = append(stream, frameStream(unhex(t, "40 01"))...)
	big := (&Message{Type: TypeData, StreamID: 1, Payload: make([]byte, MaxPayloadSize+1)}).Marshal()
	stream = append(stream, frameStream(big)...)
	stream, _ = AppendFrame(stream, &Message{Type: TypeStreamReset, StreamID: 1})

	fr := NewFrameReader(&chunkReader{chunks: splitAt(stream, []int{3})})
	for i := range msgs {
		m, err := fr.Next()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if d := diffMessages(msgs[i], *m); d != "" {
			t.Fatalf("message %d (-want +got):\n%s", i, d)
		}
	}
	if _, err := fr.Next(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("unknown field: %v, want ErrMalformed", err)
	}
	if _, err := fr.Next(); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized payload: %v, want ErrTooLarge", err)
	}
	m, err := fr.Next()
	if err != nil || m.Type != TypeStreamReset {
		t.Fatalf("after bad frames: %v, %v", m, err)
	}
	if _, err := fr.Next(); err != io.EOF {
		t.Fatalf("end: %v, want io.EOF", err)
	}
}

// TestFrameReaderPayloadAppend checks that appending to a returned payload
// cannot overwrite frames still in the reader's buffer.
func TestFrameReaderPayloadAppend(t *testing.T) {
	var stream []byte
	stream, _ = AppendFrame(stream, &Message{Type: TypeData, StreamID: 1, Payload: []byte("first")})
	stream, _ = AppendFrame(stream, &Message{Type: TypeData, StreamID: 1, Payload: []byte("second")})
	fr := NewFrameReader(bytes.NewReader(stream))
	m, err := fr.Next()
	if err != nil {
		t.Fatal(err)
	}
	_ = append(m.Payload, strings.Repeat("!", 64)...)
	m, err = fr.Next()
	if err != nil || string(m.Payload) != "second" {
		t.Fatalf("second frame: %v, %v", m, err)
	}
}

func TestFrameReaderBufferedAndReset(t *testing.T) {
	stream := frameStream([]byte{8, 1}, []byte{8, 2, 16, 1}, []byte{8, 3})
	fr := NewFrameReader(bytes.NewReader(stream))
	if _, err := fr.NextFrame(); err != nil {
		t.Fatal(err)
	}
	if got, want := fr.Buffered(), len(stream)-4; got != want {
		t.Fatalf("Buffered = %d, want %d", got, want)
	}
	fr.Reset(bytes.NewReader(frameStream([]byte{8, 4})))
	if fr.Buffered() != 0 {
		t.Fatalf("Buffered after Reset = %d", fr.Buffered())
	}
	got, err := fr.NextFrame()
	if err != nil || !bytes.Equal(got, []byte{8, 4}) {
		t.Fatalf("after Reset: % x, %v", got, err)
	}
	if _, err := fr.NextFrame(); err != io.EOF {
		t.Fatalf("after Reset: %v, want io.EOF", err)
	}
}

func TestFrameReaderOwnsItsBuffer(t *testing.T) {
	src := bufio.NewReaderSize(bytes.NewReader(frameStream([]byte{8, 4})), 1<<20)
	fr := NewFrameReader(src)
	if fr.br == src {
		t.Fatal("FrameReader adopted the caller's bufio.Reader")
	}
	if fr.br.Size() != readerBufferSize {
		t.Fatalf("buffer of %d bytes, want %d", fr.br.Size(), readerBufferSize)
	}
	fr.Reset(bytes.NewReader(nil))
	if got, err := src.Peek(2); err != nil || !bytes.Equal(got, []byte{0, 2}) {
		t.Fatalf("Reset touched the caller's reader: % x, %v", got, err)
	}
}

// FuzzFrameReaderSplit writes frames whose sizes come from the fuzzer, cuts
// the stream into WebSocket messages at fuzzer-chosen sizes, and checks that
// the same messages come out.
func FuzzFrameReaderSplit(f *testing.F) {
	f.Add([]byte{0, 5, 1, 0}, []byte{0, 1})
	f.Add([]byte{0xfc, 0x00, 0xfc, 0x00, 0, 1}, []byte{0x02, 0x00, 0x00, 0x03})
	f.Add([]byte{0x40, 0x00}, []byte{0x10, 0x00})
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8}, []byte{0xff, 0xff, 0, 1, 0, 2})
	f.Fuzz(func(t *testing.T, sizes, cuts []byte) {
		const maxFrames = 32
		var msgs []Message
		var stream []byte
		for i := 0; i+1 < len(sizes) && len(msgs) < maxFrames; i += 2 {
			n := int(binary.BigEndian.Uint16(sizes[i:])) % (MaxPayloadSize + 1)
			m := Message{
				Type:         Type(i/2%7 + 1),
				StreamID:     int32(i + 1),
				Payload:      bytes.Repeat([]byte{byte(i)}, n),
				ConnectionID: uint32(n),
			}
			if i%3 == 0 {
				m.ServiceID = "SSH1"
			}
			var err error
			if stream, err = AppendFrame(stream, &m); err != nil {
				t.Fatalf("AppendFrame: %v", err)
			}
			msgs = append(msgs, m)
		}
		var chunkSizes []int
		for i := 0; i+1 < len(cuts); i += 2 {
			chunkSizes = append(chunkSizes, int(binary.BigEndian.Uint16(cuts[i:])))
		}
		fr := NewFrameReader(&chunkReader{chunks: splitAt(stream, chunkSizes)})
		for i := range msgs {
			got, err := fr.Next()
			if err != nil {
				t.Fatalf("message %d of %d: %v", i, len(msgs), err)
			}
			if d := diffMessages(msgs[i], *got); d != "" {
				t.Fatalf("message %d (-want +got):\n%s", i, d)
			}
		}
		if _, err := fr.Next(); err != io.EOF {
			t.Fatalf("after the last frame: %v, want io.EOF", err)
		}
	})
}

// FuzzFrameReaderGarbage feeds arbitrary bytes, cut at arbitrary points,
// and compares what NextFrame and Next return with a direct parse of the
// bytes. The reader never panics and never holds more than its buffer.
func FuzzFrameReaderGarbage(f *testing.F) {
	f.Add([]byte{}, []byte{})
	f.Add([]byte{0, 2, 8, 4, 0, 0, 0}, []byte{1})
	f.Add([]byte{0xff, 0xff, 1, 2, 3}, []byte{2, 1})
	f.Add(frameStream([]byte{8, 1, 16, 1, 0x22, 1, 'x'}, []byte{0x40, 1}), []byte{3, 5})
	f.Fuzz(func(t *testing.T, data, cuts []byte) {
		var sizes []int
		for _, c := range cuts {
			sizes = append(sizes, int(c))
		}
		// The expected results, parsed directly.
		type result struct {
			frame []byte
			err   error
		}
		var want []result
		for b := data; ; {
			if len(b) == 0 {
				want = append(want, result{err: io.EOF})
				break
			}
			if len(b) < FrameHeaderSize {
				want = append(want, result{err: io.ErrUnexpectedEOF})
				break
			}
			n := int(binary.BigEndian.Uint16(b))
			if n == 0 {
				want = append(want, result{err: ErrMalformed})
				b = b[FrameHeaderSize:]
				continue
			}
			if len(b) < FrameHeaderSize+n {
				want = append(want, result{err: io.ErrUnexpectedEOF})
				break
			}
			want = append(want, result{frame: b[FrameHeaderSize : FrameHeaderSize+n]})
			b = b[FrameHeaderSize+n:]
		}

		raw := NewFrameReader(&chunkReader{chunks: splitAt(bytes.Clone(data), sizes)})
		dec := NewFrameReader(&chunkReader{chunks: splitAt(bytes.Clone(data), sizes)})
		for i, w := range want {
			got, err := raw.NextFrame()
			if w.err != nil {
				if w.err == io.EOF && err != io.EOF || !errors.Is(err, w.err) {
					t.Fatalf("result %d: NextFrame err = %v, want %v", i, err, w.err)
				}
			} else if err != nil || !bytes.Equal(got, w.frame) {
				t.Fatalf("result %d: NextFrame = % x, %v; want % x", i, got, err, w.frame)
			}
			if b := raw.Buffered(); b < 0 || b > readerBufferSize {
				t.Fatalf("Buffered = %d", b)
			}

			m, err := dec.Next()
			if w.err != nil {
				if !errors.Is(err, w.err) {
					t.Fatalf("result %d: Next err = %v, want %v", i, err, w.err)
				}
				continue
			}
			var ref Message
			refErr := ref.Unmarshal(w.frame)
			switch {
			case refErr != nil && err == nil, refErr == nil && err != nil:
				t.Fatalf("result %d: Next err = %v, Unmarshal err = %v", i, err, refErr)
			case refErr == nil:
				if d := diffMessages(ref, *m); d != "" {
					t.Fatalf("result %d: Next differs from Unmarshal:\n%s", i, d)
				}
			}
		}
		for _, fr := range []*FrameReader{raw, dec} {
			if fr.br.Size() != readerBufferSize {
				t.Fatalf("buffer grew to %d bytes", fr.br.Size())
			}
		}
	})
}

// SplitFrame finds whole frames in a buffer as FrameReader finds them in
// a stream: sizes, incomplete tails, an empty frame refused.
func TestSplitFrame(t *testing.T) {
	a, _ := AppendFrame(nil, &Message{Type: TypeData, StreamID: 1, Payload: []byte("one")})
	b, _ := AppendFrame(nil, &Message{Type: TypeStreamReset, StreamID: 1})
	buf := append(append([]byte(nil), a...), b...)
	for _, tc := range []struct {
		in   []byte
		n    int
		fail bool
	}{
		{nil, 0, false},
		{buf[:1], 0, false},
		{buf[:len(a)-1], 0, false},
		{buf[:len(a)], len(a), false},
		{buf, len(a), false},
		{buf[len(a):], len(b), false},
		{[]byte{0, 0, 1}, 0, true},
	} {
		n, err := SplitFrame(tc.in)
		if n != tc.n || (err != nil) != tc.fail || (err != nil && !errors.Is(err, ErrMalformed)) {
			t.Errorf("SplitFrame(%x) = %d, %v; want %d, error %v", tc.in, n, err, tc.n, tc.fail)
		}
	}
}

// FuzzSplitFrame: splitting a buffer with SplitFrame gives the frames
// FrameReader reads from the same bytes as a stream.
func FuzzSplitFrame(f *testing.F) {
	a, _ := AppendFrame(nil, &Message{Type: TypeData, StreamID: 1, Payload: []byte("one")})
	f.Add(append(a, 0, 3, 1))
	f.Add([]byte{0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := NewFrameReader(bytes.NewReader(b))
		rest := b
		for {
			n, serr := SplitFrame(rest)
			want, rerr := fr.NextFrame()
			switch {
			case serr != nil:
				if !errors.Is(rerr, ErrMalformed) {
					t.Fatalf("SplitFrame: %v, FrameReader: %v", serr, rerr)
				}
				return
			case n == 0:
				if rerr == nil {
					t.Fatalf("SplitFrame needs more, FrameReader read a frame of %d bytes", len(want))
				}
				return
			}
			if rerr != nil || !bytes.Equal(rest[FrameHeaderSize:n], want) {
				t.Fatalf("SplitFrame: %d bytes, FrameReader: %d bytes, %v", n, len(want), rerr)
			}
			rest = rest[n:]
		}
	})
}
