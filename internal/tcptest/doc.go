// Package tcptest holds the TCP peers and data checks that tests of the
// proxies share: a Server on 127.0.0.1:0 serving each connection with a
// handler (Echo, or BulkHandler), a deterministic data Stream, and
// client-side checks that push a Stream through a connection and verify
// what comes back (Echoed, EchoedToEOF, Bulk), and one small exchange
// with an echo service (RoundTrip, DialRoundTrip).
//
// Only tests import it. Everything is bounded: a Server is closed by
// t.Cleanup, which closes its connections and waits for every goroutine it
// started (so goleak stays quiet); Dial sets a deadline on the connection
// it returns; the checks give up when their ctx is done, or after Timeout
// if it has no deadline.
//
// Concurrency: a Server's methods may be called from any goroutine; the
// checks may run concurrently on different connections.
//
// Errors: the checks return an error saying which side failed and, for
// data that differs, at which offset; they never call t.Fatal, so they can
// run in goroutines.
package tcptest
