// Package pgtest gives tests a PostgreSQL server: the one named by
// SECTUN_TEST_POSTGRES_DSN, or else a throwaway cluster it starts itself
// from the PostgreSQL server binaries installed on the machine. It is
// test-only support (it imports "testing"); no product package imports it.
//
// # API
//
//	func Start(tb testing.TB) (dsn string)
//	func Database(tb testing.TB) (dsn string)
//	func Wrap(m *testing.M) interface{ Run() int }
//	func Stop()
//
// Start returns a DSN for a superuser-like role (URL form, password
// included, sslmode=disable, database "postgres"):
//
//   - SECTUN_TEST_POSTGRES_DSN, when set, is returned as is (the override:
//     a running server, for example the one .ci/postgres-setup.sh makes).
//   - Otherwise the first call in the test binary starts a cluster and
//     later calls return the same DSN: initdb into a temporary directory,
//     password (SCRAM) authentication over TCP on a free port of 127.0.0.1
//     and trust on a unix socket in that directory, fsync and
//     synchronous_commit off. As root, initdb and the server run as the
//     "postgres" user (initdb refuses root). The server is SIGQUIT by the
//     kernel if the test binary dies (Linux), so a killed run leaves no
//     server behind.
//   - When no server binaries are installed (no
//     /usr/lib/postgresql/*/bin/initdb, no initdb on PATH), tb is skipped
//     with a message. When they are installed but the cluster cannot be
//     started, tb fails with the reason and the server log's tail: a
//     machine with PostgreSQL runs the tests, it never skips them.
//
// Database calls Start, creates an empty database with a random name,
// drops it (WITH (FORCE)) when tb ends, and returns a DSN for it. With the
// override, the DSN's role needs CREATEDB (.ci/postgres-setup.sh grants it).
//
// The cluster lives for the whole test binary: stop it at the end of
// TestMain. Its server is watched by one goroutine, so with goleak:
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.Wrap(m)) }
//
// or, without goleak: code := m.Run(); pgtest.Stop(); os.Exit(code).
// Wrap's Run runs the tests, then Stop. Stop shuts the server down (SIGINT,
// SIGKILL after 30 s) and removes its directory; it does nothing if no
// cluster was started.
//
// Concurrency: Start, Database and Stop may be called from any goroutine
// (parallel tests share the one cluster). Test binaries of different
// packages each start their own cluster, on their own port.
//
// Cost: initdb and start take about 1-3 s on an idle machine, once per
// test binary that asks for PostgreSQL; nothing is started for a binary
// whose tests do not call Start.
package pgtest
