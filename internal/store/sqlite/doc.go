// Package sqlite is the embedded store.Store: one SQLite database file
// (tunneld keeps it at <data-dir>/tunneld.db), through modernc.org/sqlite,
// a pure-Go driver, so tunneld cross-builds statically.
//
// The file is opened in WAL mode with a busy timeout and foreign keys on.
// All writes go through a single connection and every write transaction
// starts with BEGIN IMMEDIATE, so transactions in this process never meet
// SQLITE_BUSY and Update's read-modify-write is serialized; reads use a
// separate pool of read-only connections and run concurrently with the
// writer (WAL). Another process writing the same file waits up to the busy
// timeout.
//
// The schema is versioned: Open applies, in one transaction, the
// migrations the file has not seen yet and records the version in the
// schema_version table; opening a file of the current version changes
// nothing, and opening one written by a newer binary fails.
//
// Encoding: times are Unix microseconds (UTC on the way out); token hashes
// are 32-byte BLOBs, in the tunnels row and in a tokens table keyed by the
// hash (unique across all tunnels and ends; FindByToken is two primary-key
// lookups); services and tags are JSON arrays; empty slices and hashes are
// stored as "[]" or NULL and read back as nil.
//
// Concurrency: a Store is safe for concurrent use. An Update function must
// not call the Store: the writer connection is held while it runs.
//
// Errors: store.ErrNotFound, store.ErrExists (ID or token hash taken),
// store.ErrInvalidTunnel, store.ErrInvalidCursor, errors of an Update
// function unchanged; driver errors are wrapped with the operation and
// tunnel ID.
package sqlite
