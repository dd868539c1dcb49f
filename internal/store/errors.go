package store

import "errors"

// ErrInvalidCursor reports a ListOptions.Cursor that no List returned
// (corrupt, truncated or from another system).
var ErrInvalidCursor = errors.New("store: invalid list cursor")

// ErrInvalidTunnel reports a tunnel a backend refuses to write: an empty ID,
// an unknown Status, a token hash that is not 32 bytes (a SHA-256), or an
// Update that changed the ID.
var ErrInvalidTunnel = errors.New("store: invalid tunnel")
