// Package store keeps tunnels: their metadata, hashed access tokens, client
// token bindings and connection states. Store is the interface the server
// uses; sqlite (the embedded default) and postgres implement it, and
// storetest holds the conformance suite both must pass.
//
// Concurrency: implementations are safe for concurrent use. Update is a
// read-modify-write transaction: concurrent updates of one tunnel are
// serialized.
//
// Errors: ErrNotFound when no tunnel matches; errors returned by an Update
// function are returned unchanged (no write happens).
package store

import (
	"context"
	"errors"
	"time"

	"github.com/sectun/sectun/wire"
)

// ErrNotFound reports that no tunnel matches.
var ErrNotFound = errors.New("store: tunnel not found")

// ErrExists reports a CreateTunnel with an ID that is already taken.
var ErrExists = errors.New("store: tunnel already exists")

// Status is a tunnel's life-cycle state, as AWS names it.
type Status string

// Tunnel statuses.
const (
	StatusOpen   Status = "OPEN"
	StatusClosed Status = "CLOSED"
)

// Mode is one end of a tunnel: wire.Mode, stored as its string
// ("source" or "destination").
type Mode = wire.Mode

// The two ends.
const (
	ModeSource      = wire.ModeSource
	ModeDestination = wire.ModeDestination
)

// Tag is a resource tag.
type Tag struct {
	Key, Value string
}

// Peer is the state of one end of a tunnel.
type Peer struct {
	// TokenHash is the SHA-256 of the end's current client access token.
	TokenHash []byte
	// ClientTokenHash is the SHA-256 of the client token bound to the access
	// token by its first successful handshake; nil while unbound.
	ClientTokenHash []byte
	// Consumed is set when the access token was used without a client token:
	// it can never be used again.
	Consumed bool
	// Connected reports whether a peer holds a WebSocket for this end.
	Connected bool
	// UpdatedAt is when Connected last changed (or the tunnel's creation).
	UpdatedAt time.Time
}

// Tunnel is one tunnel and everything the service knows of it. Times are
// UTC with at least millisecond precision.
type Tunnel struct {
	ID          string
	ARN         string
	Description string
	Status      Status
	ThingName   string   // destinationConfig.thingName; may be empty
	Services    []string // destinationConfig.services; may be empty
	// LifetimeMinutes is timeoutConfig.maxLifetimeTimeoutMinutes.
	LifetimeMinutes int
	Tags            []Tag
	CreatedAt       time.Time
	UpdatedAt       time.Time
	// ExpiresAt is CreatedAt + LifetimeMinutes.
	ExpiresAt time.Time
	// ClosedAt is zero while the tunnel is open.
	ClosedAt    time.Time
	Source      Peer
	Destination Peer
}

// Peer returns a pointer to the Peer of mode m (nil for an unknown mode).
func (t *Tunnel) Peer(m Mode) *Peer {
	switch m {
	case ModeSource:
		return &t.Source
	case ModeDestination:
		return &t.Destination
	}
	return nil
}

// ListOptions selects tunnels for List.
type ListOptions struct {
	// ThingName, when set, keeps only tunnels for that thing.
	ThingName string
	// Limit is the page size; 0 means no limit.
	Limit int
	// Cursor is the NextCursor of the previous page; "" starts at the newest.
	Cursor string
}

// Store persists tunnels.
type Store interface {
	// Create stores a new tunnel. It fails with ErrExists if the ID is taken.
	Create(ctx context.Context, t *Tunnel) error
	// Get returns the tunnel with that ID.
	Get(ctx context.Context, id string) (*Tunnel, error)
	// FindByToken returns the tunnel one of whose ends has the token hash,
	// and which end it is.
	FindByToken(ctx context.Context, tokenHash []byte) (*Tunnel, Mode, error)
	// List returns tunnels newest first (by CreatedAt, then ID), and the
	// cursor of the next page ("" when there is none).
	List(ctx context.Context, opts ListOptions) (tunnels []*Tunnel, nextCursor string, err error)
	// Update loads the tunnel, calls fn, and stores what fn left in it, in
	// one transaction. If fn returns an error nothing is written and that
	// error is returned. fn may run more than once if the transaction is
	// retried. fn must not change the ID.
	Update(ctx context.Context, id string, fn func(*Tunnel) error) (*Tunnel, error)
	// Delete removes a tunnel.
	Delete(ctx context.Context, id string) error
	// CountOpen returns the number of tunnels with StatusOpen.
	CountOpen(ctx context.Context) (int, error)
	// OpenExpiringBefore returns open tunnels whose ExpiresAt is before t.
	OpenExpiringBefore(ctx context.Context, t time.Time) ([]*Tunnel, error)
	// DeleteClosedBefore removes closed tunnels whose ClosedAt is before t
	// and returns how many it removed.
	DeleteClosedBefore(ctx context.Context, t time.Time) (int, error)
	// ResetConnections marks every connected end of every tunnel
	// disconnected, with UpdatedAt at, and returns how many ends it
	// changed. A single tunneld calls it at start: no peer survives a
	// restart, and rows a killed process left CONNECTED would otherwise
	// stay so forever.
	ResetConnections(ctx context.Context, at time.Time) (int, error)
	// Close releases the store's resources.
	Close() error
}
