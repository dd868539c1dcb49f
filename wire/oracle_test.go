package wire

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/proto"

	"github.com/sectun/sectun/wire/internal/oraclepb"
)

// toOracle converts m to the protoc-generated Message.
func toOracle(m *Message) *oraclepb.Message {
	return &oraclepb.Message{
		Type:                oraclepb.Message_Type(m.Type),
		StreamId:            m.StreamID,
		Ignorable:           m.Ignorable,
		Payload:             m.Payload,
		ServiceId:           m.ServiceID,
		AvailableServiceIds: m.AvailableServiceIDs,
		ConnectionId:        m.ConnectionID,
	}
}

// fromOracle converts the protoc-generated Message to ours.
func fromOracle(o *oraclepb.Message) Message {
	return Message{
		Type:                Type(o.GetType()),
		StreamID:            o.GetStreamId(),
		Ignorable:           o.GetIgnorable(),
		Payload:             o.GetPayload(),
		ServiceID:           o.GetServiceId(),
		AvailableServiceIDs: o.GetAvailableServiceIds(),
		ConnectionID:        o.GetConnectionId(),
	}
}

// oracleMarshal is protobuf's deterministic encoding of m.
func oracleMarshal(m *Message) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(toOracle(m))
}

// diffMessages compares two Messages, treating nil and empty slices alike
// (proto3 cannot tell them apart). Payloads are compared with bytes.Equal:
// cmp is far too slow on large byte slices.
func diffMessages(want, got Message) string {
	if !bytes.Equal(want.Payload, got.Payload) {
		return fmt.Sprintf("Payload: want %d bytes % .16x, got %d bytes % .16x", len(want.Payload), want.Payload, len(got.Payload), got.Payload)
	}
	return cmp.Diff(want, got, cmpopts.EquateEmpty(), cmpopts.IgnoreFields(Message{}, "Payload"))
}

// unhex decodes a hex string that may contain spaces.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}
