package wire

import (
	"errors"
	"testing"
)

func TestParseMode(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Mode
	}{
		{"src", ModeSource}, {"source", ModeSource}, {"SOURCE", ModeSource}, {" Source ", ModeSource},
		{"dst", ModeDestination}, {"destination", ModeDestination}, {"DESTINATION", ModeDestination}, {"DST", ModeDestination},
	} {
		got, err := ParseMode(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseMode(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "s", "sources", "ALL", "service", "dest"} {
		if m, err := ParseMode(in); !errors.Is(err, ErrMode) || m != "" {
			t.Errorf("ParseMode(%q) = %v, %v; want ErrMode", in, m, err)
		}
	}
}

func TestModeMethods(t *testing.T) {
	if ModeSource.String() != "source" || ModeDestination.String() != "destination" || Mode("").String() != `Mode("")` || Mode("x").String() != `Mode("x")` {
		t.Fatal(ModeSource, ModeDestination, Mode(""), Mode("x"))
	}
	if !ModeSource.Valid() || !ModeDestination.Valid() || Mode("").Valid() || Mode("SOURCE").Valid() {
		t.Fatal("Valid")
	}
	if ModeSource.Other() != ModeDestination || ModeDestination.Other() != ModeSource || Mode("x").Other() != "x" {
		t.Fatal("Other")
	}
	if ModeSource.APIName() != "SOURCE" || ModeDestination.APIName() != "DESTINATION" || Mode("").APIName() != "" {
		t.Fatal("APIName")
	}
	if ModeSource.Role() != RoleSource || ModeDestination.Role() != RoleDestination || Mode("").Role() != 0 {
		t.Fatal("Role")
	}
	for _, m := range []Mode{ModeSource, ModeDestination} {
		if p, err := ParseMode(m.String()); p != m || err != nil {
			t.Fatal(m, p, err)
		}
		if p, err := ParseMode(m.APIName()); p != m || err != nil {
			t.Fatal(m, p, err)
		}
	}
}
