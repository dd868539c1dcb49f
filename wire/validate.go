package wire

import (
	"errors"
	"fmt"
)

// Role is who sent a message, as seen by its receiver: one of the two local
// proxies (checked by the service), or the service (checked by a local
// proxy, for everything it reads from its WebSocket: the service's own
// messages and those it relays from the other end).
type Role int

// The roles of a tunnel.
const (
	RoleSource Role = iota + 1
	RoleDestination
	RoleService
)

// String returns "source", "destination" or "service".
func (r Role) String() string {
	switch r {
	case RoleSource:
		return "source"
	case RoleDestination:
		return "destination"
	case RoleService:
		return "service"
	}
	return fmt.Sprintf("Role(%d)", int(r))
}

// ErrInvalidMessage is wrapped by every *RuleError.
var ErrInvalidMessage = errors.New("wire: invalid message")

// Rule names a validity rule of the protocol.
type Rule string

// The rules checked by Validate.
const (
	RuleTypeSet          Rule = "type must be set"
	RuleStreamIDSet      Rule = "stream id must be non-zero"
	RuleStartFromSource  Rule = "only the source may start streams"
	RuleServiceOnly      Rule = "only the service sends SESSION_RESET and SERVICE_IDS"
	RuleUnknownType      Rule = "unknown message type without ignorable"
	RulePayloadSize      Rule = "payload too large"
	RuleNoServiceIDsList Rule = "availableServiceIds only in SERVICE_IDS"
)

// RuleError reports which protocol rule a message broke.
type RuleError struct {
	Rule Rule
	Type Type
	From Role
}

// Error describes the violation, e.g. "wire: invalid STREAM_START from
// destination: only the source may start streams".
func (e *RuleError) Error() string {
	return fmt.Sprintf("wire: invalid %v from %v: %s", e.Type, e.From, e.Rule)
}

// Unwrap returns ErrInvalidMessage.
func (e *RuleError) Unwrap() error { return ErrInvalidMessage }

// Validate checks m against the protocol's rules for a message sent by from,
// and returns a *RuleError for the first rule broken:
//   - the type is set (RuleTypeSet); an unknown type must be ignorable
//     (RuleUnknownType), and an ignorable unknown type passes every other
//     check (callers skip such messages: see Type.Known);
//   - the payload is at most MaxPayloadSize (RulePayloadSize);
//   - SESSION_RESET and SERVICE_IDS come only from the service
//     (RuleServiceOnly) and need nothing else;
//   - STREAM_START comes from the source, or from the service relaying it
//     (RuleStartFromSource);
//   - availableServiceIds appears only in SERVICE_IDS (RuleNoServiceIDsList);
//   - every other known type (DATA, STREAM_START, STREAM_RESET,
//     CONNECTION_START, CONNECTION_RESET) has a non-zero stream id
//     (RuleStreamIDSet).
//
// A Role other than the three defined ones is held to a local proxy's rules
// and fails RuleStartFromSource for STREAM_START. Service-ID membership and
// stream state depend on the tunnel and are the receiver's business, not
// checked here.
func (m *Message) Validate(from Role) error {
	fail := func(r Rule) error { return &RuleError{Rule: r, Type: m.Type, From: from} }
	if m.Type == TypeUnknown {
		return fail(RuleTypeSet)
	}
	if !m.Type.Known() {
		if m.Ignorable {
			return nil
		}
		return fail(RuleUnknownType)
	}
	if len(m.Payload) > MaxPayloadSize {
		return fail(RulePayloadSize)
	}
	switch m.Type {
	case TypeSessionReset, TypeServiceIDs:
		if from != RoleService {
			return fail(RuleServiceOnly)
		}
		return nil
	case TypeStreamStart:
		// The service relays the source's STREAM_START to the destination.
		if from != RoleSource && from != RoleService {
			return fail(RuleStartFromSource)
		}
	}
	if len(m.AvailableServiceIDs) > 0 {
		return fail(RuleNoServiceIDsList)
	}
	if m.StreamID == 0 {
		return fail(RuleStreamIDSet)
	}
	return nil
}
