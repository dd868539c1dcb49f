package tunnel

import (
	"errors"
	"strings"
	"testing"
)

// TestHandshakeStatusIsPermanent: 4xx refusals end a session, 5xx and 429
// (the service rate-limits failed attempts per address) are retried.
func TestHandshakeStatusIsPermanent(t *testing.T) {
	for _, c := range []struct {
		status    int
		permanent bool
	}{
		{400, true}, {401, true}, {403, true}, {410, true},
		{429, false}, {500, false}, {502, false}, {503, false},
	} {
		err := error(&HandshakeError{StatusCode: c.status, Reason: handshakeReason(c.status, "", ModeSource)})
		if got := errors.Is(err, ErrTokenRejected); got != c.permanent {
			t.Errorf("HTTP %d: ErrTokenRejected = %v, want %v", c.status, got, c.permanent)
		}
		if got := permanent(err); got != c.permanent {
			t.Errorf("HTTP %d: permanent = %v, want %v", c.status, got, c.permanent)
		}
	}
	if r := handshakeReason(429, "too many failed handshakes", ModeSource); !strings.Contains(r, "retried") {
		t.Errorf("429 reason %q", r)
	}
}
