package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrations are applied in order; migrations[i] takes the schema from
// version i to i+1. Never edit one that has shipped: append a new one.
var migrations = []string{
	// 1: tunnels and the token index.
	`CREATE TABLE tunnels (
		id                    text COLLATE "C" PRIMARY KEY,
		arn                   text NOT NULL,
		description           text NOT NULL,
		status                text NOT NULL CHECK (status IN ('OPEN', 'CLOSED')),
		thing_name            text NOT NULL,
		services              jsonb NOT NULL,
		lifetime_minutes      integer NOT NULL,
		tags                  jsonb NOT NULL,
		created_at            timestamptz NOT NULL,
		updated_at            timestamptz NOT NULL,
		expires_at            timestamptz NOT NULL,
		closed_at             timestamptz,
		src_token_hash        bytea CHECK (octet_length(src_token_hash) = 32),
		src_client_token_hash bytea CHECK (octet_length(src_client_token_hash) = 32),
		src_consumed          boolean NOT NULL,
		src_connected         boolean NOT NULL,
		src_updated_at        timestamptz,
		dst_token_hash        bytea CHECK (octet_length(dst_token_hash) = 32),
		dst_client_token_hash bytea CHECK (octet_length(dst_client_token_hash) = 32),
		dst_consumed          boolean NOT NULL,
		dst_connected         boolean NOT NULL,
		dst_updated_at        timestamptz
	);
	CREATE TABLE tokens (
		hash      bytea PRIMARY KEY CHECK (octet_length(hash) = 32),
		tunnel_id text COLLATE "C" NOT NULL REFERENCES tunnels (id) ON DELETE CASCADE,
		mode      text NOT NULL CHECK (mode IN ('source', 'destination')),
		UNIQUE (tunnel_id, mode)
	);
	CREATE INDEX tunnels_created ON tunnels (created_at DESC, id DESC);
	CREATE INDEX tunnels_thing_created ON tunnels (thing_name, created_at DESC, id DESC);
	CREATE INDEX tunnels_status_expires ON tunnels (status, expires_at);
	CREATE INDEX tunnels_status_closed ON tunnels (status, closed_at);`,
	// 2: cluster mode: node leases, the peer rows (routing table and
	// connection states, with the epoch fencing token), the notification
	// outbox.
	`CREATE TABLE nodes (
		id               text COLLATE "C" PRIMARY KEY,
		incarnation      bigint NOT NULL,
		link_addr        text NOT NULL,
		link_cert_sha256 bytea CHECK (octet_length(link_cert_sha256) = 32),
		lease_expires_at timestamptz NOT NULL,
		draining         boolean NOT NULL DEFAULT false
	);
	CREATE TABLE peers (
		tunnel_id   text COLLATE "C" NOT NULL REFERENCES tunnels (id) ON DELETE CASCADE,
		mode        text NOT NULL CHECK (mode IN ('source', 'destination')),
		epoch       bigint NOT NULL,
		node_id     text COLLATE "C" NOT NULL,
		incarnation bigint NOT NULL,
		connected   boolean NOT NULL,
		updated_at  timestamptz NOT NULL,
		PRIMARY KEY (tunnel_id, mode)
	);
	CREATE INDEX peers_node ON peers (node_id) WHERE connected;
	CREATE TABLE outbox (
		id         bigserial PRIMARY KEY,
		created_at timestamptz NOT NULL DEFAULT now(),
		payload    bytea NOT NULL
	);`,
}

// migrateLock is the advisory lock key that serializes migrations across
// nodes ("sectun" in ASCII).
const migrateLock = 0x736563747536

// migrate brings the schema to len(migrations) in one transaction.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrateLock)); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	// Check before CREATE ... IF NOT EXISTS so that opening a current
	// database issues no DDL at all.
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass('schema_version') IS NOT NULL`).Scan(&exists); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if !exists {
		if _, err := tx.Exec(ctx, `CREATE TABLE schema_version (
			id      integer PRIMARY KEY CHECK (id = 1),
			version integer NOT NULL)`); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
	}
	var v int
	err = tx.QueryRow(ctx, `SELECT version FROM schema_version WHERE id = 1`).Scan(&v)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("migrate: read schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("migrate: database schema version %d is newer than this binary knows (%d): use a newer tunneld", v, len(migrations))
	}
	if v == len(migrations) {
		return nil
	}
	for i := v; i < len(migrations); i++ {
		if _, err := tx.Exec(ctx, migrations[i]); err != nil {
			return fmt.Errorf("migrate: to version %d: %w", i+1, err)
		}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO schema_version (id, version) VALUES (1, $1)
		ON CONFLICT (id) DO UPDATE SET version = excluded.version`, len(migrations)); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("migrate: commit: %w", err)
	}
	return nil
}
