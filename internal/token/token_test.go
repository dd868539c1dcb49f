package token

import (
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		plain, hash := New()
		if len(plain) != 43 || strings.ContainsAny(plain, "+/=") {
			t.Fatalf("token %q: want 43 URL-safe characters", plain)
		}
		if seen[plain] {
			t.Fatal("token repeated")
		}
		seen[plain] = true
		if !Equal(hash, Hash(plain)) || len(hash) != 32 {
			t.Fatal("hash does not match the token")
		}
	}
}

func TestEqual(t *testing.T) {
	a, b := Hash("a"), Hash("b")
	if Equal(a, b) || !Equal(a, Hash("a")) || Equal(a, a[:31]) || Equal(nil, a) {
		t.Fatal("Equal is wrong")
	}
}

func TestShortHidesToken(t *testing.T) {
	plain, _ := New()
	s := Short(plain)
	if len(s) != 8 || strings.Contains(plain, s) || s != Short(plain) {
		t.Fatalf("Short(%q) = %q", plain, s)
	}
}

func TestValidClientToken(t *testing.T) {
	for s, want := range map[string]bool{
		strings.Repeat("a", 31):          false,
		strings.Repeat("a", 32):          true,
		strings.Repeat("A-9", 42) + "ab": true, // 128
		strings.Repeat("a", 129):         false,
		strings.Repeat("a", 31) + "_":    false,
		strings.Repeat("a", 31) + "\n":   false,
		"":                               false,
	} {
		if ValidClientToken(s) != want {
			t.Errorf("ValidClientToken(%q) = %v", s, !want)
		}
	}
	if c := NewClientToken(); !ValidClientToken(c) {
		t.Fatalf("NewClientToken %q is not valid", c)
	}
}
