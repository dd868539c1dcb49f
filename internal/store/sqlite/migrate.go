package sqlite

import (
	"context"
	"database/sql"
	"fmt"
)

// migrations are applied in order; migrations[i] takes the schema from
// version i to i+1. Never edit one that has shipped: append a new one.
var migrations = []string{
	// 1: tunnels.
	`CREATE TABLE tunnels (
		id                    TEXT PRIMARY KEY,
		arn                   TEXT NOT NULL,
		description           TEXT NOT NULL,
		status                TEXT NOT NULL CHECK (status IN ('OPEN', 'CLOSED')),
		thing_name            TEXT NOT NULL,
		services              TEXT NOT NULL, -- JSON array of strings
		lifetime_minutes      INTEGER NOT NULL,
		tags                  TEXT NOT NULL, -- JSON array of {"k","v"}
		created_at            INTEGER NOT NULL, -- Unix microseconds
		updated_at            INTEGER NOT NULL,
		expires_at            INTEGER NOT NULL,
		closed_at             INTEGER,          -- NULL while open
		src_token_hash        BLOB CHECK (length(src_token_hash) = 32),
		src_client_token_hash BLOB CHECK (length(src_client_token_hash) = 32),
		src_consumed          INTEGER NOT NULL,
		src_connected         INTEGER NOT NULL,
		src_updated_at        INTEGER,
		dst_token_hash        BLOB CHECK (length(dst_token_hash) = 32),
		dst_client_token_hash BLOB CHECK (length(dst_client_token_hash) = 32),
		dst_consumed          INTEGER NOT NULL,
		dst_connected         INTEGER NOT NULL,
		dst_updated_at        INTEGER
	) WITHOUT ROWID;
	-- The index of token hashes, one row per end that has one: the
	-- primary key makes a hash unique across all tunnels and both ends,
	-- and FindByToken one lookup. tunnels.*_token_hash mirror it.
	CREATE TABLE tokens (
		hash      BLOB PRIMARY KEY CHECK (length(hash) = 32),
		tunnel_id TEXT NOT NULL REFERENCES tunnels (id) ON DELETE CASCADE,
		mode      TEXT NOT NULL CHECK (mode IN ('source', 'destination')),
		UNIQUE (tunnel_id, mode)
	) WITHOUT ROWID;
	CREATE INDEX tunnels_created ON tunnels (created_at DESC, id DESC);
	CREATE INDEX tunnels_thing_created ON tunnels (thing_name, created_at DESC, id DESC);
	CREATE INDEX tunnels_status_expires ON tunnels (status, expires_at);
	CREATE INDEX tunnels_status_closed ON tunnels (status, closed_at);`,
}

// migrate brings the schema to len(migrations) in one BEGIN IMMEDIATE
// transaction (the writer's txlock), so concurrent Opens of one file
// apply each migration once.
func migrate(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (
		id      INTEGER PRIMARY KEY CHECK (id = 1),
		version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	v, err := schemaVersion(ctx, tx)
	if err != nil {
		return err
	}
	if v > len(migrations) {
		return fmt.Errorf("migrate: database schema version %d is newer than this binary knows (%d): use a newer tunneld", v, len(migrations))
	}
	if v == len(migrations) {
		return nil // nothing to write; Rollback ends the read
	}
	for i := v; i < len(migrations); i++ {
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			return fmt.Errorf("migrate: to version %d: %w", i+1, err)
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (id, version) VALUES (1, ?)
		ON CONFLICT (id) DO UPDATE SET version = excluded.version`, len(migrations)); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate: commit: %w", err)
	}
	return nil
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func schemaVersion(ctx context.Context, q querier) (int, error) {
	var v int
	err := q.QueryRowContext(ctx, `SELECT version FROM schema_version WHERE id = 1`).Scan(&v)
	if err == sql.ErrNoRows {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("migrate: read schema version: %w", err)
	}
	return v, nil
}
