// Package postgres is the store.Store for multi-node deployments: one
// PostgreSQL database shared by every tunneld, through a jackc/pgx/v5
// connection pool.
//
// Open takes a libpq-style DSN (URL or keyword/value; pool settings such as
// pool_max_conns are accepted, and search_path picks the schema). The
// schema is versioned: Open applies, in one transaction under a
// transaction-scoped advisory lock (so nodes starting together migrate
// once), the migrations the database has not seen and records the version
// in schema_version; opening a database of the current version changes
// nothing, and one written by a newer binary is refused.
//
// Update runs SELECT ... FOR UPDATE, the function, and the write in one
// READ COMMITTED transaction: concurrent Updates of one tunnel, from any
// node, queue on the row lock and fn runs once.
//
// Encoding matches the sqlite backend: timestamptz (microseconds, UTC on
// the way out); 32-byte bytea token hashes, in the tunnels row and in a
// tokens table keyed by the hash (unique across all tunnels and ends;
// FindByToken is two primary-key lookups); jsonb services and tags; empty
// slices and hashes are stored as '[]' or NULL and read back as nil. IDs
// use the "C" collation, so List orders them bytewise like sqlite.
//
// Concurrency: a Store is safe for concurrent use. An Update function must
// not call the Store (it would wait for a pool connection while holding
// one).
//
// Errors: store.ErrNotFound, store.ErrExists (ID or token hash taken),
// store.ErrInvalidTunnel, store.ErrInvalidCursor, errors of an Update
// function unchanged; driver errors are wrapped with the operation and
// tunnel ID. No error carries the DSN's password.
package postgres
