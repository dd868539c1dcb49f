package rowcodec

import (
	"bytes"
	"fmt"
	"iter"
	"time"

	"github.com/sectun/sectun/internal/store"
)

// Columns are the columns of the tunnels table, in the order of
// Codec.Values and Codec.Scan. Both backends' schemas have them.
const Columns = `id, arn, description, status, thing_name, services,
	lifetime_minutes, tags, created_at, updated_at, expires_at, closed_at,
	src_token_hash, src_client_token_hash, src_consumed, src_connected, src_updated_at,
	dst_token_hash, dst_client_token_hash, dst_consumed, dst_connected, dst_updated_at`

// NumColumns is the number of Columns (and of Codec.Values).
const NumColumns = 22

// Scanner is a row being read: *sql.Row, *sql.Rows, pgx.Row and pgx.Rows
// all are.
type Scanner interface{ Scan(dest ...any) error }

// Rows is a result set of several rows (*sql.Rows, pgx.Rows).
type Rows interface {
	Scanner
	Next() bool
	Err() error
}

// Codec converts between a store.Tunnel and a row of Columns for a
// backend that keeps times in columns of Go type T (int64 microseconds
// for SQLite, time.Time for PostgreSQL). Everything else is encoded the
// same way for every backend: services and tags as JSON, empty hashes as
// NULL, the zero time as NULL in the nullable time columns.
type Codec[T any] struct {
	// Put returns how a (non-zero) time is written.
	Put func(time.Time) T
	// Get is the inverse of Put; it returns UTC.
	Get func(T) time.Time
}

// Micros is the Codec of a backend keeping times as Unix microseconds.
var Micros = Codec[int64]{Put: Micro, Get: FromMicro}

func (c Codec[T]) null(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return c.Put(t)
}

func (c Codec[T]) fromNull(v *T) time.Time {
	if v == nil {
		return time.Time{}
	}
	return c.Get(*v)
}

// Values returns t's column values in the order of Columns.
func (c Codec[T]) Values(t *store.Tunnel) []any {
	return []any{
		t.ID, t.ARN, t.Description, string(t.Status), t.ThingName, Services(t.Services),
		t.LifetimeMinutes, Tags(t.Tags),
		c.Put(t.CreatedAt), c.Put(t.UpdatedAt), c.Put(t.ExpiresAt), c.null(t.ClosedAt),
		Hash(t.Source.TokenHash), Hash(t.Source.ClientTokenHash), t.Source.Consumed, t.Source.Connected, c.null(t.Source.UpdatedAt),
		Hash(t.Destination.TokenHash), Hash(t.Destination.ClientTokenHash), t.Destination.Consumed, t.Destination.Connected, c.null(t.Destination.UpdatedAt),
	}
}

// Scan reads one row of Columns. It returns row.Scan's error as it is
// (sql.ErrNoRows, pgx.ErrNoRows: callers test for it) and a corrupt JSON
// column as an error naming the tunnel.
func (c Codec[T]) Scan(row Scanner) (*store.Tunnel, error) {
	var (
		t                         store.Tunnel
		status                    string
		services, tags            []byte
		created, updated, expires T
		closed, srcUpd, dstUpd    *T
	)
	err := row.Scan(&t.ID, &t.ARN, &t.Description, &status, &t.ThingName, &services,
		&t.LifetimeMinutes, &tags, &created, &updated, &expires, &closed,
		&t.Source.TokenHash, &t.Source.ClientTokenHash, &t.Source.Consumed, &t.Source.Connected, &srcUpd,
		&t.Destination.TokenHash, &t.Destination.ClientTokenHash, &t.Destination.Consumed, &t.Destination.Connected, &dstUpd)
	if err != nil {
		return nil, err
	}
	t.Status = store.Status(status)
	if t.Services, err = ParseServices(services); err != nil {
		return nil, fmt.Errorf("%w (tunnel %s)", err, t.ID)
	}
	if t.Tags, err = ParseTags(tags); err != nil {
		return nil, fmt.Errorf("%w (tunnel %s)", err, t.ID)
	}
	t.CreatedAt = c.Get(created)
	t.UpdatedAt = c.Get(updated)
	t.ExpiresAt = c.Get(expires)
	t.ClosedAt = c.fromNull(closed)
	t.Source.UpdatedAt = c.fromNull(srcUpd)
	t.Destination.UpdatedAt = c.fromNull(dstUpd)
	for _, p := range []*store.Peer{&t.Source, &t.Destination} {
		p.TokenHash = Hash(p.TokenHash)
		p.ClientTokenHash = Hash(p.ClientTokenHash)
	}
	return &t, nil
}

// ScanAll reads every remaining row of rows (the caller closes rows).
func (c Codec[T]) ScanAll(rows Rows) ([]*store.Tunnel, error) {
	var ts []*store.Tunnel
	for rows.Next() {
		t, err := c.Scan(rows)
		if err != nil {
			return nil, err
		}
		ts = append(ts, t)
	}
	return ts, rows.Err()
}

// Apply runs an Update's fn on t, tunnel id as read (and locked) by the
// update's transaction, and checks what fn made of it: an error from fn
// is returned as it is; a changed ID or an invalid tunnel wraps
// store.ErrInvalidTunnel. It returns the token hashes t's ends had before
// fn, for TokenEdits.
func Apply(id string, t *store.Tunnel, fn func(*store.Tunnel) error) (oldSrc, oldDst []byte, err error) {
	oldSrc, oldDst = t.Source.TokenHash, t.Destination.TokenHash
	if err := fn(t); err != nil {
		return nil, nil, err
	}
	if t.ID != id {
		return nil, nil, fmt.Errorf("%w: update %s changed the ID to %q", store.ErrInvalidTunnel, id, t.ID)
	}
	if err := Validate(t); err != nil {
		return nil, nil, err
	}
	return oldSrc, oldDst, nil
}

// ModeOf returns the end of t that token hash h opens (t was found by h).
func ModeOf(t *store.Tunnel, h []byte) store.Mode {
	if bytes.Equal(t.Source.TokenHash, h) {
		return store.ModeSource
	}
	return store.ModeDestination
}

// Page cuts the result of a List query that asked for limit+1 rows (limit
// <= 0: no limit) to limit, and returns the cursor of the next page ("" if
// this is the last).
func Page(ts []*store.Tunnel, limit int) ([]*store.Tunnel, string) {
	if limit <= 0 || len(ts) <= limit {
		return ts, ""
	}
	ts = ts[:limit]
	last := ts[len(ts)-1]
	return ts, Cursor(last.CreatedAt, last.ID)
}

// TokenEdit is one change to the tokens table (hash -> tunnel and mode):
// delete the row of Mode's end when Hash is nil, else insert Hash for it.
type TokenEdit struct {
	Mode store.Mode
	Hash []byte
}

// TokenEdits yields the edits that make the tokens rows of t's ends match
// t, given the hashes they had before (nil for a new tunnel): every delete
// first, so that swapping two hashes between the ends works.
func TokenEdits(t *store.Tunnel, oldSrc, oldDst []byte) iter.Seq[TokenEdit] {
	return func(yield func(TokenEdit) bool) {
		ends := [2]struct {
			mode     store.Mode
			old, new []byte
		}{
			{store.ModeSource, oldSrc, t.Source.TokenHash},
			{store.ModeDestination, oldDst, t.Destination.TokenHash},
		}
		for _, e := range ends {
			if len(e.old) > 0 && !bytes.Equal(e.old, e.new) {
				if !yield(TokenEdit{Mode: e.mode}) {
					return
				}
			}
		}
		for _, e := range ends {
			if len(e.new) > 0 && !bytes.Equal(e.old, e.new) {
				if !yield(TokenEdit{Mode: e.mode, Hash: e.new}) {
					return
				}
			}
		}
	}
}
