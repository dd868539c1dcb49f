package wire

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzDecodeDifferential decodes arbitrary bytes with Unmarshal and with the
// protoc-generated oracle: see checkDecodeAgainstOracle for what must hold.
func FuzzDecodeDifferential(f *testing.F) {
	for _, tc := range encodeCases {
		f.Add(unhex(f, tc.hex))
	}
	for _, tc := range decodeCases {
		f.Add(unhex(f, tc.hex))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkDecodeAgainstOracle(t, b)

		// Decoding into a Message that already holds a decoding (the
		// FrameReader's reuse path) gives the same result.
		var fresh Message
		if fresh.Unmarshal(b) != nil {
			return
		}
		used := Message{ServiceID: fresh.ServiceID, AvailableServiceIDs: []string{"a", "b", "c", "d"}, Payload: []byte("x")}
		if err := used.Unmarshal(b); err != nil {
			t.Fatalf("second decoding failed: %v", err)
		}
		if d := diffMessages(fresh, used); d != "" {
			t.Fatalf("decoding into a used Message differs (-fresh +used):\n%s", d)
		}
	})
}

// FuzzEncodeDifferential encodes a Message built from the fuzz inputs and
// compares the bytes with protobuf's deterministic encoding.
func FuzzEncodeDifferential(f *testing.F) {
	f.Add(int32(1), int32(1), false, []byte("hi"), "SSH1", "", uint8(0), uint32(1))
	f.Add(int32(2), int32(-1), false, []byte(nil), "HTTP1", "", uint8(0), uint32(0))
	f.Add(int32(5), int32(0), false, []byte(nil), "", "SSH1,HTTP1,RDP", uint8(3), uint32(0))
	f.Add(int32(5), int32(0), false, []byte(nil), "", ",", uint8(2), uint32(0))
	f.Add(int32(-5), int32(-2147483648), true, []byte{0}, "\xff", "a,\xc3", uint8(4), uint32(4294967295))
	f.Add(int32(0), int32(0), false, []byte{}, "", "", uint8(0), uint32(0))
	f.Fuzz(func(t *testing.T, typ, stream int32, ignorable bool, payload []byte, service, ids string, nids uint8, conn uint32) {
		m := Message{
			Type:                Type(typ),
			StreamID:            stream,
			Ignorable:           ignorable,
			Payload:             payload,
			ServiceID:           service,
			AvailableServiceIDs: splitIDs(ids, int(nids%5)),
			ConnectionID:        conn,
		}
		got := m.AppendMarshal(nil)
		if m.Size() != len(got) {
			t.Fatalf("Size = %d, encoding has %d bytes", m.Size(), len(got))
		}
		want, oerr := oracleMarshal(&m)
		if !validUTF8(&m) {
			// protobuf refuses to encode such strings, and we refuse to
			// decode them.
			if oerr == nil {
				t.Fatalf("protobuf encodes non-UTF-8 strings: % x", want)
			}
			var back Message
			if err := back.Unmarshal(got); !errors.Is(err, ErrMalformed) {
				t.Fatalf("Unmarshal of non-UTF-8 strings = %v, want ErrMalformed", err)
			}
			return
		}
		if oerr != nil {
			t.Fatalf("protobuf: %v", oerr)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("encoding of %v:\n ours     % x\n protobuf % x", m.String(), got, want)
		}
		var back Message
		err := back.Unmarshal(got)
		if len(payload) > MaxPayloadSize {
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("Unmarshal of a %d-byte payload = %v, want ErrTooLarge", len(payload), err)
			}
			return
		}
		if err != nil {
			t.Fatalf("Unmarshal of our encoding: %v", err)
		}
		if d := diffMessages(m, back); d != "" {
			t.Fatalf("round trip (-sent +decoded):\n%s", d)
		}
	})
}

// splitIDs turns s into n service IDs (none when n is 0), splitting at
// commas and padding with empty strings.
func splitIDs(s string, n int) []string {
	if n == 0 {
		return nil
	}
	ids := strings.SplitN(s, ",", n)
	for len(ids) < n {
		ids = append(ids, "")
	}
	return ids
}

func validUTF8(m *Message) bool {
	if !utf8.ValidString(m.ServiceID) {
		return false
	}
	for _, s := range m.AvailableServiceIDs {
		if !utf8.ValidString(s) {
			return false
		}
	}
	return true
}
