package wire

import (
	"errors"
	"fmt"
	"strings"
)

// Mode is which end of a tunnel a local proxy serves. It is the one type of
// that concept: package tunnel, the local proxy's configuration, the store
// and the relay all use it (under aliases). Its values are the handshake's
// local-proxy-mode parameter values, so a Mode can be sent, stored and
// logged as it is.
type Mode string

// The two ends. The zero Mode is invalid: a configuration must say which end
// it is.
const (
	// ModeSource is the end where client applications connect; it starts
	// streams.
	ModeSource Mode = "source"
	// ModeDestination is the device end; it connects streams to local
	// services.
	ModeDestination Mode = "destination"
)

// ErrMode is wrapped by ParseMode's errors.
var ErrMode = errors.New("wire: unknown mode")

// ParseMode parses a mode as the reference local proxy's -m option spells it
// ("src", "source", "dst", "destination") and as the AWS management API does
// ("SOURCE", "DESTINATION"): case-insensitive, surrounding space ignored.
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "src", "source":
		return ModeSource, nil
	case "dst", "destination":
		return ModeDestination, nil
	}
	return "", fmt.Errorf("%w %q: use src, source, dst or destination", ErrMode, s)
}

// Valid reports whether m is ModeSource or ModeDestination.
func (m Mode) Valid() bool { return m == ModeSource || m == ModeDestination }

// String returns "source" or "destination"; an invalid Mode is quoted, e.g.
// `Mode("")`.
func (m Mode) String() string {
	if m.Valid() {
		return string(m)
	}
	return fmt.Sprintf("Mode(%q)", string(m))
}

// Other returns the other end: ModeDestination for ModeSource and the
// reverse. An invalid Mode stays as it is.
func (m Mode) Other() Mode {
	switch m {
	case ModeSource:
		return ModeDestination
	case ModeDestination:
		return ModeSource
	}
	return m
}

// APIName returns the AWS management API's spelling, "SOURCE" or
// "DESTINATION" (e.g. rotate-tunnel-access-token's clientMode); "" for an
// invalid Mode.
func (m Mode) APIName() string {
	switch m {
	case ModeSource:
		return "SOURCE"
	case ModeDestination:
		return "DESTINATION"
	}
	return ""
}

// Role returns the Role that a message sent by this end has at its
// receiver: RoleSource or RoleDestination (0 for an invalid Mode).
func (m Mode) Role() Role {
	switch m {
	case ModeSource:
		return RoleSource
	case ModeDestination:
		return RoleDestination
	}
	return 0
}
