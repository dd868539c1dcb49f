// Package token makes and checks client access tokens and client tokens.
// Access tokens are 256-bit random values; only their SHA-256 hashes are
// stored, and hashes are compared in constant time. Nothing here logs.
package token

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"regexp"
)

// New returns a fresh access token (43 URL-safe base64 characters holding
// 256 random bits) and its hash.
func New() (plain string, hash []byte) {
	var b [32]byte
	rand.Read(b[:]) // never fails: crypto/rand panics on an unusable source
	plain = base64.RawURLEncoding.EncodeToString(b[:])
	return plain, Hash(plain)
}

// Hash returns the SHA-256 of a token. It is what stores keep.
func Hash(plain string) []byte {
	h := sha256.Sum256([]byte(plain))
	return h[:]
}

// Equal reports whether two hashes are equal, in constant time.
func Equal(a, b []byte) bool {
	return len(a) == len(b) && subtle.ConstantTimeCompare(a, b) == 1
}

// Short returns a short, non-reversible identifier of a token for logs: the
// first 8 hex digits of its hash.
func Short(plain string) string {
	h := sha256.Sum256([]byte(plain))
	return hex.EncodeToString(h[:4])
}

var clientTokenRE = regexp.MustCompile(`^[a-zA-Z0-9-]{32,128}$`)

// ValidClientToken reports whether s has the form the protocol requires of
// a client token: 32 to 128 letters, digits and dashes.
func ValidClientToken(s string) bool { return clientTokenRE.MatchString(s) }

// NewClientToken returns a random client token of 48 hex digits.
func NewClientToken() string {
	var b [24]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
