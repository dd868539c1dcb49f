package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/store/internal/rowcodec"
)

// Store is a store.Store on a PostgreSQL database. Make it with Open.
type Store struct {
	pool      *pgxpool.Pool
	closeOnce sync.Once
}

var _ store.Store = (*Store)(nil)

// Open connects to the database dsn names and brings its schema up to
// date.
func Open(ctx context.Context, dsn string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgconn's parse errors redact the password.
		return nil, fmt.Errorf("postgres: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: connect: %w", err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: %w", err)
	}
	return &Store{pool: pool}, nil
}

// Close closes the pool, waiting for connections in use to be returned.
// It is idempotent.
func (s *Store) Close() error {
	s.closeOnce.Do(s.pool.Close)
	return nil
}

// columns are the tunnels columns, read and written by codec.
const columns = rowcodec.Columns

const placeholders = `$1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22`

// codec converts tunnels to and from rows: times are timestamptz, which
// pgx reads back in the local zone.
var codec = rowcodec.Codec[time.Time]{
	Put: func(t time.Time) time.Time { return t },
	Get: time.Time.UTC,
}

// writeErr maps constraint violations to the store's sentinels.
func writeErr(op, id string, err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "23505": // unique_violation: tunnels_pkey (ID) or tokens_pkey (hash)
			return fmt.Errorf("postgres: %s %s: %w (%s)", op, id, store.ErrExists, pe.ConstraintName)
		case "23514": // check_violation
			return fmt.Errorf("postgres: %s %s: %w: %v", op, id, store.ErrInvalidTunnel, err)
		}
	}
	return fmt.Errorf("postgres: %s %s: %w", op, id, err)
}

// putTokens makes the tokens rows of t's ends match t, given the hashes
// they had before (nil for a new tunnel).
func putTokens(ctx context.Context, tx pgx.Tx, t *store.Tunnel, oldSrc, oldDst []byte) error {
	for e := range rowcodec.TokenEdits(t, oldSrc, oldDst) {
		var err error
		if e.Hash == nil {
			_, err = tx.Exec(ctx, `DELETE FROM tokens WHERE tunnel_id = $1 AND mode = $2`, t.ID, string(e.Mode))
		} else {
			_, err = tx.Exec(ctx, `INSERT INTO tokens (hash, tunnel_id, mode) VALUES ($1, $2, $3)`, e.Hash, t.ID, string(e.Mode))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Create implements store.Store.
func (s *Store) Create(ctx context.Context, t *store.Tunnel) error {
	return s.create(ctx, t, nil)
}

// create stores t and runs extra, when set, in the same transaction.
func (s *Store) create(ctx context.Context, t *store.Tunnel, extra func(pgx.Tx) error) error {
	if err := rowcodec.Validate(t); err != nil {
		return err
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("postgres: create %s: %w", t.ID, err)
	}
	defer tx.Rollback(ctx) // no-op after Commit
	if _, err := tx.Exec(ctx, `INSERT INTO tunnels (`+columns+`) VALUES (`+placeholders+`)`, codec.Values(t)...); err != nil {
		return writeErr("create", t.ID, err)
	}
	if err := putTokens(ctx, tx, t, nil, nil); err != nil {
		return writeErr("create", t.ID, err)
	}
	if extra != nil {
		if err := extra(tx); err != nil {
			return writeErr("create", t.ID, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return writeErr("create", t.ID, err)
	}
	return nil
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, id string) (*store.Tunnel, error) {
	t, err := codec.Scan(s.pool.QueryRow(ctx, `SELECT `+columns+` FROM tunnels WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("postgres: get %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: get %s: %w", id, err)
	}
	if err := overlay(ctx, s.pool, t); err != nil {
		return nil, fmt.Errorf("postgres: get %s: %w", id, err)
	}
	return t, nil
}

// FindByToken implements store.Store.
func (s *Store) FindByToken(ctx context.Context, tokenHash []byte) (*store.Tunnel, store.Mode, error) {
	if len(tokenHash) == 0 {
		return nil, "", fmt.Errorf("postgres: find by token: empty hash: %w", store.ErrNotFound)
	}
	// Two primary-key lookups: tokens, then tunnels.
	t, err := codec.Scan(s.pool.QueryRow(ctx, `SELECT `+columns+` FROM tunnels
		WHERE id = (SELECT tunnel_id FROM tokens WHERE hash = $1)`, tokenHash))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, "", fmt.Errorf("postgres: find by token: %w", store.ErrNotFound)
	}
	if err != nil {
		return nil, "", fmt.Errorf("postgres: find by token: %w", err)
	}
	return t, rowcodec.ModeOf(t, tokenHash), nil
}

// List implements store.Store. A Limit <= 0 means no limit.
func (s *Store) List(ctx context.Context, opts store.ListOptions) ([]*store.Tunnel, string, error) {
	var (
		q     strings.Builder
		args  []any
		where []string
	)
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	q.WriteString(`SELECT ` + columns + ` FROM tunnels`)
	if opts.ThingName != "" {
		where = append(where, `thing_name = `+arg(opts.ThingName))
	}
	if opts.Cursor != "" {
		us, id, err := rowcodec.ParseCursor(opts.Cursor)
		if err != nil {
			return nil, "", fmt.Errorf("postgres: list: %w", err)
		}
		where = append(where, `(created_at, id) < (`+arg(rowcodec.FromMicro(us))+`, `+arg(id)+`)`)
	}
	if len(where) > 0 {
		q.WriteString(` WHERE ` + strings.Join(where, ` AND `))
	}
	q.WriteString(` ORDER BY created_at DESC, id DESC`)
	if opts.Limit > 0 {
		q.WriteString(` LIMIT ` + arg(opts.Limit+1)) // one more tells whether a next page exists
	}
	res, err := s.pool.Query(ctx, q.String(), args...)
	if err != nil {
		return nil, "", fmt.Errorf("postgres: list: %w", err)
	}
	defer res.Close()
	ts, err := codec.ScanAll(res)
	if err != nil {
		return nil, "", fmt.Errorf("postgres: list: %w", err)
	}
	ts, next := rowcodec.Page(ts, opts.Limit)
	if err := overlay(ctx, s.pool, ts...); err != nil {
		return nil, "", fmt.Errorf("postgres: list: %w", err)
	}
	return ts, next, nil
}

// Update implements store.Store. fn runs once, while the transaction
// holds the tunnel's row lock; it must not call s.
func (s *Store) Update(ctx context.Context, id string, fn func(*store.Tunnel) error) (*store.Tunnel, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres: update %s: %w", id, err)
	}
	defer tx.Rollback(ctx)
	t, err := codec.Scan(tx.QueryRow(ctx, `SELECT `+columns+` FROM tunnels WHERE id = $1 FOR UPDATE`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("postgres: update %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: update %s: %w", id, err)
	}
	oldSrc, oldDst, err := rowcodec.Apply(id, t, fn)
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, `UPDATE tunnels SET (`+columns+`) = (`+placeholders+`) WHERE id = $23`,
		append(codec.Values(t), id)...); err != nil {
		return nil, writeErr("update", id, err)
	}
	if err := putTokens(ctx, tx, t, oldSrc, oldDst); err != nil {
		return nil, writeErr("update", id, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, writeErr("update", id, err)
	}
	rowcodec.Normalize(t)
	if err := overlay(ctx, s.pool, t); err != nil {
		return nil, fmt.Errorf("postgres: update %s: %w", id, err)
	}
	return t, nil
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, id string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM tunnels WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("postgres: delete %s: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("postgres: delete %s: %w", id, store.ErrNotFound)
	}
	return nil
}

// CountOpen implements store.Store.
func (s *Store) CountOpen(ctx context.Context) (int, error) {
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM tunnels WHERE status = 'OPEN'`).Scan(&n); err != nil {
		return 0, fmt.Errorf("postgres: count open: %w", err)
	}
	return n, nil
}

// OpenExpiringBefore implements store.Store. Tunnels come soonest-expiring
// first.
func (s *Store) OpenExpiringBefore(ctx context.Context, t time.Time) ([]*store.Tunnel, error) {
	res, err := s.pool.Query(ctx, `SELECT `+columns+` FROM tunnels
		WHERE status = 'OPEN' AND expires_at < $1 ORDER BY expires_at, id`, t)
	if err != nil {
		return nil, fmt.Errorf("postgres: open expiring: %w", err)
	}
	defer res.Close()
	ts, err := codec.ScanAll(res)
	if err != nil {
		return nil, fmt.Errorf("postgres: open expiring: %w", err)
	}
	return ts, nil
}

// DeleteClosedBefore implements store.Store.
func (s *Store) DeleteClosedBefore(ctx context.Context, t time.Time) (int, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM tunnels WHERE status = 'CLOSED' AND closed_at < $1`, t)
	if err != nil {
		return 0, fmt.Errorf("postgres: delete closed: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// ResetConnections implements store.Store.
func (s *Store) ResetConnections(ctx context.Context, at time.Time) (int, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("postgres: reset connections: %w", err)
	}
	defer tx.Rollback(ctx)
	n := 0
	for _, q := range []string{
		`UPDATE tunnels SET src_connected = false, src_updated_at = $1 WHERE src_connected`,
		`UPDATE tunnels SET dst_connected = false, dst_updated_at = $1 WHERE dst_connected`,
	} {
		tag, err := tx.Exec(ctx, q, rowcodec.Time(at))
		if err != nil {
			return 0, fmt.Errorf("postgres: reset connections: %w", err)
		}
		n += int(tag.RowsAffected())
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("postgres: reset connections: %w", err)
	}
	return n, nil
}
