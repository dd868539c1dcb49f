package wire

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
	"unsafe"

	"google.golang.org/protobuf/proto"

	"github.com/sectun/sectun/wire/internal/oraclepb"
)

// encodeCases are representative messages of every type with their exact
// encodings, checked against protobuf's own encoder as well.
var encodeCases = []struct {
	name string
	msg  Message
	hex  string
}{
	{"zero", Message{}, ""},
	{"data", Message{Type: TypeData, StreamID: 1, Payload: []byte("hi"), ConnectionID: 1},
		"08 01 10 01 22 02 6869 38 01"},
	{"data with service", Message{Type: TypeData, StreamID: 7, Payload: []byte("hi"), ServiceID: "SSH1", ConnectionID: 2},
		"08 01 10 07 22 02 6869 2a 04 53534831 38 02"},
	{"data 200B payload", Message{Type: TypeData, StreamID: 1, Payload: bytes.Repeat([]byte{0xab}, 200)},
		"08 01 10 01 22 c8 01" + strings.Repeat("ab", 200)},
	{"stream start v3", Message{Type: TypeStreamStart, StreamID: 3, ServiceID: "SSH1", ConnectionID: 1},
		"08 02 10 03 2a 04 53534831 38 01"},
	{"stream start v1", Message{Type: TypeStreamStart, StreamID: 1}, "08 02 10 01"},
	{"stream reset", Message{Type: TypeStreamReset, StreamID: 5}, "08 03 10 05"},
	{"session reset", Message{Type: TypeSessionReset}, "08 04"},
	{"service ids", Message{Type: TypeServiceIDs, AvailableServiceIDs: []string{"SSH1", "HTTP1", "RDP"}},
		"08 05 32 04 53534831 32 05 4854545031 32 03 524450"},
	{"service ids one", Message{Type: TypeServiceIDs, AvailableServiceIDs: []string{"SSH1"}},
		"08 05 32 04 53534831"},
	{"service ids with empty element", Message{Type: TypeServiceIDs, AvailableServiceIDs: []string{"", "a"}},
		"08 05 32 00 32 01 61"},
	{"connection start", Message{Type: TypeConnectionStart, StreamID: 2, ServiceID: "HTTP1", ConnectionID: 2},
		"08 06 10 02 2a 05 4854545031 38 02"},
	{"connection reset", Message{Type: TypeConnectionReset, StreamID: 2, ServiceID: "HTTP1", ConnectionID: 300},
		"08 07 10 02 2a 05 4854545031 38 ac 02"},
	{"all fields", Message{Type: TypeData, StreamID: 1, Ignorable: true, Payload: []byte("hi"), ServiceID: "SSH1",
		AvailableServiceIDs: []string{"SSH1"}, ConnectionID: 1},
		"08 01 10 01 18 01 22 02 6869 2a 04 53534831 32 04 53534831 38 01"},
	{"unknown type ignorable", Message{Type: 9, Ignorable: true}, "08 09 18 01"},
	{"ignorable only", Message{Ignorable: true}, "18 01"},
	{"zero fields omitted", Message{Type: TypeData, Payload: []byte{}, AvailableServiceIDs: []string{}}, "08 01"},
	{"negative stream id", Message{Type: TypeData, StreamID: -1},
		"08 01 10 ffffffffffffffffff01"},
	{"min stream id", Message{Type: TypeData, StreamID: math.MinInt32},
		"08 01 10 80808080f8ffffffff01"},
	{"max stream id", Message{Type: TypeData, StreamID: math.MaxInt32},
		"08 01 10 ffffffff07"},
	{"negative type", Message{Type: -1, StreamID: 1},
		"08 ffffffffffffffffff01 10 01"},
	{"max connection id", Message{Type: TypeData, StreamID: 1, ConnectionID: math.MaxUint32},
		"08 01 10 01 38 ffffffff0f"},
}

func TestMarshalExact(t *testing.T) {
	for _, tc := range encodeCases {
		t.Run(tc.name, func(t *testing.T) {
			want := unhex(t, tc.hex)
			got := tc.msg.AppendMarshal(nil)
			if !bytes.Equal(got, want) {
				t.Fatalf("AppendMarshal = % x\nwant            % x", got, want)
			}
			if got := tc.msg.Marshal(); !bytes.Equal(got, want) {
				t.Fatalf("Marshal = % x, want % x", got, want)
			}
			if n := tc.msg.Size(); n != len(want) {
				t.Fatalf("Size = %d, want %d", n, len(want))
			}
			// Appending keeps what is already in the buffer.
			prefix := []byte("prefix")
			if got := tc.msg.AppendMarshal(prefix); !bytes.Equal(got, append([]byte("prefix"), want...)) {
				t.Fatalf("AppendMarshal(prefix) = % x", got)
			}
			oracle, err := oracleMarshal(&tc.msg)
			if err != nil {
				t.Fatalf("oracle: %v", err)
			}
			if !bytes.Equal(oracle, want) {
				t.Fatalf("oracle encodes % x, table says % x", oracle, want)
			}
			var back Message
			if err := back.Unmarshal(want); err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			if d := diffMessages(tc.msg, back); d != "" {
				t.Fatalf("round trip (-want +got):\n%s", d)
			}
		})
	}
}

// decodeCases are encodings with the Message they decode to, or the error.
var decodeCases = []struct {
	name    string
	hex     string
	want    Message
	wantErr error
}{
	{name: "empty", hex: "", want: Message{}},
	{name: "empty payload field", hex: "08 01 10 01 22 00", want: Message{Type: TypeData, StreamID: 1}},
	{name: "fields out of order", hex: "38 01 10 02 08 01", want: Message{Type: TypeData, StreamID: 2, ConnectionID: 1}},
	{name: "utf8 service id", hex: "2a 02 c3a9", want: Message{ServiceID: "é"}},

	// Repeated scalar fields: the last one wins, as in protobuf.
	{name: "type twice", hex: "08 01 08 02", want: Message{Type: TypeStreamStart}},
	{name: "stream id twice", hex: "10 01 10 05", want: Message{StreamID: 5}},
	{name: "ignorable twice", hex: "18 01 18 00", want: Message{}},
	{name: "payload twice", hex: "22 01 61 22 01 62", want: Message{Payload: []byte("b")}},
	{name: "payload then empty", hex: "22 01 61 22 00", want: Message{}},
	{name: "service id twice", hex: "2a 01 61 2a 01 62", want: Message{ServiceID: "b"}},
	{name: "connection id twice", hex: "38 01 38 09", want: Message{ConnectionID: 9}},
	{name: "service ids accumulate", hex: "32 01 61 08 05 32 01 62", want: Message{Type: TypeServiceIDs, AvailableServiceIDs: []string{"a", "b"}}},

	// Varint edge cases, decoded as protobuf does (truncation to 32 bits).
	{name: "ignorable 2 is true", hex: "18 02", want: Message{Ignorable: true}},
	{name: "non-minimal varint", hex: "08 81 00", want: Message{Type: TypeData}},
	{name: "type 2^32 truncates to 0", hex: "08 8080808010", want: Message{}},
	{name: "type 0xffffffff is -1", hex: "08 ffffffff0f", want: Message{Type: -1}},
	{name: "5-byte negative stream id", hex: "10 ffffffff0f", want: Message{StreamID: -1}},
	{name: "connection id 2^32 truncates", hex: "38 8080808010", want: Message{}},
	{name: "10-byte negative stream id", hex: "10 feffffffffffffffff01", want: Message{StreamID: -2}},

	// Fields outside the schema.
	{name: "unknown field 8 varint", hex: "08 01 40 01", wantErr: ErrMalformed},
	{name: "unknown field 8 bytes", hex: "42 00", wantErr: ErrMalformed},
	{name: "unknown field 15", hex: "78 01", wantErr: ErrMalformed},
	{name: "unknown field 16", hex: "80 01 01", wantErr: ErrMalformed},
	{name: "unknown field 1000 fixed32", hex: "c5 3e 00000000", wantErr: ErrMalformed},
	{name: "field 0 varint", hex: "00 00", wantErr: ErrMalformed},
	{name: "field 0 bytes", hex: "02 00", wantErr: ErrMalformed},

	// Wrong wire types for known fields.
	{name: "type as bytes", hex: "0a 00", wantErr: ErrMalformed},
	{name: "stream id as fixed64", hex: "11 0000000000000000", wantErr: ErrMalformed},
	{name: "ignorable as fixed32", hex: "1d 00000000", wantErr: ErrMalformed},
	{name: "payload as varint", hex: "20 01", wantErr: ErrMalformed},
	{name: "service id as varint", hex: "28 01", wantErr: ErrMalformed},
	{name: "service ids as varint", hex: "30 01", wantErr: ErrMalformed},
	{name: "connection id as bytes", hex: "3a 00", wantErr: ErrMalformed},
	{name: "type as group", hex: "0b 0c", wantErr: ErrMalformed},
	{name: "end group", hex: "0c", wantErr: ErrMalformed},
	{name: "wire type 6", hex: "0e", wantErr: ErrMalformed},
	{name: "wire type 7", hex: "0f", wantErr: ErrMalformed},

	// Truncated input.
	{name: "varint tag only", hex: "08", wantErr: ErrMalformed},
	{name: "bytes tag only", hex: "22", wantErr: ErrMalformed},
	{name: "unterminated varint", hex: "10 ff", wantErr: ErrMalformed},
	{name: "unterminated tag", hex: "ff", wantErr: ErrMalformed},
	{name: "length beyond input", hex: "22 05 6869", wantErr: ErrMalformed},
	{name: "unterminated length", hex: "22 ff", wantErr: ErrMalformed},
	{name: "truncated after valid field", hex: "08 01 10", wantErr: ErrMalformed},
	{name: "varint overflow", hex: "10 ffffffffffffffffff02", wantErr: ErrMalformed},
	{name: "11-byte varint", hex: "10 ffffffffffffffffffff01", wantErr: ErrMalformed},

	// Strings must be UTF-8 (proto3).
	{name: "service id not utf8", hex: "2a 01 ff", wantErr: ErrMalformed},
	{name: "service ids not utf8", hex: "32 02 c328", wantErr: ErrMalformed},
	{name: "surrogate in service id", hex: "2a 03 eda080", wantErr: ErrMalformed},
	{name: "payload need not be utf8", hex: "22 01 ff", want: Message{Payload: []byte{0xff}}},
}

func TestUnmarshalTable(t *testing.T) {
	for _, tc := range decodeCases {
		t.Run(tc.name, func(t *testing.T) {
			b := unhex(t, tc.hex)
			// Decode into a dirty Message: every field must be replaced.
			m := Message{Type: TypeConnectionReset, StreamID: 42, Ignorable: true, Payload: []byte("old"),
				ServiceID: "old", AvailableServiceIDs: []string{"x", "y", "z"}, ConnectionID: 42}
			err := m.Unmarshal(b)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Unmarshal(% x) = %v, want %v", b, err, tc.wantErr)
				}
			} else {
				if err != nil {
					t.Fatalf("Unmarshal(% x): %v", b, err)
				}
				if d := diffMessages(tc.want, m); d != "" {
					t.Fatalf("Unmarshal(% x) (-want +got):\n%s", b, d)
				}
			}
			checkDecodeAgainstOracle(t, b)
		})
	}
}

func TestUnmarshalPayloadLimit(t *testing.T) {
	for _, tc := range []struct {
		size    int
		wantErr error
	}{
		{MaxPayloadSize - 1, nil},
		{MaxPayloadSize, nil},
		{MaxPayloadSize + 1, ErrTooLarge},
		{MaxMessageSize, ErrTooLarge},
	} {
		m := Message{Type: TypeData, StreamID: 1, Payload: make([]byte, tc.size)}
		b := m.Marshal()
		var got Message
		err := got.Unmarshal(b)
		if !errors.Is(err, tc.wantErr) {
			t.Fatalf("payload of %d: Unmarshal = %v, want %v", tc.size, err, tc.wantErr)
		}
		if err == nil && len(got.Payload) != tc.size {
			t.Fatalf("payload of %d: got %d bytes", tc.size, len(got.Payload))
		}
		if err != nil && errors.Is(err, ErrMalformed) {
			t.Fatalf("oversized payload error %v also wraps ErrMalformed", err)
		}
	}
}

// TestUnmarshalTruncatedPrefixes decodes every prefix of a message with all
// fields: a prefix ending between fields decodes, any other is ErrMalformed.
func TestUnmarshalTruncatedPrefixes(t *testing.T) {
	full := Message{Type: TypeData, StreamID: -7, Ignorable: true, Payload: []byte("payload"), ServiceID: "SSH1",
		AvailableServiceIDs: []string{"SSH1", "HTTP1"}, ConnectionID: 300}
	b := full.Marshal()
	boundaries := map[int]bool{0: true}
	// Field ends, from the encoding: re-encode growing subsets in schema order.
	steps := []Message{
		{Type: full.Type},
		{Type: full.Type, StreamID: full.StreamID},
		{Type: full.Type, StreamID: full.StreamID, Ignorable: true},
		{Type: full.Type, StreamID: full.StreamID, Ignorable: true, Payload: full.Payload},
		{Type: full.Type, StreamID: full.StreamID, Ignorable: true, Payload: full.Payload, ServiceID: full.ServiceID},
		{Type: full.Type, StreamID: full.StreamID, Ignorable: true, Payload: full.Payload, ServiceID: full.ServiceID,
			AvailableServiceIDs: full.AvailableServiceIDs[:1]},
		{Type: full.Type, StreamID: full.StreamID, Ignorable: true, Payload: full.Payload, ServiceID: full.ServiceID,
			AvailableServiceIDs: full.AvailableServiceIDs},
		full,
	}
	for _, s := range steps {
		boundaries[s.Size()] = true
	}
	for i := 0; i <= len(b); i++ {
		var m Message
		err := m.Unmarshal(b[:i])
		if boundaries[i] {
			if err != nil {
				t.Errorf("prefix of %d bytes (a field boundary): %v", i, err)
			}
		} else if !errors.Is(err, ErrMalformed) {
			t.Errorf("prefix of %d bytes: err = %v, want ErrMalformed", i, err)
		}
		checkDecodeAgainstOracle(t, b[:i])
	}
}

func TestUnmarshalPayloadAliasesInput(t *testing.T) {
	b := (&Message{Type: TypeData, StreamID: 1, Payload: []byte("hello"), ServiceID: "SSH1"}).Marshal()
	var m Message
	if err := m.Unmarshal(b); err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte("hello"))
	if &m.Payload[0] != &b[i] {
		t.Fatal("Payload does not alias the input")
	}
	if cap(m.Payload) != len(m.Payload) {
		t.Fatal("Payload capacity reaches past the field: appending to it would overwrite the input")
	}
	// Strings never alias the input, which a FrameReader reuses.
	copy(b[bytes.Index(b, []byte("SSH1")):], "XXXX")
	if m.ServiceID != "SSH1" {
		t.Fatalf("ServiceID changed with the input: %q", m.ServiceID)
	}
}

func TestUnmarshalServiceIDReuse(t *testing.T) {
	data := (&Message{Type: TypeData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1, Payload: make([]byte, 16<<10)}).Marshal()
	var m Message
	if err := m.Unmarshal(data); err != nil {
		t.Fatal(err)
	}
	p := unsafe.StringData(m.ServiceID)
	allocs := testing.AllocsPerRun(100, func() {
		if err := m.Unmarshal(data); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Unmarshal with a repeated service id: %v allocs, want 0", allocs)
	}
	if unsafe.StringData(m.ServiceID) != p {
		t.Error("repeated service id was not reused")
	}
	// A different service id is a new string.
	other := (&Message{Type: TypeData, StreamID: 1, ServiceID: "HTTP1"}).Marshal()
	if err := m.Unmarshal(other); err != nil {
		t.Fatal(err)
	}
	if m.ServiceID != "HTTP1" {
		t.Fatalf("ServiceID = %q", m.ServiceID)
	}
	// No service id leaves none, even right after one.
	if err := m.Unmarshal(unhex(t, "08 01 10 01")); err != nil {
		t.Fatal(err)
	}
	if m.ServiceID != "" {
		t.Fatalf("ServiceID = %q after a message without one", m.ServiceID)
	}
}

func TestUnmarshalServiceIDsReuseSlice(t *testing.T) {
	b := (&Message{Type: TypeServiceIDs, AvailableServiceIDs: []string{"A", "B", "C"}}).Marshal()
	var m Message
	if err := m.Unmarshal(b); err != nil {
		t.Fatal(err)
	}
	first := &m.AvailableServiceIDs[0]
	if err := m.Unmarshal(b); err != nil {
		t.Fatal(err)
	}
	if &m.AvailableServiceIDs[0] != first {
		t.Error("AvailableServiceIDs backing array not reused")
	}
	if d := diffMessages(Message{Type: TypeServiceIDs, AvailableServiceIDs: []string{"A", "B", "C"}}, m); d != "" {
		t.Fatal(d)
	}
	if err := m.Unmarshal(unhex(t, "08 04")); err != nil {
		t.Fatal(err)
	}
	if m.AvailableServiceIDs != nil {
		t.Fatalf("AvailableServiceIDs = %q after a message without any", m.AvailableServiceIDs)
	}
}

func TestTypeString(t *testing.T) {
	for _, tc := range []struct {
		t     Type
		s     string
		known bool
	}{
		{TypeUnknown, "UNKNOWN", false},
		{TypeData, "DATA", true},
		{TypeStreamStart, "STREAM_START", true},
		{TypeStreamReset, "STREAM_RESET", true},
		{TypeSessionReset, "SESSION_RESET", true},
		{TypeServiceIDs, "SERVICE_IDS", true},
		{TypeConnectionStart, "CONNECTION_START", true},
		{TypeConnectionReset, "CONNECTION_RESET", true},
		{8, "TYPE_8", false},
		{-1, "TYPE_-1", false},
	} {
		if got := tc.t.String(); got != tc.s {
			t.Errorf("Type(%d).String() = %q, want %q", int32(tc.t), got, tc.s)
		}
		if got := tc.t.Known(); got != tc.known {
			t.Errorf("Type(%d).Known() = %v, want %v", int32(tc.t), got, tc.known)
		}
		// Our names are the schema's names.
		if tc.t >= 0 && tc.t <= TypeConnectionReset {
			if o := oraclepb.Message_Type(tc.t).String(); o != tc.s {
				t.Errorf("oracle names %d %q, we say %q", int32(tc.t), o, tc.s)
			}
		}
	}
}

func TestMessageString(t *testing.T) {
	for _, tc := range []struct {
		m    Message
		want string
	}{
		{Message{}, "UNKNOWN stream=0"},
		{Message{Type: TypeData, StreamID: 3, ConnectionID: 2, ServiceID: "SSH1", Payload: make([]byte, 10)},
			`DATA stream=3 conn=2 service="SSH1" payload=10B`},
		{Message{Type: TypeServiceIDs, AvailableServiceIDs: []string{"A", "B"}}, `SERVICE_IDS stream=0 services=["A" "B"]`},
		{Message{Type: 12, Ignorable: true}, "TYPE_12 stream=0 ignorable"},
	} {
		if got := tc.m.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}

// checkDecodeAgainstOracle decodes b with Unmarshal and with protobuf and
// fails t unless they agree: whatever we accept, protobuf accepts with the
// same fields and re-encodes to our encoding; whatever we reject, protobuf
// rejects too or accepts only by keeping unknown fields (unknown numbers or
// wrong wire types, which the protocol forbids) or an oversized payload.
func checkDecodeAgainstOracle(t testing.TB, b []byte) {
	t.Helper()
	var m Message
	err := m.Unmarshal(b)
	var o oraclepb.Message
	oerr := proto.Unmarshal(b, &o)
	if err != nil {
		if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
			t.Fatalf("Unmarshal(% x): error %v wraps neither ErrMalformed nor ErrTooLarge", b, err)
		}
		if oerr != nil {
			return
		}
		if len(o.ProtoReflect().GetUnknown()) == 0 && len(o.GetPayload()) <= MaxPayloadSize {
			t.Fatalf("Unmarshal(% x) = %v, but protobuf accepts it as %v", b, err, &o)
		}
		return
	}
	if oerr != nil {
		t.Fatalf("Unmarshal(% x) accepts %v, protobuf rejects: %v", b, m.String(), oerr)
	}
	if u := o.ProtoReflect().GetUnknown(); len(u) != 0 {
		t.Fatalf("Unmarshal(% x) accepts, protobuf sees unknown fields % x", b, u)
	}
	if d := diffMessages(fromOracle(&o), m); d != "" {
		t.Fatalf("Unmarshal(% x) differs from protobuf (-protobuf +ours):\n%s", b, d)
	}
	want, err := proto.MarshalOptions{Deterministic: true}.Marshal(&o)
	if err != nil {
		t.Fatalf("protobuf re-encoding: %v", err)
	}
	if got := m.AppendMarshal(nil); !bytes.Equal(got, want) {
		t.Fatalf("re-encoding of % x:\n ours     % x\n protobuf % x", b, got, want)
	}
	if m.Size() != len(want) {
		t.Fatalf("Size = %d, protobuf encodes %d bytes", m.Size(), len(want))
	}
}
