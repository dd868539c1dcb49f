// Package rowcodec holds the column encodings the sqlite and postgres
// backends share, so both store a tunnel the same way: times as UTC
// microseconds, services and tags as JSON arrays, empty hashes as NULL, and
// one opaque List cursor format. It has no state; everything is safe for
// concurrent use.
package rowcodec

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/sectun/sectun/internal/store"
)

// HashLen is the length of every stored token hash (SHA-256).
const HashLen = 32

// Precision is what backends keep of a time.
const Precision = time.Microsecond

// Time returns t as stored: truncated to Precision, in UTC. The zero time
// stays zero.
func Time(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.Truncate(Precision).UTC()
}

// Micro returns t as Unix microseconds (flooring, like Truncate).
func Micro(t time.Time) int64 { return t.UnixMicro() }

// FromMicro is the inverse of Micro, in UTC.
func FromMicro(us int64) time.Time { return time.UnixMicro(us).UTC() }

// NullMicro returns nil for the zero time (stored as NULL), else Micro(t).
func NullMicro(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return Micro(t)
}

// FromNullMicro is the inverse of NullMicro.
func FromNullMicro(us *int64) time.Time {
	if us == nil {
		return time.Time{}
	}
	return FromMicro(*us)
}

// Hash returns nil for an empty hash (stored as NULL), else h.
func Hash(h []byte) []byte {
	if len(h) == 0 {
		return nil
	}
	return h
}

// Services encodes services as a JSON array ("[]" when empty).
func Services(s []string) []byte {
	if len(s) == 0 {
		return []byte("[]")
	}
	b, _ := json.Marshal(s) // strings always marshal
	return b
}

// ParseServices is the inverse of Services; an empty array gives nil.
func ParseServices(b []byte) ([]string, error) {
	var s []string
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("store: corrupt services column: %w", err)
	}
	if len(s) == 0 {
		return nil, nil
	}
	return s, nil
}

// tag fixes the JSON form of a store.Tag independently of its Go field names.
type tag struct {
	Key   string `json:"k"`
	Value string `json:"v"`
}

// Tags encodes tags as a JSON array of {"k","v"} objects ("[]" when empty).
func Tags(tags []store.Tag) []byte {
	if len(tags) == 0 {
		return []byte("[]")
	}
	a := make([]tag, len(tags))
	for i, t := range tags {
		a[i] = tag{t.Key, t.Value}
	}
	b, _ := json.Marshal(a)
	return b
}

// ParseTags is the inverse of Tags; an empty array gives nil.
func ParseTags(b []byte) ([]store.Tag, error) {
	var a []tag
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, fmt.Errorf("store: corrupt tags column: %w", err)
	}
	if len(a) == 0 {
		return nil, nil
	}
	tags := make([]store.Tag, len(a))
	for i, t := range a {
		tags[i] = store.Tag{Key: t.Key, Value: t.Value}
	}
	return tags, nil
}

// Validate reports, wrapping store.ErrInvalidTunnel, why t cannot be
// written.
func Validate(t *store.Tunnel) error {
	if t.ID == "" {
		return fmt.Errorf("%w: empty ID", store.ErrInvalidTunnel)
	}
	if t.Status != store.StatusOpen && t.Status != store.StatusClosed {
		return fmt.Errorf("%w: tunnel %s: status %q is neither OPEN nor CLOSED", store.ErrInvalidTunnel, t.ID, t.Status)
	}
	for _, p := range []struct {
		name string
		h    []byte
	}{
		{"source token hash", t.Source.TokenHash},
		{"source client token hash", t.Source.ClientTokenHash},
		{"destination token hash", t.Destination.TokenHash},
		{"destination client token hash", t.Destination.ClientTokenHash},
	} {
		// Stores keep hashes only; a wrong length is most likely a plaintext
		// token handed over by mistake, which must never be written.
		if len(p.h) != 0 && len(p.h) != HashLen {
			return fmt.Errorf("%w: tunnel %s: %s is %d bytes, want %d (a SHA-256)", store.ErrInvalidTunnel, t.ID, p.name, len(p.h), HashLen)
		}
	}
	return nil
}

// Normalize makes t what reading it back would give: times as Time, empty
// slices as nil. Backends return normalized tunnels from Update.
func Normalize(t *store.Tunnel) {
	if len(t.Services) == 0 {
		t.Services = nil
	}
	if len(t.Tags) == 0 {
		t.Tags = nil
	}
	t.CreatedAt = Time(t.CreatedAt)
	t.UpdatedAt = Time(t.UpdatedAt)
	t.ExpiresAt = Time(t.ExpiresAt)
	t.ClosedAt = Time(t.ClosedAt)
	for _, p := range []*store.Peer{&t.Source, &t.Destination} {
		p.TokenHash = Hash(p.TokenHash)
		p.ClientTokenHash = Hash(p.ClientTokenHash)
		p.UpdatedAt = Time(p.UpdatedAt)
	}
}

// Cursor encodes a List position: the (CreatedAt, ID) of the last tunnel
// of a page, as unpadded URL-safe base64 of 8 bytes of big-endian Unix
// microseconds followed by the ID.
func Cursor(createdAt time.Time, id string) string {
	b := make([]byte, 8, 8+len(id))
	binary.BigEndian.PutUint64(b, uint64(Micro(createdAt)))
	b = append(b, id...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// ParseCursor is the inverse of Cursor. Errors wrap store.ErrInvalidCursor.
func ParseCursor(s string) (createdMicro int64, id string, err error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 9 {
		return 0, "", store.ErrInvalidCursor
	}
	return int64(binary.BigEndian.Uint64(b)), string(b[8:]), nil
}
