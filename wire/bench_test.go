package wire

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sectun/sectun/wire/internal/oraclepb"
)

// payloadSizes are the DATA payload sizes benchmarked: small interactive
// traffic, a typical TCP read, and the protocol's largest payload.
var payloadSizes = []struct {
	name string
	n    int
}{
	{"64B", 64},
	{"16KiB", 16 << 10},
	{"63KiB", MaxPayloadSize},
}

// dataMessage is a V3 DATA message as a local proxy sends it.
func dataMessage(n int) Message {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i)
	}
	return Message{Type: TypeData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1, Payload: p}
}

// loopReader returns the same frame stream forever, one WebSocket message
// of at most MaxWebSocketMessageSize bytes per Read.
type loopReader struct {
	stream []byte
	off    int
}

func (r *loopReader) Read(p []byte) (int, error) {
	rest := r.stream[r.off:]
	n := copy(p, rest[:min(len(rest), MaxWebSocketMessageSize)])
	r.off += n
	if r.off == len(r.stream) {
		r.off = 0
	}
	return n, nil
}

// loopStream returns a stream of frames of m, at least 256 KiB long.
func loopStream(tb testing.TB, m *Message) []byte {
	var stream []byte
	for len(stream) < 256<<10 {
		var err error
		if stream, err = AppendFrame(stream, m); err != nil {
			tb.Fatal(err)
		}
	}
	return stream
}

type discardWriter struct{}

func (discardWriter) WriteMessage([]byte) error { return nil }

// TestAllocBudgets pins the data path at zero allocations.
func TestAllocBudgets(t *testing.T) {
	m := dataMessage(16 << 10)
	enc := m.Marshal()
	buf := make([]byte, 0, len(enc))

	var dec Message
	if err := dec.Unmarshal(enc); err != nil {
		t.Fatal(err)
	}
	fr := NewFrameReader(&loopReader{stream: loopStream(t, &m)})
	if _, err := fr.Next(); err != nil {
		t.Fatal(err)
	}
	fw := NewFrameWriter(discardWriter{}, 0)
	if err := fw.Write(&m); err != nil {
		t.Fatal(err)
	}
	frameBuf := make([]byte, 0, FrameHeaderSize+len(enc))

	for _, tc := range []struct {
		name string
		f    func() error
	}{
		{"Unmarshal DATA 16KiB, same service id", func() error { return dec.Unmarshal(enc) }},
		{"AppendMarshal into enough capacity", func() error { buf = m.AppendMarshal(buf[:0]); return nil }},
		{"AppendFrame into enough capacity", func() (err error) { frameBuf, err = AppendFrame(frameBuf[:0], &m); return err }},
		{"FrameReader.Next", func() error { _, err := fr.Next(); return err }},
		{"FrameWriter.Write", func() error { return fw.Write(&m) }},
		{"Validate", func() error { return dec.Validate(RoleSource) }},
	} {
		var err error
		allocs := testing.AllocsPerRun(1000, func() {
			if e := tc.f(); e != nil {
				err = e
			}
		})
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if allocs != 0 {
			t.Errorf("%s: %v allocs per run, want 0", tc.name, allocs)
		}
	}
}

func BenchmarkMarshalData(b *testing.B) {
	for _, size := range payloadSizes {
		b.Run(size.name, func(b *testing.B) {
			m := dataMessage(size.n)
			buf := make([]byte, 0, m.Size())
			b.ReportAllocs()
			b.SetBytes(int64(size.n))
			for b.Loop() {
				buf = m.AppendMarshal(buf[:0])
			}
		})
	}
}

func BenchmarkUnmarshalData(b *testing.B) {
	for _, size := range payloadSizes {
		b.Run(size.name, func(b *testing.B) {
			m := dataMessage(size.n)
			enc := m.Marshal()
			var dec Message
			b.ReportAllocs()
			b.SetBytes(int64(size.n))
			for b.Loop() {
				if err := dec.Unmarshal(enc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOracleMarshal is protobuf's generated code doing the work of
// BenchmarkMarshalData, for comparison.
func BenchmarkOracleMarshal(b *testing.B) {
	for _, size := range payloadSizes {
		b.Run(size.name, func(b *testing.B) {
			m := dataMessage(size.n)
			o := toOracle(&m)
			b.ReportAllocs()
			b.SetBytes(int64(size.n))
			for b.Loop() {
				if _, err := proto.Marshal(o); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOracleUnmarshal is protobuf's generated code doing the work of
// BenchmarkUnmarshalData, for comparison.
func BenchmarkOracleUnmarshal(b *testing.B) {
	for _, size := range payloadSizes {
		b.Run(size.name, func(b *testing.B) {
			m := dataMessage(size.n)
			enc := m.Marshal()
			var o oraclepb.Message
			b.ReportAllocs()
			b.SetBytes(int64(size.n))
			for b.Loop() {
				if err := proto.Unmarshal(enc, &o); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkFrameReader reads and decodes 16 KiB DATA frames from a stream
// arriving in WebSocket messages of 131076 bytes.
func BenchmarkFrameReader(b *testing.B) {
	m := dataMessage(16 << 10)
	fr := NewFrameReader(&loopReader{stream: loopStream(b, &m)})
	b.ReportAllocs()
	b.SetBytes(int64(FrameHeaderSize + m.Size()))
	for b.Loop() {
		if _, err := fr.Next(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFrameWriter encodes 16 KiB DATA messages into coalesced
// WebSocket messages (sent nowhere).
func BenchmarkFrameWriter(b *testing.B) {
	m := dataMessage(16 << 10)
	fw := NewFrameWriter(discardWriter{}, 0)
	b.ReportAllocs()
	b.SetBytes(int64(FrameHeaderSize + m.Size()))
	for b.Loop() {
		if err := fw.Write(&m); err != nil {
			b.Fatal(err)
		}
	}
}
