package wire

import (
	"errors"
	"fmt"
)

// Role is who sent a message: one of the two local proxies or the service.
type Role int

// The roles of a tunnel.
const (
	RoleSource Role = iota + 1
	RoleDestination
	RoleService
)

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

func (e *RuleError) Error() string {
	return fmt.Sprintf("wire: invalid %v from %v: %s", e.Type, e.From, e.Rule)
}

func (e *RuleError) Unwrap() error { return ErrInvalidMessage }

// Validate checks m against the protocol's rules for a message sent by from.
// It returns nil for an unknown type marked ignorable (callers skip such
// messages: see Type.Known). Service-ID membership and stream state are the
// receiver's business, not checked here.
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
		if from != RoleSource {
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
