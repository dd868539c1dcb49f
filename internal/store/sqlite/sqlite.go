package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/store/internal/rowcodec"
)

// Memory is the path that opens a private in-memory database (for tests):
// one connection serves reads and writes, and the data is gone on Close.
const Memory = ":memory:"

// busyTimeout bounds how long a statement waits for a lock held by another
// process (or by a checkpoint) before failing with SQLITE_BUSY.
const busyTimeout = 10 * time.Second

// Store is a store.Store on one SQLite file. Make it with Open.
type Store struct {
	w *sql.DB // one connection, BEGIN IMMEDIATE: every write
	r *sql.DB // read-only pool; w itself for Memory

	// Prepared statements of the hot paths: preparing a 22-column SELECT
	// costs more than running it. database/sql prepares each once per
	// connection.
	get, find                            *sql.Stmt // on r
	lock, insert, update, tokDel, tokIns *sql.Stmt // on w

	path string // for messages about the file

	closeOnce sync.Once
	closeErr  error
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the database file at path, or a private
// in-memory database for Memory, and brings its schema up to date.
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" {
		return nil, errors.New("sqlite: empty database path")
	}
	// The driver splits the DSN at the first '?', and a "file:" prefix
	// would make it a URI: refuse both rather than open some other file.
	if strings.ContainsRune(path, '?') || strings.HasPrefix(path, "file:") {
		return nil, fmt.Errorf("sqlite: database path %q must not contain '?' or start with \"file:\"", path)
	}
	common := url.Values{}
	common.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	common.Add("_pragma", "foreign_keys(1)")

	wq := url.Values{}
	for k, v := range common {
		wq[k] = append([]string(nil), v...)
	}
	wq.Add("_txlock", "immediate")
	if path != Memory {
		wq.Add("_pragma", "journal_mode(WAL)")
		// With WAL, NORMAL loses no committed transaction on an application
		// crash, only (maybe) the last ones on a power failure, and saves an
		// fsync per commit.
		wq.Add("_pragma", "synchronous(NORMAL)")
	}
	w, err := sql.Open("sqlite", path+"?"+wq.Encode())
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	// One writer connection: writers queue in database/sql instead of
	// spinning on SQLITE_BUSY, and Update's transaction owns the file.
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	s := &Store{w: w, r: w, path: path}
	if err := migrateWaiting(ctx, w); err != nil {
		w.Close()
		return nil, fmt.Errorf("sqlite: %s: %w", path, err)
	}
	if path != Memory {
		rq := common
		rq.Add("_pragma", "query_only(1)")
		r, err := sql.Open("sqlite", path+"?"+rq.Encode())
		if err != nil {
			w.Close()
			return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
		}
		n := max(4, runtime.GOMAXPROCS(0))
		r.SetMaxOpenConns(n)
		r.SetMaxIdleConns(n) // opening a connection parses the schema: keep them
		r.SetConnMaxLifetime(0)
		r.SetConnMaxIdleTime(0)
		s.r = r
	}
	if err := s.prepare(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("sqlite: %s: %w", path, err)
	}
	return s, nil
}

const (
	selectByID    = `SELECT ` + columns + ` FROM tunnels WHERE id = ?`
	selectByToken = `SELECT ` + columns + ` FROM tunnels WHERE id = (SELECT tunnel_id FROM tokens WHERE hash = ?)`
)

func (s *Store) prepare(ctx context.Context) error {
	for _, p := range []struct {
		db    *sql.DB
		dst   **sql.Stmt
		query string
	}{
		{s.r, &s.get, selectByID},
		{s.r, &s.find, selectByToken},
		{s.w, &s.lock, selectByID},
		{s.w, &s.insert, `INSERT INTO tunnels (` + columns + `) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`},
		{s.w, &s.update, `UPDATE tunnels SET (` + columns + `) = (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) WHERE id = ?`},
		{s.w, &s.tokDel, `DELETE FROM tokens WHERE tunnel_id = ? AND mode = ?`},
		{s.w, &s.tokIns, `INSERT INTO tokens (hash, tunnel_id, mode) VALUES (?, ?, ?)`},
	} {
		st, err := p.db.PrepareContext(ctx, p.query)
		if err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
		*p.dst = st
	}
	return nil
}

// Close closes the database. It is idempotent; calls after the first
// return the first call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		for _, st := range []*sql.Stmt{s.get, s.find, s.lock, s.insert, s.update, s.tokDel, s.tokIns} {
			if st != nil {
				st.Close()
			}
		}
		var rerr error
		if s.r != s.w {
			rerr = s.r.Close()
		}
		s.closeErr = errors.Join(rerr, s.w.Close())
		if s.closeErr != nil {
			s.closeErr = fmt.Errorf("sqlite: close: %w", s.closeErr)
		}
	})
	return s.closeErr
}

// columns are the tunnels columns, read and written by codec.
const columns = rowcodec.Columns

// codec converts tunnels to and from rows: SQLite keeps times as Unix
// microseconds.
var codec = rowcodec.Micros

// migrateWaiting runs migrate, trying again while the file is busy in a
// way SQLite reports at once instead of through the busy timeout: several
// processes opening a new file together, one switching it to WAL mode
// while another creates the schema (seen as SQLITE_BUSY from the
// connection's journal_mode pragma). It waits at most busyTimeout.
func migrateWaiting(ctx context.Context, db *sql.DB) error {
	deadline := time.Now().Add(busyTimeout)
	pause := 5 * time.Millisecond
	for {
		err := migrate(ctx, db)
		var se *sqlite.Error
		if err == nil || !errors.As(err, &se) || se.Code()&0xff != sqlite3.SQLITE_BUSY || time.Now().After(deadline) {
			return err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		pause = min(2*pause, 200*time.Millisecond)
	}
}

// writeErr maps constraint violations to the store's sentinels.
func writeErr(op, id string, err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE:
			// tunnels.id (ID taken) or tokens.hash (hash in use).
			return fmt.Errorf("sqlite: %s %s: %w (%v)", op, id, store.ErrExists, err)
		case sqlite3.SQLITE_CONSTRAINT_CHECK:
			return fmt.Errorf("sqlite: %s %s: %w: %v", op, id, store.ErrInvalidTunnel, err)
		}
	}
	return fmt.Errorf("sqlite: %s %s: %w", op, id, err)
}

// putTokens makes the tokens rows of t's ends match t, given the hashes
// they had before (nil for a new tunnel).
func (s *Store) putTokens(ctx context.Context, tx *sql.Tx, t *store.Tunnel, oldSrc, oldDst []byte) error {
	for e := range rowcodec.TokenEdits(t, oldSrc, oldDst) {
		var err error
		if e.Hash == nil {
			_, err = tx.StmtContext(ctx, s.tokDel).ExecContext(ctx, t.ID, string(e.Mode))
		} else {
			_, err = tx.StmtContext(ctx, s.tokIns).ExecContext(ctx, e.Hash, t.ID, string(e.Mode))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Create implements store.Store.
func (s *Store) Create(ctx context.Context, t *store.Tunnel) error {
	if err := rowcodec.Validate(t); err != nil {
		return err
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: create %s: %w", t.ID, err)
	}
	defer tx.Rollback()
	if _, err := tx.StmtContext(ctx, s.insert).ExecContext(ctx, codec.Values(t)...); err != nil {
		return writeErr("create", t.ID, err)
	}
	if err := s.putTokens(ctx, tx, t, nil, nil); err != nil {
		return writeErr("create", t.ID, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlite: create %s: commit: %w", t.ID, err)
	}
	return nil
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, id string) (*store.Tunnel, error) {
	t, err := codec.Scan(s.get.QueryRowContext(ctx, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlite: get %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: get %s: %w", id, err)
	}
	return t, nil
}

// FindByToken implements store.Store.
func (s *Store) FindByToken(ctx context.Context, tokenHash []byte) (*store.Tunnel, store.Mode, error) {
	if len(tokenHash) == 0 {
		return nil, "", fmt.Errorf("sqlite: find by token: empty hash: %w", store.ErrNotFound)
	}
	// Two primary-key lookups: tokens, then tunnels.
	t, err := codec.Scan(s.find.QueryRowContext(ctx, tokenHash))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, "", fmt.Errorf("sqlite: find by token: %w", store.ErrNotFound)
	}
	if err != nil {
		return nil, "", fmt.Errorf("sqlite: find by token: %w", err)
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
	q.WriteString(`SELECT ` + columns + ` FROM tunnels`)
	if opts.ThingName != "" {
		where = append(where, `thing_name = ?`)
		args = append(args, opts.ThingName)
	}
	if opts.Cursor != "" {
		us, id, err := rowcodec.ParseCursor(opts.Cursor)
		if err != nil {
			return nil, "", fmt.Errorf("sqlite: list: %w", err)
		}
		where = append(where, `(created_at, id) < (?, ?)`)
		args = append(args, us, id)
	}
	if len(where) > 0 {
		q.WriteString(` WHERE ` + strings.Join(where, ` AND `))
	}
	q.WriteString(` ORDER BY created_at DESC, id DESC`)
	if opts.Limit > 0 {
		q.WriteString(` LIMIT ?`)
		args = append(args, opts.Limit+1) // one more tells whether a next page exists
	}
	res, err := s.r.QueryContext(ctx, q.String(), args...)
	if err != nil {
		return nil, "", fmt.Errorf("sqlite: list: %w", err)
	}
	defer res.Close()
	ts, err := codec.ScanAll(res)
	if err != nil {
		return nil, "", fmt.Errorf("sqlite: list: %w", err)
	}
	ts, next := rowcodec.Page(ts, opts.Limit)
	return ts, next, nil
}

// Update implements store.Store. fn runs once, inside a BEGIN IMMEDIATE
// transaction on the writer connection; it must not call s.
func (s *Store) Update(ctx context.Context, id string, fn func(*store.Tunnel) error) (*store.Tunnel, error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("sqlite: update %s: %w", id, err)
	}
	defer tx.Rollback() // no-op after Commit
	t, err := codec.Scan(tx.StmtContext(ctx, s.lock).QueryRowContext(ctx, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sqlite: update %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlite: update %s: %w", id, err)
	}
	oldSrc, oldDst, err := rowcodec.Apply(id, t, fn)
	if err != nil {
		return nil, err
	}
	if _, err := tx.StmtContext(ctx, s.update).ExecContext(ctx, append(codec.Values(t), id)...); err != nil {
		return nil, writeErr("update", id, err)
	}
	if err := s.putTokens(ctx, tx, t, oldSrc, oldDst); err != nil {
		return nil, writeErr("update", id, err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("sqlite: update %s: commit: %w", id, err)
	}
	rowcodec.Normalize(t)
	return t, nil
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, id string) error {
	res, err := s.w.ExecContext(ctx, `DELETE FROM tunnels WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("sqlite: delete %s: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("sqlite: delete %s: %w", id, err)
	} else if n == 0 {
		return fmt.Errorf("sqlite: delete %s: %w", id, store.ErrNotFound)
	}
	return nil
}

// CountOpen implements store.Store.
func (s *Store) CountOpen(ctx context.Context) (int, error) {
	var n int
	if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM tunnels WHERE status = 'OPEN'`).Scan(&n); err != nil {
		return 0, fmt.Errorf("sqlite: count open: %w", err)
	}
	return n, nil
}

// OpenExpiringBefore implements store.Store. Tunnels come soonest-expiring
// first.
func (s *Store) OpenExpiringBefore(ctx context.Context, t time.Time) ([]*store.Tunnel, error) {
	res, err := s.r.QueryContext(ctx, `SELECT `+columns+` FROM tunnels
		WHERE status = 'OPEN' AND expires_at < ? ORDER BY expires_at, id`, rowcodec.Micro(t))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open expiring: %w", err)
	}
	defer res.Close()
	ts, err := codec.ScanAll(res)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open expiring: %w", err)
	}
	return ts, nil
}

// DeleteClosedBefore implements store.Store.
func (s *Store) DeleteClosedBefore(ctx context.Context, t time.Time) (int, error) {
	res, err := s.w.ExecContext(ctx, `DELETE FROM tunnels WHERE status = 'CLOSED' AND closed_at < ?`, rowcodec.Micro(t))
	if err != nil {
		return 0, fmt.Errorf("sqlite: delete closed: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("sqlite: delete closed: %w", err)
	}
	return int(n), nil
}

// ResetConnections implements store.Store.
func (s *Store) ResetConnections(ctx context.Context, at time.Time) (int, error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("sqlite: reset connections: %w", err)
	}
	defer tx.Rollback()
	n := 0
	for _, q := range []string{
		`UPDATE tunnels SET src_connected = 0, src_updated_at = ? WHERE src_connected <> 0`,
		`UPDATE tunnels SET dst_connected = 0, dst_updated_at = ? WHERE dst_connected <> 0`,
	} {
		res, err := tx.ExecContext(ctx, q, rowcodec.Micro(at))
		if err != nil {
			return 0, fmt.Errorf("sqlite: reset connections: %w", err)
		}
		k, err := res.RowsAffected()
		if err != nil {
			return 0, fmt.Errorf("sqlite: reset connections: %w", err)
		}
		n += int(k)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("sqlite: reset connections: %w", err)
	}
	return n, nil
}
