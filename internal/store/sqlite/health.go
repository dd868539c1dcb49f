package sqlite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// ErrEmptyFile reports a database path that is an existing, zero-byte
// file. SQLite would take it as a new, empty database, so a truncated
// file or a failed copy would start tunneld with no tunnels and no sign
// of what was lost; Options.AllowEmptyFile accepts it.
var ErrEmptyFile = errors.New("sqlite: the database file is empty (zero bytes)")

// ErrDamaged reports a database file that fails SQLite's integrity check
// or on which SQLite met a damaged page (SQLITE_CORRUPT, SQLITE_NOTADB).
var ErrDamaged = errors.New("sqlite: the database file is damaged")

// Options are the rarely needed settings of OpenWith.
type Options struct {
	// AllowEmptyFile opens an existing zero-byte file as a new, empty
	// database instead of failing with ErrEmptyFile.
	AllowEmptyFile bool
}

// OpenWith is Open with options.
func OpenWith(ctx context.Context, path string, opts Options) (*Store, error) {
	if path != Memory && !opts.AllowEmptyFile {
		if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() && fi.Size() == 0 {
			return nil, fmt.Errorf("%w: %s: it holds no tunnels, and opening it would start from nothing. If it should hold your tunnels, restore it from a backup; to start with a new, empty database, remove it (or allow it explicitly: tunneld --allow-empty-db)", ErrEmptyFile, path)
		}
	}
	s, err := Open(ctx, path)
	if err != nil {
		return nil, err
	}
	s.path = path
	return s, nil
}

// Damaged reports whether err (from any method of a Store) is SQLite
// meeting a damaged file.
func Damaged(err error) bool {
	if errors.Is(err, ErrDamaged) {
		return true
	}
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB:
		return true
	}
	return false
}

// RepairAdvice says what to do about a damaged database file at path.
func RepairAdvice(path string) string {
	return fmt.Sprintf("stop tunneld, then restore %[1]s from a backup; or try to salvage its rows with the sqlite3 shell (sqlite3 %[1]s .recover > recovered.sql, where the shell supports it: Debian 12's 3.40 fails with \"SQL logic error\"); or move %[1]s, %[1]s-wal and %[1]s-shm aside to start with an empty database (open tunnels are then lost: open them again). See docs/storage.md", path)
}

// QuickCheck runs PRAGMA quick_check over the whole file (every b-tree
// page's structure; not the match of indexes to their table) and fails
// with ErrDamaged, the first problems SQLite found and RepairAdvice if
// it is not "ok". It reads every page: see docs/storage.md for how long
// that takes.
func (s *Store) QuickCheck(ctx context.Context) error {
	rows, err := s.r.QueryContext(ctx, `PRAGMA quick_check(5)`)
	if err != nil {
		if Damaged(err) {
			return fmt.Errorf("%w: %s: %v: %s", ErrDamaged, s.path, err, RepairAdvice(s.path))
		}
		return fmt.Errorf("sqlite: quick_check: %w", err)
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return fmt.Errorf("sqlite: quick_check: %w", err)
		}
		for l := range strings.SplitSeq(line, "\n") {
			if l = strings.TrimSpace(l); l != "ok" && l != "" && !strings.HasPrefix(l, "***") {
				problems = append(problems, l)
			}
		}
	}
	if err := rows.Err(); err != nil {
		if Damaged(err) {
			return fmt.Errorf("%w: %s: %v: %s", ErrDamaged, s.path, err, RepairAdvice(s.path))
		}
		return fmt.Errorf("sqlite: quick_check: %w", err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s: PRAGMA quick_check says: %s; %s", ErrDamaged, s.path, strings.Join(problems, "; "), RepairAdvice(s.path))
	}
	return nil
}
