package config

import (
	"errors"
	"testing"
)

// TestSourceMappingBracketInZone: "::%]:0" used to parse (netip accepts
// the zone "]") into a host that formats as "[::%]]:0", which does not
// parse back. Found by FuzzParseMappings (testdata/fuzz).
func TestSourceMappingBracketInZone(t *testing.T) {
	for _, in := range []string{"::%]:0", "SSH=::%]:22", "fe80::1%[x:80"} {
		if ms, err := ParseMappings(in, ModeSource); !errors.Is(err, ErrMapping) {
			t.Errorf("ParseMappings(%q) = %v, %v; want ErrMapping", in, ms, err)
		}
	}
	if _, err := ParseMappings("SSH=fe80::1%eth0:22", ModeSource); err != nil {
		t.Errorf("a zone without brackets: %v", err)
	}
}
