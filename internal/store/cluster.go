package store

import (
	"context"
	"errors"
	"time"
)

// ErrLeaseLost reports a lease renewal for a node incarnation that is no
// longer the node's current one (another process registered the same node
// ID), or whose row is gone.
var ErrLeaseLost = errors.New("store: node lease lost")

// ErrRefused reports a handshake the store refused (bad, used, rotated or
// bound token, closed or expired tunnel). Its wrapping error's text says
// why, for the client.
var ErrRefused = errors.New("store: handshake refused")

// Node is a cluster node's row: its identity, where other nodes reach its
// link and how they authenticate it, and its lease on the database clock.
type Node struct {
	ID string
	// Incarnation is raised each time the node registers (each process
	// start): rows written by an older incarnation are stale.
	Incarnation int64
	// LinkAddr is the host:port other nodes dial for the node-to-node link.
	LinkAddr string
	// LinkCertSHA256 is the SHA-256 of the link certificate (DER); nil for
	// a plaintext link.
	LinkCertSHA256 []byte
	// LeaseValid reports whether the lease had not expired at the
	// database's now() when the row was read.
	LeaseValid bool
	// Draining is set while the node drains (SIGTERM).
	Draining bool
}

// Claim is a handshake to record in one transaction: the token's use and
// the peer row's takeover by a node.
type Claim struct {
	TokenHash []byte
	Mode      Mode
	// ClientTokenHash is the SHA-256 of the client token; nil without one.
	ClientTokenHash []byte
	// NodeID and Incarnation identify the claiming node.
	NodeID      string
	Incarnation int64
	// Now is the handshake's time for the tunnel's expiry check.
	Now time.Time
}

// PeerRoute is one end's row as a handshake or a lookup sees it.
type PeerRoute struct {
	Mode  Mode
	Epoch int64
	// Node is the node holding the end (its link address, fingerprint and
	// lease); zero when no row exists.
	Node Node
	// Connected is the row's flag AND the holding node's lease being valid
	// for the incarnation that wrote it.
	Connected bool
}

// Claimed is what a successful Claim returns.
type Claimed struct {
	TunnelID string
	Services []string
	// Epoch is the claimed end's new epoch (the fencing token).
	Epoch int64
	// Previous is the claimed end's row before the claim (a peer being
	// replaced when Connected).
	Previous PeerRoute
	// Other is the other end's row, read after the claim's lock was held:
	// when Connected on another node, this node dials that node's link.
	Other PeerRoute
}

// OutboxMessage is a notification kept until it is published.
type OutboxMessage struct {
	ID      int64
	Payload []byte
}

// ClusterStore is a Store that several tunneld nodes can share (postgres).
// Connection states then come from peer rows and node leases: Get and
// List report an end CONNECTED only while the node holding it has a valid
// lease.
type ClusterStore interface {
	Store
	// RegisterNode creates or takes over node n.ID's row with a lease of
	// ttl from the database's now(), raises its incarnation, marks every
	// peer row the node held disconnected (a restarted node corrects its
	// own rows), and returns the new incarnation.
	RegisterNode(ctx context.Context, n Node, ttl time.Duration) (int64, error)
	// RenewLease extends the lease of (id, incarnation) to now()+ttl. It
	// fails with ErrLeaseLost if that incarnation is no longer current.
	RenewLease(ctx context.Context, id string, incarnation int64, ttl time.Duration) error
	// SetDraining sets the node's draining flag.
	SetDraining(ctx context.Context, id string, draining bool) error
	// LeaveNode ends the node's lease now and marks its peer rows
	// disconnected (a clean shutdown).
	LeaveNode(ctx context.Context, id string, incarnation int64) error
	// GetNode reads a node's row (ErrNotFound if none).
	GetNode(ctx context.Context, id string) (Node, error)
	// Claim records a handshake in one transaction: the token's use is one
	// conditional UPDATE of the tunnel's row (which also locks it, so both
	// ends' handshakes, Close, Rotate and expiry of a tunnel are
	// serialized), then the end's epoch is raised and its node set, and the
	// other end's row read. Refusals wrap ErrRefused with the reason.
	Claim(ctx context.Context, c Claim) (Claimed, error)
	// ReleasePeer marks the end disconnected if its row still has epoch;
	// it reports whether it did.
	ReleasePeer(ctx context.Context, tunnelID string, mode Mode, epoch int64) (bool, error)
	// Route reads one end's row.
	Route(ctx context.Context, tunnelID string, mode Mode) (PeerRoute, error)
	// PeersOf lists the ends held by node id as (tunnel ID, mode, epoch)
	// rows still marked connected, for a resync.
	PeersOf(ctx context.Context, id string) ([]HeldPeer, error)
	// ExpireDeadPeers marks disconnected the rows of nodes whose lease
	// expired, under an advisory lock so one node does it at a time; it
	// returns how many it changed (0 when another node holds the lock).
	ExpireDeadPeers(ctx context.Context) (int, error)

	// CreateWithOutbox is Create that also stores payload in the outbox in
	// the same transaction, returning the message's ID.
	CreateWithOutbox(ctx context.Context, t *Tunnel, payload []byte) (int64, error)
	// AddOutbox stores one message on its own.
	AddOutbox(ctx context.Context, payload []byte) (int64, error)
	// DeleteOutbox removes a published message.
	DeleteOutbox(ctx context.Context, id int64) error
	// DrainOutbox hands publish the messages older than minAge, oldest
	// first, at most limit, each locked FOR UPDATE SKIP LOCKED so that
	// nodes draining at once never publish the same message; a message
	// publish accepts (nil error) is deleted. It returns how many it
	// published.
	DrainOutbox(ctx context.Context, minAge time.Duration, limit int, publish func(OutboxMessage) error) (int, error)
	// Listen calls fn with each payload sent by Notify on channel (LISTEN
	// on a dedicated connection) until ctx ends; ready is called each
	// time the LISTEN is (re-)established, so callers resync then. It
	// reconnects after errors and returns only when ctx ends.
	Listen(ctx context.Context, channel string, ready func(), fn func(payload string)) error
	// Notify sends payload on channel (pg_notify).
	Notify(ctx context.Context, channel, payload string) error
}

// HeldPeer is an end a node holds.
type HeldPeer struct {
	TunnelID string
	Mode     Mode
	Epoch    int64
}

// ClaimRefusal says why tunnel t refuses claim c, in words for the client,
// or returns "" when t accepts it. Backends use it to explain a Claim
// whose conditional UPDATE matched no row; the single-node authorizer
// applies the same rules.
func ClaimRefusal(t *Tunnel, mode Mode, tokenHash, clientTokenHash []byte, now time.Time) string {
	p := t.Peer(mode)
	switch {
	case p == nil || !equalHash(p.TokenHash, tokenHash):
		return "access token was rotated"
	case t.Status != StatusOpen:
		return "tunnel is closed"
	case !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt):
		return "tunnel lifetime has expired"
	case p.Consumed:
		return "access token already used without a client token: rotate the token (RotateTunnelAccessToken), and pass a client token to be able to reconnect"
	case clientTokenHash == nil && p.ClientTokenHash != nil:
		return "access token is bound to a client token: reconnect with the same client token"
	case clientTokenHash != nil && p.ClientTokenHash != nil && !equalHash(p.ClientTokenHash, clientTokenHash):
		return "access token already used with a different client token"
	}
	return ""
}

func equalHash(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	var v byte
	for i := range a {
		v |= a[i] ^ b[i]
	}
	return v == 0
}
