package wire

import (
	"errors"
	"testing"
)

func TestValidate(t *testing.T) {
	roles := [...]Role{RoleSource, RoleDestination, RoleService, Role(0)}
	const ok Rule = ""
	// every is the same result for all roles.
	every := func(r Rule) [len(roles)]Rule { return [len(roles)]Rule{r, r, r, r} }
	fromService := [len(roles)]Rule{RuleServiceOnly, RuleServiceOnly, ok, RuleServiceOnly}
	big := make([]byte, MaxPayloadSize+1)
	for _, tc := range []struct {
		name string
		msg  Message
		want [len(roles)]Rule // for source, destination, service, Role(0)
	}{
		{"zero", Message{}, every(RuleTypeSet)},
		{"unknown type 0 ignorable", Message{Ignorable: true, StreamID: 1}, every(RuleTypeSet)},
		{"type 8", Message{Type: 8, StreamID: 1}, every(RuleUnknownType)},
		{"type -1", Message{Type: -1, StreamID: 1}, every(RuleUnknownType)},
		{"type 8 ignorable", Message{Type: 8, Ignorable: true}, every(ok)},
		{"type 8 ignorable breaking other rules", Message{Type: 8, Ignorable: true, Payload: big, AvailableServiceIDs: []string{"A"}}, every(ok)},

		{"data", Message{Type: TypeData, StreamID: 1, Payload: []byte("x"), ServiceID: "SSH1", ConnectionID: 1}, every(ok)},
		{"data negative stream", Message{Type: TypeData, StreamID: -1}, every(ok)},
		{"data ignorable", Message{Type: TypeData, StreamID: 1, Ignorable: true}, every(ok)},
		{"data largest payload", Message{Type: TypeData, StreamID: 1, Payload: make([]byte, MaxPayloadSize)}, every(ok)},
		{"data payload too large", Message{Type: TypeData, StreamID: 1, Payload: big}, every(RulePayloadSize)},
		{"data no stream", Message{Type: TypeData, Payload: []byte("x")}, every(RuleStreamIDSet)},
		{"data with service list", Message{Type: TypeData, StreamID: 1, AvailableServiceIDs: []string{"A"}}, every(RuleNoServiceIDsList)},

		{"stream start", Message{Type: TypeStreamStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1},
			[len(roles)]Rule{ok, RuleStartFromSource, ok, RuleStartFromSource}},
		{"stream start v1", Message{Type: TypeStreamStart, StreamID: 1},
			[len(roles)]Rule{ok, RuleStartFromSource, ok, RuleStartFromSource}},
		{"stream start no stream", Message{Type: TypeStreamStart},
			[len(roles)]Rule{RuleStreamIDSet, RuleStartFromSource, RuleStreamIDSet, RuleStartFromSource}},
		{"stream start with service list", Message{Type: TypeStreamStart, StreamID: 1, AvailableServiceIDs: []string{"A"}},
			[len(roles)]Rule{RuleNoServiceIDsList, RuleStartFromSource, RuleNoServiceIDsList, RuleStartFromSource}},
		{"stream start payload too large", Message{Type: TypeStreamStart, StreamID: 1, Payload: big}, every(RulePayloadSize)},

		{"stream reset", Message{Type: TypeStreamReset, StreamID: 1, ServiceID: "SSH1"}, every(ok)},
		{"stream reset no stream", Message{Type: TypeStreamReset}, every(RuleStreamIDSet)},
		{"stream reset with service list", Message{Type: TypeStreamReset, StreamID: 1, AvailableServiceIDs: []string{"A"}}, every(RuleNoServiceIDsList)},

		{"session reset", Message{Type: TypeSessionReset}, fromService},
		{"session reset with stream", Message{Type: TypeSessionReset, StreamID: 4}, fromService},
		{"session reset payload too large", Message{Type: TypeSessionReset, Payload: big}, every(RulePayloadSize)},

		{"service ids", Message{Type: TypeServiceIDs, AvailableServiceIDs: []string{"SSH1", "HTTP1"}}, fromService},
		{"service ids empty list", Message{Type: TypeServiceIDs}, fromService},

		{"connection start", Message{Type: TypeConnectionStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 2}, every(ok)},
		{"connection start no stream", Message{Type: TypeConnectionStart, ConnectionID: 2}, every(RuleStreamIDSet)},
		{"connection start with service list", Message{Type: TypeConnectionStart, StreamID: 1, AvailableServiceIDs: []string{"A"}}, every(RuleNoServiceIDsList)},

		{"connection reset", Message{Type: TypeConnectionReset, StreamID: 1, ConnectionID: 2}, every(ok)},
		{"connection reset no stream", Message{Type: TypeConnectionReset, ConnectionID: 2}, every(RuleStreamIDSet)},
		{"connection reset with service list", Message{Type: TypeConnectionReset, StreamID: 1, AvailableServiceIDs: []string{"A"}}, every(RuleNoServiceIDsList)},
	} {
		for i, role := range roles {
			err := tc.msg.Validate(role)
			want := tc.want[i]
			if want == ok {
				if err != nil {
					t.Errorf("%s from %v: %v, want nil", tc.name, role, err)
				}
				continue
			}
			var re *RuleError
			if !errors.As(err, &re) {
				t.Errorf("%s from %v: %v, want a *RuleError for %q", tc.name, role, err, want)
				continue
			}
			if re.Rule != want || re.Type != tc.msg.Type || re.From != role {
				t.Errorf("%s from %v: %+v, want rule %q", tc.name, role, *re, want)
			}
			if !errors.Is(err, ErrInvalidMessage) {
				t.Errorf("%s from %v: %v does not wrap ErrInvalidMessage", tc.name, role, err)
			}
		}
	}
}

func TestRuleErrorString(t *testing.T) {
	err := (&Message{Type: TypeStreamStart, StreamID: 1}).Validate(RoleDestination)
	const want = "wire: invalid STREAM_START from destination: only the source may start streams"
	if err == nil || err.Error() != want {
		t.Fatalf("Error() = %v, want %q", err, want)
	}
	for r, s := range map[Role]string{RoleSource: "source", RoleDestination: "destination", RoleService: "service", 0: "Role(0)", 9: "Role(9)"} {
		if r.String() != s {
			t.Errorf("Role(%d).String() = %q, want %q", int(r), r.String(), s)
		}
	}
}
