package wire

import (
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// Protocol limits, in bytes.
const (
	// MaxPayloadSize is the largest Message payload (63 KiB).
	MaxPayloadSize = 64512
	// MaxMessageSize is the largest encoded Message: the tunnel-frame length
	// prefix is two bytes.
	MaxMessageSize = 65535
	// FrameHeaderSize is the size of a tunnel frame's length prefix.
	FrameHeaderSize = 2
	// MaxWebSocketMessageSize is the largest WebSocket message payload either
	// side may send.
	MaxWebSocketMessageSize = 131076
)

// Type is the kind of a Message.
type Type int32

// The message types of the protocol.
const (
	TypeUnknown         Type = 0
	TypeData            Type = 1
	TypeStreamStart     Type = 2
	TypeStreamReset     Type = 3
	TypeSessionReset    Type = 4
	TypeServiceIDs      Type = 5
	TypeConnectionStart Type = 6
	TypeConnectionReset Type = 7
)

var typeNames = [...]string{"UNKNOWN", "DATA", "STREAM_START", "STREAM_RESET", "SESSION_RESET", "SERVICE_IDS", "CONNECTION_START", "CONNECTION_RESET"}

// String returns the protocol's name for t, or its number if t is not known.
func (t Type) String() string {
	if t >= 0 && int(t) < len(typeNames) {
		return typeNames[t]
	}
	return "TYPE_" + strconv.Itoa(int(t))
}

// Known reports whether t is one of the types defined by the protocol
// (TypeUnknown excluded).
func (t Type) Known() bool { return t > TypeUnknown && t <= TypeConnectionReset }

// Field numbers of the Message schema.
const (
	fieldType                = 1
	fieldStreamID            = 2
	fieldIgnorable           = 3
	fieldPayload             = 4
	fieldServiceID           = 5
	fieldAvailableServiceIDs = 6
	fieldConnectionID        = 7
)

// Message is one protocol message. The zero value of every field means
// "not set", as in proto3.
type Message struct {
	Type                Type
	StreamID            int32
	Ignorable           bool
	Payload             []byte
	ServiceID           string
	AvailableServiceIDs []string
	ConnectionID        uint32
}

// Errors returned by the codec.
var (
	// ErrMalformed reports bytes that are not a valid encoded Message.
	ErrMalformed = errors.New("wire: malformed message")
	// ErrTooLarge reports a message, payload or frame over the protocol limits.
	ErrTooLarge = errors.New("wire: message too large")
)

// Size returns the length of m's encoding.
func (m *Message) Size() int {
	n := 0
	if m.Type != 0 {
		n += 1 + protowire.SizeVarint(uint64(int64(m.Type)))
	}
	if m.StreamID != 0 {
		n += 1 + protowire.SizeVarint(uint64(int64(m.StreamID)))
	}
	if m.Ignorable {
		n += 2
	}
	if len(m.Payload) > 0 {
		n += 1 + protowire.SizeBytes(len(m.Payload))
	}
	if m.ServiceID != "" {
		n += 1 + protowire.SizeBytes(len(m.ServiceID))
	}
	for _, s := range m.AvailableServiceIDs {
		n += 1 + protowire.SizeBytes(len(s))
	}
	if m.ConnectionID != 0 {
		n += 1 + protowire.SizeVarint(uint64(m.ConnectionID))
	}
	return n
}

// AppendMarshal appends m's protobuf encoding to b, field by field in schema
// order, exactly as protobuf's deterministic encoder does. It checks no
// limits (AppendFrame does) and does not check that ServiceID and
// AvailableServiceIDs are valid UTF-8, which protobuf peers require.
func (m *Message) AppendMarshal(b []byte) []byte {
	if m.Type != 0 {
		b = protowire.AppendTag(b, fieldType, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(int64(m.Type)))
	}
	if m.StreamID != 0 {
		b = protowire.AppendTag(b, fieldStreamID, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(int64(m.StreamID)))
	}
	if m.Ignorable {
		b = protowire.AppendTag(b, fieldIgnorable, protowire.VarintType)
		b = protowire.AppendVarint(b, 1)
	}
	if len(m.Payload) > 0 {
		b = protowire.AppendTag(b, fieldPayload, protowire.BytesType)
		b = protowire.AppendBytes(b, m.Payload)
	}
	if m.ServiceID != "" {
		b = protowire.AppendTag(b, fieldServiceID, protowire.BytesType)
		b = protowire.AppendString(b, m.ServiceID)
	}
	for _, s := range m.AvailableServiceIDs {
		b = protowire.AppendTag(b, fieldAvailableServiceIDs, protowire.BytesType)
		b = protowire.AppendString(b, s)
	}
	if m.ConnectionID != 0 {
		b = protowire.AppendTag(b, fieldConnectionID, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(m.ConnectionID))
	}
	return b
}

// Marshal returns m's encoding in a new slice.
func (m *Message) Marshal() []byte { return m.AppendMarshal(make([]byte, 0, m.Size())) }

// Unmarshal decodes b into m, replacing all of m's fields. m.Payload aliases
// b (it is not copied; its capacity ends with the field); AvailableServiceIDs reuses the backing array of m's
// previous slice, and a ServiceID equal to m's previous one reuses that
// string, so decoding a stream of messages into one Message does not
// allocate. Fields outside the schema, wrong wire types, truncated input and
// strings that are not valid UTF-8 (rejected by protobuf's proto3 decoders
// too) are errors wrapping ErrMalformed; a payload over MaxPayloadSize wraps
// ErrTooLarge. A field repeated in the encoding keeps its last value, as
// protobuf does. After an error m holds an unspecified partial decoding.
func (m *Message) Unmarshal(b []byte) error {
	ids := m.AvailableServiceIDs[:0]
	prevService := m.ServiceID
	*m = Message{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: bad tag: %v", ErrMalformed, protowire.ParseError(n))
		}
		b = b[n:]
		want := protowire.VarintType
		switch num {
		case fieldPayload, fieldServiceID, fieldAvailableServiceIDs:
			want = protowire.BytesType
		case fieldType, fieldStreamID, fieldIgnorable, fieldConnectionID:
		default:
			return fmt.Errorf("%w: unknown field %d", ErrMalformed, num)
		}
		if typ != want {
			return fmt.Errorf("%w: field %d has wire type %d, want %d", ErrMalformed, num, typ, want)
		}
		if want == protowire.VarintType {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return fmt.Errorf("%w: field %d: %v", ErrMalformed, num, protowire.ParseError(n))
			}
			b = b[n:]
			switch num {
			case fieldType:
				m.Type = Type(int32(v))
			case fieldStreamID:
				m.StreamID = int32(v)
			case fieldIgnorable:
				m.Ignorable = v != 0
			case fieldConnectionID:
				m.ConnectionID = uint32(v)
			}
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return fmt.Errorf("%w: field %d: %v", ErrMalformed, num, protowire.ParseError(n))
		}
		b = b[n:]
		if num != fieldPayload && !utf8.Valid(v) {
			return fmt.Errorf("%w: field %d is not valid UTF-8", ErrMalformed, num)
		}
		switch num {
		case fieldPayload:
			if len(v) > MaxPayloadSize {
				return fmt.Errorf("%w: payload of %d bytes exceeds %d", ErrTooLarge, len(v), MaxPayloadSize)
			}
			// Capped so that appending to Payload can never overwrite the
			// rest of the input (a FrameReader's buffered frames).
			m.Payload = v[:len(v):len(v)]
		case fieldServiceID:
			if string(v) == prevService {
				m.ServiceID = prevService // no allocation for the common repeat
			} else {
				m.ServiceID = string(v)
			}
		case fieldAvailableServiceIDs:
			ids = append(ids, string(v))
		}
	}
	if len(ids) > 0 {
		m.AvailableServiceIDs = ids
	}
	return nil
}

// String describes m for logs, without its payload bytes.
func (m *Message) String() string {
	s := fmt.Sprintf("%v stream=%d", m.Type, m.StreamID)
	if m.ConnectionID != 0 {
		s += fmt.Sprintf(" conn=%d", m.ConnectionID)
	}
	if m.ServiceID != "" {
		s += " service=" + strconv.Quote(m.ServiceID)
	}
	if len(m.Payload) > 0 {
		s += fmt.Sprintf(" payload=%dB", len(m.Payload))
	}
	if len(m.AvailableServiceIDs) > 0 {
		s += fmt.Sprintf(" services=%q", m.AvailableServiceIDs)
	}
	if m.Ignorable {
		s += " ignorable"
	}
	return s
}
