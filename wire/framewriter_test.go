package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestAppendFrame(t *testing.T) {
	for _, tc := range []struct {
		name    string
		msg     Message
		want    string // hex, when wantErr is nil
		wantErr error
	}{
		{name: "stream reset", msg: Message{Type: TypeStreamReset, StreamID: 5}, want: "0004 0803 1005"},
		{name: "session reset", msg: Message{Type: TypeSessionReset}, want: "0002 0804"},
		{name: "largest payload", msg: Message{Type: TypeData, StreamID: 1, Payload: make([]byte, MaxPayloadSize)}},
		{name: "empty message", msg: Message{}, wantErr: ErrMalformed},
		{name: "payload too large", msg: Message{Type: TypeData, StreamID: 1, Payload: make([]byte, MaxPayloadSize+1)}, wantErr: ErrTooLarge},
		{name: "encoding too large", msg: Message{Type: TypeServiceIDs, AvailableServiceIDs: manyIDs(MaxMessageSize)}, wantErr: ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := []byte("keep")
			got, err := AppendFrame(bytes.Clone(prefix), &tc.msg)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				if !bytes.Equal(got, prefix) {
					t.Fatalf("failed AppendFrame changed the buffer: % x", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := append(bytes.Clone(prefix), frameStream(tc.msg.Marshal())...)
			if tc.want != "" && !bytes.Equal(want[len(prefix):], unhex(t, tc.want)) {
				t.Fatalf("table: frame % x, want %s", want[len(prefix):], tc.want)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("AppendFrame = % x\nwant % x", got, want)
			}
		})
	}
}

// manyIDs returns enough 10-byte service IDs to encode to more than n bytes.
func manyIDs(n int) []string {
	ids := make([]string, n/12+1)
	for i := range ids {
		ids[i] = "0123456789"
	}
	return ids
}

func TestNewFrameWriterLimit(t *testing.T) {
	for _, tc := range []struct{ in, want int }{
		{0, MaxWebSocketMessageSize},
		{-1, MaxWebSocketMessageSize},
		{MaxWebSocketMessageSize + 1, MaxWebSocketMessageSize},
		{MaxWebSocketMessageSize, MaxWebSocketMessageSize},
		{1000, FrameHeaderSize + MaxMessageSize},
		{70000, 70000},
	} {
		if got := NewFrameWriter(&recordWriter{}, tc.in).Available(); got != tc.want {
			t.Errorf("NewFrameWriter(%d): Available = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// TestFrameWriterCoalesce writes sequences of messages and checks that they
// arrive in order, packed greedily into messages within the limit, with no
// frame split across messages.
func TestFrameWriterCoalesce(t *testing.T) {
	sized := func(sizes ...int) []Message {
		var msgs []Message
		for i, n := range sizes {
			msgs = append(msgs, Message{Type: TypeData, StreamID: 1, ServiceID: "SSH1", ConnectionID: uint32(i + 1), Payload: bytes.Repeat([]byte{byte(i)}, n)})
		}
		return msgs
	}
	repeat := func(n, size int) []int {
		s := make([]int, n)
		for i := range s {
			s[i] = size
		}
		return s
	}
	for _, tc := range []struct {
		name       string
		limit      int
		msgs       []Message
		wantWrites int // 0: don't check
	}{
		{"16KiB", 0, sized(repeat(100, 16<<10)...), 0},
		{"largest", 0, sized(repeat(9, MaxPayloadSize)...), 5}, // two per message
		{"small", 0, sized(repeat(5000, 64)...), 0},
		{"mixed", 0, sized(1, MaxPayloadSize, 7, 40000, 40000, 40000, 3, MaxPayloadSize, MaxPayloadSize, 100), 0},
		{"raised limit", 1000, sized(repeat(10, 1000)...), 1},
		{"70000", 70000, sized(repeat(10, 30000)...), 5},
		{"exact fit", 0, sized(repeat(6, 43674)...), 2}, // 3 frames of 43692 bytes = 131076
	} {
		t.Run(tc.name, func(t *testing.T) {
			rw := &recordWriter{}
			fw := NewFrameWriter(rw, tc.limit)
			limit := fw.Available()
			for i := range tc.msgs {
				if err := fw.Write(&tc.msgs[i]); err != nil {
					t.Fatalf("Write %d: %v", i, err)
				}
				if fw.Buffered()+fw.Available() != limit {
					t.Fatalf("Buffered %d + Available %d != %d", fw.Buffered(), fw.Available(), limit)
				}
			}
			if err := fw.Flush(); err != nil {
				t.Fatal(err)
			}
			if tc.wantWrites != 0 && len(rw.msgs) != tc.wantWrites {
				t.Errorf("%d WebSocket messages, want %d", len(rw.msgs), tc.wantWrites)
			}
			var got []Message
			for i, wsm := range rw.msgs {
				if len(wsm) > limit || len(wsm) > MaxWebSocketMessageSize {
					t.Fatalf("message %d has %d bytes, limit %d", i, len(wsm), limit)
				}
				// Each WebSocket message holds whole frames only.
				fr := NewFrameReader(bytes.NewReader(wsm))
				first := true
				for {
					m, err := fr.Next()
					if err == io.EOF {
						break
					}
					if err != nil {
						t.Fatalf("message %d: %v", i, err)
					}
					if first && i > 0 {
						// Greedy: the previous message had no room for this frame.
						if len(rw.msgs[i-1])+FrameHeaderSize+m.Size() <= limit {
							t.Fatalf("message %d (%d bytes) had room for the next frame of %d", i-1, len(rw.msgs[i-1]), m.Size())
						}
					}
					first = false
					got = append(got, *m)
					got[len(got)-1].Payload = bytes.Clone(m.Payload)
				}
			}
			if len(got) != len(tc.msgs) {
				t.Fatalf("%d messages arrived, want %d", len(got), len(tc.msgs))
			}
			for i := range got {
				if d := diffMessages(tc.msgs[i], got[i]); d != "" {
					t.Fatalf("message %d (-sent +received):\n%s", i, d)
				}
			}
		})
	}
}

func TestFrameWriterFlush(t *testing.T) {
	rw := &recordWriter{}
	fw := NewFrameWriter(rw, 0)
	if err := fw.Flush(); err != nil || len(rw.msgs) != 0 {
		t.Fatalf("Flush with nothing buffered: %v, %d messages sent", err, len(rw.msgs))
	}
	m1 := Message{Type: TypeStreamStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1}
	m2 := Message{Type: TypeData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1, Payload: []byte("hi")}
	for _, m := range []*Message{&m1, &m2} {
		if err := fw.Write(m); err != nil {
			t.Fatal(err)
		}
	}
	if len(rw.msgs) != 0 {
		t.Fatal("Write sent before the buffer was full")
	}
	want, _ := AppendFrame(nil, &m1)
	want, _ = AppendFrame(want, &m2)
	if fw.Buffered() != len(want) || fw.Available() != MaxWebSocketMessageSize-len(want) {
		t.Fatalf("Buffered %d, Available %d; want %d buffered", fw.Buffered(), fw.Available(), len(want))
	}
	if err := fw.Flush(); err != nil {
		t.Fatal(err)
	}
	if len(rw.msgs) != 1 || !bytes.Equal(rw.msgs[0], want) {
		t.Fatalf("Flush sent %d messages, first % x; want % x", len(rw.msgs), rw.msgs, want)
	}
	if fw.Buffered() != 0 || fw.Available() != MaxWebSocketMessageSize {
		t.Fatalf("after Flush: Buffered %d, Available %d", fw.Buffered(), fw.Available())
	}
	if err := fw.Flush(); err != nil || len(rw.msgs) != 1 {
		t.Fatalf("second Flush: %v, %d messages", err, len(rw.msgs))
	}
}

func TestFrameWriterWriteFrame(t *testing.T) {
	rw := &recordWriter{}
	fw := NewFrameWriter(rw, 0)
	enc := (&Message{Type: TypeData, StreamID: 3, Payload: []byte("abc")}).Marshal()
	if err := fw.WriteFrame(enc); err != nil {
		t.Fatal(err)
	}
	enc[0] = 0xff // the writer copied it
	largest := bytes.Repeat([]byte{1}, MaxMessageSize)
	if err := fw.WriteFrame(largest); err != nil {
		t.Fatalf("largest frame: %v", err)
	}
	if err := fw.WriteFrame(largest); err != nil { // does not fit: flushes first
		t.Fatalf("largest frame: %v", err)
	}
	if err := fw.Flush(); err != nil {
		t.Fatal(err)
	}
	want0 := frameStream((&Message{Type: TypeData, StreamID: 3, Payload: []byte("abc")}).Marshal(), largest)
	if len(rw.msgs) != 2 || !bytes.Equal(rw.msgs[0], want0) || !bytes.Equal(rw.msgs[1], frameStream(largest)) {
		t.Fatalf("sent %d messages, want 2 with whole frames", len(rw.msgs))
	}

	for _, tc := range []struct {
		name    string
		frame   []byte
		wantErr error
	}{
		{"empty", nil, ErrMalformed},
		{"too large", make([]byte, MaxMessageSize+1), ErrTooLarge},
	} {
		if err := fw.WriteFrame(tc.frame); !errors.Is(err, tc.wantErr) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.wantErr)
		}
		if fw.Buffered() != 0 {
			t.Errorf("%s: refused frame was buffered", tc.name)
		}
	}
}

func TestFrameWriterLimitErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		msg     Message
		wantErr error
	}{
		{"payload too large", Message{Type: TypeData, StreamID: 1, Payload: make([]byte, MaxPayloadSize+1)}, ErrTooLarge},
		{"encoding too large", Message{Type: TypeServiceIDs, AvailableServiceIDs: manyIDs(MaxMessageSize)}, ErrTooLarge},
		{"empty message", Message{}, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rw := &recordWriter{}
			fw := NewFrameWriter(rw, 0)
			// Nearly full, so that a frame of any size would force a flush.
			filler := Message{Type: TypeData, StreamID: 1, Payload: make([]byte, MaxPayloadSize)}
			for range 2 {
				if err := fw.Write(&filler); err != nil {
					t.Fatal(err)
				}
			}
			before := fw.Buffered()
			if err := fw.Write(&tc.msg); !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if fw.Buffered() != before || len(rw.msgs) != 0 {
				t.Fatalf("refused message changed the writer: buffered %d -> %d, %d sent", before, fw.Buffered(), len(rw.msgs))
			}
		})
	}
}

func TestFrameWriterWriteError(t *testing.T) {
	boom := errors.New("websocket closed")
	rw := &recordWriter{}
	fw := NewFrameWriter(rw, 0)
	big := Message{Type: TypeData, StreamID: 1, Payload: make([]byte, MaxPayloadSize)}
	for range 2 {
		if err := fw.Write(&big); err != nil {
			t.Fatal(err)
		}
	}
	rw.err = boom
	if err := fw.Write(&big); !errors.Is(err, boom) {
		t.Fatalf("Write needing a flush: %v, want the writer's error", err)
	}
	if fw.Buffered() != 0 {
		t.Fatalf("Buffered = %d after a failed flush", fw.Buffered())
	}
	if err := fw.Write(&Message{Type: TypeSessionReset}); err != nil {
		t.Fatal(err)
	}
	if err := fw.Flush(); !errors.Is(err, boom) {
		t.Fatalf("Flush: %v, want the writer's error", err)
	}
	if fw.Buffered() != 0 {
		t.Fatalf("Buffered = %d after a failed Flush", fw.Buffered())
	}
}

// FuzzFrameWriter drives a FrameWriter with fuzzer-chosen writes and flushes
// and reads everything back through a FrameReader.
func FuzzFrameWriter(f *testing.F) {
	f.Add([]byte{0, 0, 5, 1, 0xfc, 0x00, 2, 0, 0}, uint32(0))
	f.Add([]byte{0, 0xfc, 0, 0, 0xfc, 0, 0, 0xfc, 0, 1, 0xff, 0xff}, uint32(70000))
	f.Add([]byte{2, 0, 0, 1, 0, 1, 1, 0, 2}, uint32(1))
	f.Fuzz(func(t *testing.T, ops []byte, limit uint32) {
		rw := &recordWriter{}
		fw := NewFrameWriter(rw, int(limit%(2*MaxWebSocketMessageSize)))
		max := fw.Available()
		if max < FrameHeaderSize+MaxMessageSize || max > MaxWebSocketMessageSize {
			t.Fatalf("limit %d", max)
		}
		var sent []Message
		for i := 0; i+2 < len(ops) && len(sent) < 64; i += 3 {
			n := int(binary.BigEndian.Uint16(ops[i+1:]))
			m := Message{Type: TypeData, StreamID: int32(i + 1), Payload: bytes.Repeat([]byte{byte(i)}, min(n, MaxPayloadSize+1))}
			var err error
			switch ops[i] % 4 {
			case 0:
				err = fw.Write(&m)
			case 1:
				m.Payload = m.Payload[:min(len(m.Payload), MaxPayloadSize)]
				err = fw.WriteFrame(m.Marshal())
			case 2:
				m = Message{Type: TypeServiceIDs, AvailableServiceIDs: strings.Split(strings.Repeat("S,", n%64), ",")}
				err = fw.Write(&m)
			case 3:
				if err := fw.Flush(); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if len(m.Payload) > MaxPayloadSize {
				if !errors.Is(err, ErrTooLarge) {
					t.Fatalf("oversized payload: %v", err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("op %d: %v", i, err)
			}
			sent = append(sent, m)
		}
		if err := fw.Flush(); err != nil {
			t.Fatal(err)
		}
		for _, wsm := range rw.msgs {
			if len(wsm) == 0 || len(wsm) > max {
				t.Fatalf("WebSocket message of %d bytes, limit %d", len(wsm), max)
			}
		}
		fr := NewFrameReader(&chunkReader{chunks: rw.msgs})
		for i := range sent {
			m, err := fr.Next()
			if err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
			if d := diffMessages(sent[i], *m); d != "" {
				t.Fatalf("message %d (-sent +received):\n%s", i, d)
			}
		}
		if _, err := fr.Next(); err != io.EOF {
			t.Fatalf("after the last message: %v", err)
		}
	})
}
