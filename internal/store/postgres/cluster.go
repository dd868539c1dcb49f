package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/store/internal/rowcodec"
)

var _ store.ClusterStore = (*Store)(nil)

// deadPeersLock is the advisory lock key of ExpireDeadPeers ("sectup").
const deadPeersLock = 0x736563747570

// interval renders d for a PostgreSQL interval parameter.
func interval(d time.Duration) string { return fmt.Sprintf("%d microseconds", d.Microseconds()) }

// RegisterNode implements store.ClusterStore.
func (s *Store) RegisterNode(ctx context.Context, n store.Node, ttl time.Duration) (int64, error) {
	if n.ID == "" {
		return 0, fmt.Errorf("postgres: register node: empty node ID: %w", store.ErrInvalidTunnel)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("postgres: register node %s: %w", n.ID, err)
	}
	defer tx.Rollback(ctx)
	var inc int64
	err = tx.QueryRow(ctx, `INSERT INTO nodes (id, incarnation, link_addr, link_cert_sha256, lease_expires_at, draining)
		VALUES ($1, 1, $2, $3, now() + $4::interval, false)
		ON CONFLICT (id) DO UPDATE SET incarnation = nodes.incarnation + 1, link_addr = excluded.link_addr,
			link_cert_sha256 = excluded.link_cert_sha256, lease_expires_at = excluded.lease_expires_at, draining = false
		RETURNING incarnation`, n.ID, n.LinkAddr, nilIfEmpty(n.LinkCertSHA256), interval(ttl)).Scan(&inc)
	if err != nil {
		return 0, fmt.Errorf("postgres: register node %s: %w", n.ID, err)
	}
	if _, err := tx.Exec(ctx, `UPDATE peers SET connected = false, updated_at = now() WHERE node_id = $1 AND connected`, n.ID); err != nil {
		return 0, fmt.Errorf("postgres: register node %s: %w", n.ID, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("postgres: register node %s: %w", n.ID, err)
	}
	return inc, nil
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// RenewLease implements store.ClusterStore.
func (s *Store) RenewLease(ctx context.Context, id string, inc int64, ttl time.Duration) error {
	tag, err := s.pool.Exec(ctx, `UPDATE nodes SET lease_expires_at = now() + $3::interval WHERE id = $1 AND incarnation = $2`,
		id, inc, interval(ttl))
	if err != nil {
		return fmt.Errorf("postgres: renew lease %s: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("postgres: renew lease %s/%d: %w", id, inc, store.ErrLeaseLost)
	}
	return nil
}

// SetDraining implements store.ClusterStore.
func (s *Store) SetDraining(ctx context.Context, id string, draining bool) error {
	tag, err := s.pool.Exec(ctx, `UPDATE nodes SET draining = $2 WHERE id = $1`, id, draining)
	if err != nil {
		return fmt.Errorf("postgres: set draining %s: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("postgres: set draining %s: %w", id, store.ErrNotFound)
	}
	return nil
}

// LeaveNode implements store.ClusterStore.
func (s *Store) LeaveNode(ctx context.Context, id string, inc int64) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("postgres: leave %s: %w", id, err)
	}
	defer tx.Rollback(ctx)
	tag, err := tx.Exec(ctx, `UPDATE nodes SET lease_expires_at = now() WHERE id = $1 AND incarnation = $2`, id, inc)
	if err != nil {
		return fmt.Errorf("postgres: leave %s: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("postgres: leave %s/%d: %w", id, inc, store.ErrLeaseLost)
	}
	if _, err := tx.Exec(ctx, `UPDATE peers SET connected = false, updated_at = now() WHERE node_id = $1 AND incarnation = $2 AND connected`, id, inc); err != nil {
		return fmt.Errorf("postgres: leave %s: %w", id, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("postgres: leave %s: %w", id, err)
	}
	return nil
}

// GetNode implements store.ClusterStore.
func (s *Store) GetNode(ctx context.Context, id string) (store.Node, error) {
	n := store.Node{ID: id}
	err := s.pool.QueryRow(ctx, `SELECT incarnation, link_addr, link_cert_sha256, lease_expires_at > now(), draining
		FROM nodes WHERE id = $1`, id).Scan(&n.Incarnation, &n.LinkAddr, &n.LinkCertSHA256, &n.LeaseValid, &n.Draining)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Node{}, fmt.Errorf("postgres: node %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.Node{}, fmt.Errorf("postgres: node %s: %w", id, err)
	}
	return n, nil
}

// prefix is the tunnels column prefix of an end.
func prefix(m store.Mode) string {
	if m == store.ModeSource {
		return "src"
	}
	return "dst"
}

func other(m store.Mode) store.Mode {
	if m == store.ModeSource {
		return store.ModeDestination
	}
	return store.ModeSource
}

// claimSQL is the token's use: one conditional UPDATE per end (the
// column names differ). $1 token hash, $2 client token hash or NULL,
// $3 mode, $4 now.
var claimSQL = map[store.Mode]string{}

func init() {
	for _, m := range []store.Mode{store.ModeSource, store.ModeDestination} {
		claimSQL[m] = strings.ReplaceAll(`UPDATE tunnels SET
			P_consumed = P_consumed OR $2::bytea IS NULL,
			P_client_token_hash = COALESCE(P_client_token_hash, $2::bytea)
		WHERE id = (SELECT tunnel_id FROM tokens WHERE hash = $1 AND mode = $3)
			AND P_token_hash = $1 AND status = 'OPEN' AND expires_at > $4
			AND NOT P_consumed
			AND CASE WHEN $2::bytea IS NULL THEN P_client_token_hash IS NULL
				ELSE P_client_token_hash IS NULL OR P_client_token_hash = $2::bytea END
		RETURNING id, services`, "P_", prefix(m)+"_")
	}
}

// routeCols reads a peers row joined with its node: epoch, node_id,
// incarnation, link_addr, link_cert_sha256, lease valid, draining,
// connected (flag AND lease of the writing incarnation).
const routeCols = `p.epoch, p.node_id, n.incarnation, n.link_addr, n.link_cert_sha256,
	COALESCE(n.lease_expires_at > now(), false), COALESCE(n.draining, false),
	p.connected AND COALESCE(n.lease_expires_at > now() AND n.incarnation = p.incarnation, false)`

// routeScan holds the nullable columns of routeCols.
type routeScan struct {
	epoch    *int64
	node     *string
	inc      *int64
	addr     *string
	sha      []byte
	valid    *bool
	draining *bool
	conn     *bool
}

func (r *routeScan) dest() []any {
	return []any{&r.epoch, &r.node, &r.inc, &r.addr, &r.sha, &r.valid, &r.draining, &r.conn}
}

func (r *routeScan) route(m store.Mode) store.PeerRoute {
	pr := store.PeerRoute{Mode: m}
	if r.epoch == nil {
		return pr
	}
	pr.Epoch = *r.epoch
	pr.Node.ID = *r.node
	if r.inc != nil {
		pr.Node.Incarnation = *r.inc
	}
	if r.addr != nil {
		pr.Node.LinkAddr = *r.addr
	}
	pr.Node.LinkCertSHA256 = r.sha
	pr.Node.LeaseValid = r.valid != nil && *r.valid
	pr.Node.Draining = r.draining != nil && *r.draining
	pr.Connected = r.conn != nil && *r.conn
	return pr
}

// Claim implements store.ClusterStore: two statements in one transaction.
// The first is the token's use and takes the tunnel's row lock; the
// second, with a snapshot taken after the lock was granted, raises the
// end's epoch and reads both ends' rows (so of two ends claimed at once
// on two nodes, the second always sees the first).
func (s *Store) Claim(ctx context.Context, c store.Claim) (store.Claimed, error) {
	q, ok := claimSQL[c.Mode]
	if !ok || len(c.TokenHash) != 32 {
		return store.Claimed{}, fmt.Errorf("postgres: claim: %w: invalid access token", store.ErrRefused)
	}
	for attempt := 0; ; attempt++ {
		cl, err := s.claimOnce(ctx, q, c)
		if !errors.Is(err, errNoMatch) {
			return cl, err
		}
		// Explain the refusal; if the tunnel now accepts (it changed
		// between the two reads), try once more.
		t, mode, ferr := s.FindByToken(ctx, c.TokenHash)
		if errors.Is(ferr, store.ErrNotFound) {
			return store.Claimed{}, fmt.Errorf("postgres: claim: %w: invalid access token", store.ErrRefused)
		}
		if ferr != nil {
			return store.Claimed{}, fmt.Errorf("postgres: claim: %w", ferr)
		}
		if mode != c.Mode {
			return store.Claimed{}, fmt.Errorf("postgres: claim: %w: this access token is for local-proxy-mode=%s, not %s", store.ErrRefused, mode, c.Mode)
		}
		if why := store.ClaimRefusal(t, c.Mode, c.TokenHash, c.ClientTokenHash, c.Now); why != "" || attempt > 0 {
			if why == "" {
				why = "access token changed during the handshake: try again"
			}
			return store.Claimed{}, fmt.Errorf("postgres: claim: %w: %s", store.ErrRefused, why)
		}
	}
}

var errNoMatch = errors.New("no row matched")

func (s *Store) claimOnce(ctx context.Context, q string, c store.Claim) (store.Claimed, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return store.Claimed{}, fmt.Errorf("postgres: claim: %w", err)
	}
	defer tx.Rollback(ctx)
	var cl store.Claimed
	var services []byte
	err = tx.QueryRow(ctx, q, c.TokenHash, nilIfEmpty(c.ClientTokenHash), string(c.Mode), c.Now).Scan(&cl.TunnelID, &services)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Claimed{}, errNoMatch
	}
	if err != nil {
		return store.Claimed{}, fmt.Errorf("postgres: claim: %w", err)
	}
	if cl.Services, err = rowcodec.ParseServices(services); err != nil {
		return store.Claimed{}, fmt.Errorf("postgres: claim %s: %w", cl.TunnelID, err)
	}
	var prev, oth routeScan
	err = tx.QueryRow(ctx, `WITH prev AS (
			SELECT `+routeCols+` FROM peers p LEFT JOIN nodes n ON n.id = p.node_id
			WHERE p.tunnel_id = $1 AND p.mode = $2
		), up AS (
			INSERT INTO peers AS p (tunnel_id, mode, epoch, node_id, incarnation, connected, updated_at)
			VALUES ($1, $2, 1, $3, $4, true, now())
			ON CONFLICT (tunnel_id, mode) DO UPDATE SET epoch = p.epoch + 1, node_id = excluded.node_id,
				incarnation = excluded.incarnation, connected = true, updated_at = now()
			RETURNING epoch
		), oth AS (
			SELECT `+routeCols+` FROM peers p LEFT JOIN nodes n ON n.id = p.node_id
			WHERE p.tunnel_id = $1 AND p.mode = $5
		)
		SELECT up.epoch, prev.*, oth.* FROM up LEFT JOIN prev ON true LEFT JOIN oth ON true`,
		cl.TunnelID, string(c.Mode), c.NodeID, c.Incarnation, string(other(c.Mode))).
		Scan(append(append([]any{&cl.Epoch}, prev.dest()...), oth.dest()...)...)
	if err != nil {
		return store.Claimed{}, fmt.Errorf("postgres: claim %s: %w", cl.TunnelID, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return store.Claimed{}, fmt.Errorf("postgres: claim %s: %w", cl.TunnelID, err)
	}
	cl.Previous, cl.Other = prev.route(c.Mode), oth.route(other(c.Mode))
	return cl, nil
}

// ReleasePeer implements store.ClusterStore.
func (s *Store) ReleasePeer(ctx context.Context, tunnelID string, mode store.Mode, epoch int64) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE peers SET connected = false, updated_at = now()
		WHERE tunnel_id = $1 AND mode = $2 AND epoch = $3 AND connected`, tunnelID, string(mode), epoch)
	if err != nil {
		return false, fmt.Errorf("postgres: release %s/%s: %w", tunnelID, mode, err)
	}
	return tag.RowsAffected() == 1, nil
}

// Route implements store.ClusterStore. A missing row is a zero route.
func (s *Store) Route(ctx context.Context, tunnelID string, mode store.Mode) (store.PeerRoute, error) {
	var r routeScan
	err := s.pool.QueryRow(ctx, `SELECT `+routeCols+` FROM peers p LEFT JOIN nodes n ON n.id = p.node_id
		WHERE p.tunnel_id = $1 AND p.mode = $2`, tunnelID, string(mode)).Scan(r.dest()...)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return store.PeerRoute{}, fmt.Errorf("postgres: route %s/%s: %w", tunnelID, mode, err)
	}
	return r.route(mode), nil
}

// PeersOf implements store.ClusterStore.
func (s *Store) PeersOf(ctx context.Context, id string) ([]store.HeldPeer, error) {
	rows, err := s.pool.Query(ctx, `SELECT tunnel_id, mode, epoch FROM peers WHERE node_id = $1 AND connected ORDER BY tunnel_id, mode`, id)
	if err != nil {
		return nil, fmt.Errorf("postgres: peers of %s: %w", id, err)
	}
	defer rows.Close()
	var out []store.HeldPeer
	for rows.Next() {
		var h store.HeldPeer
		var m string
		if err := rows.Scan(&h.TunnelID, &m, &h.Epoch); err != nil {
			return nil, fmt.Errorf("postgres: peers of %s: %w", id, err)
		}
		h.Mode = store.Mode(m)
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: peers of %s: %w", id, err)
	}
	return out, nil
}

// ExpireDeadPeers implements store.ClusterStore.
func (s *Store) ExpireDeadPeers(ctx context.Context) (int, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("postgres: expire dead peers: %w", err)
	}
	defer tx.Rollback(ctx)
	var got bool
	if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1)`, int64(deadPeersLock)).Scan(&got); err != nil {
		return 0, fmt.Errorf("postgres: expire dead peers: %w", err)
	}
	if !got {
		return 0, nil
	}
	tag, err := tx.Exec(ctx, `UPDATE peers p SET connected = false, updated_at = now()
		WHERE p.connected AND NOT EXISTS (SELECT 1 FROM nodes n
			WHERE n.id = p.node_id AND n.incarnation = p.incarnation AND n.lease_expires_at > now())`)
	if err != nil {
		return 0, fmt.Errorf("postgres: expire dead peers: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("postgres: expire dead peers: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// CreateWithOutbox implements store.ClusterStore.
func (s *Store) CreateWithOutbox(ctx context.Context, t *store.Tunnel, payload []byte) (int64, error) {
	var id int64
	err := s.create(ctx, t, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `INSERT INTO outbox (payload) VALUES ($1) RETURNING id`, payload).Scan(&id)
	})
	return id, err
}

// AddOutbox implements store.ClusterStore.
func (s *Store) AddOutbox(ctx context.Context, payload []byte) (int64, error) {
	var id int64
	if err := s.pool.QueryRow(ctx, `INSERT INTO outbox (payload) VALUES ($1) RETURNING id`, payload).Scan(&id); err != nil {
		return 0, fmt.Errorf("postgres: add outbox: %w", err)
	}
	return id, nil
}

// DeleteOutbox implements store.ClusterStore.
func (s *Store) DeleteOutbox(ctx context.Context, id int64) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM outbox WHERE id = $1`, id); err != nil {
		return fmt.Errorf("postgres: delete outbox %d: %w", id, err)
	}
	return nil
}

// DrainOutbox implements store.ClusterStore. Each message is its own
// transaction, so one that fails to publish does not hold back the rest.
func (s *Store) DrainOutbox(ctx context.Context, minAge time.Duration, limit int, publish func(store.OutboxMessage) error) (int, error) {
	n := 0
	for n < limit {
		tx, err := s.pool.Begin(ctx)
		if err != nil {
			return n, fmt.Errorf("postgres: drain outbox: %w", err)
		}
		var m store.OutboxMessage
		err = tx.QueryRow(ctx, `SELECT id, payload FROM outbox WHERE created_at < now() - $1::interval
			ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED`, interval(minAge)).Scan(&m.ID, &m.Payload)
		if errors.Is(err, pgx.ErrNoRows) {
			tx.Rollback(ctx)
			return n, nil
		}
		if err != nil {
			tx.Rollback(ctx)
			return n, fmt.Errorf("postgres: drain outbox: %w", err)
		}
		if err := publish(m); err != nil {
			tx.Rollback(ctx)
			return n, fmt.Errorf("postgres: drain outbox: publish %d: %w", m.ID, err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM outbox WHERE id = $1`, m.ID); err != nil {
			tx.Rollback(ctx)
			return n, fmt.Errorf("postgres: drain outbox: %w", err)
		}
		if err := tx.Commit(ctx); err != nil {
			return n, fmt.Errorf("postgres: drain outbox: %w", err)
		}
		n++
	}
	return n, nil
}

// Notify implements store.ClusterStore.
func (s *Store) Notify(ctx context.Context, channel, payload string) error {
	if _, err := s.pool.Exec(ctx, `SELECT pg_notify($1, $2)`, channel, payload); err != nil {
		return fmt.Errorf("postgres: notify: %w", err)
	}
	return nil
}

// Listen implements store.ClusterStore.
func (s *Store) Listen(ctx context.Context, channel string, ready func(), fn func(string)) error {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, channel, ready, fn)
		if ctx.Err() != nil {
			break
		}
		_ = err
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
	return ctx.Err()
}

func (s *Store) listenOnce(ctx context.Context, channel string, ready func(), fn func(string)) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	// The connection leaves the pool: it is in LISTEN mode for good.
	pc := conn.Hijack()
	defer pc.Close(context.WithoutCancel(ctx))
	if _, err := pc.Exec(ctx, `LISTEN `+pgx.Identifier{channel}.Sanitize()); err != nil {
		return err
	}
	if ready != nil {
		ready()
	}
	for {
		var n *pgconn.Notification
		n, err = pc.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		fn(n.Payload)
	}
}

// overlay sets the connection states of ts's ends from their peer rows,
// where rows exist (cluster mode): an end is connected only while the
// node holding it has a valid lease for the incarnation that wrote the
// row. Tunnels without peer rows (single-node mode) are left as stored.
func overlay(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, ts ...*store.Tunnel) error {
	if len(ts) == 0 {
		return nil
	}
	ids := make([]string, len(ts))
	byID := make(map[string]*store.Tunnel, len(ts))
	for i, t := range ts {
		ids[i] = t.ID
		byID[t.ID] = t
	}
	rows, err := q.Query(ctx, `SELECT p.tunnel_id, p.mode,
			p.connected AND COALESCE(n.lease_expires_at > now() AND n.incarnation = p.incarnation, false),
			CASE WHEN p.connected AND NOT COALESCE(n.lease_expires_at > now() AND n.incarnation = p.incarnation, false)
				THEN greatest(p.updated_at, least(COALESCE(n.lease_expires_at, p.updated_at), now()))
				ELSE p.updated_at END
		FROM peers p LEFT JOIN nodes n ON n.id = p.node_id WHERE p.tunnel_id = ANY($1)`, ids)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id, mode string
		var conn bool
		var at time.Time
		if err := rows.Scan(&id, &mode, &conn, &at); err != nil {
			return err
		}
		if p := byID[id].Peer(store.Mode(mode)); p != nil {
			p.Connected = conn
			p.UpdatedAt = at.UTC()
		}
	}
	return rows.Err()
}
