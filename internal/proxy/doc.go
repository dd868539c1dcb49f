// Package proxy joins local sockets to tunnel connections: it is the TCP
// adapter of the local proxy (and of the device agent).
//
// A Source (the source end of a tunnel) listens on a local address per
// service; each accepted connection is carried through the tunnel with
// Dialer.Dial (a *tunnel.Session in source mode). A Destination (the device
// end) takes the tunnel's incoming connections from Acceptor.Accept (a
// *tunnel.Session in destination mode) and dials the local service mapped
// to each connection's service ID; when that fails the tunnel connection is
// rejected (STREAM_RESET, as from the reference local proxy).
//
// # Copying
//
// Each joined pair runs two copy loops. With a tunnel connection that
// implements io.ReaderFrom and io.WriterTo (*tunnel.Conn does), the loops
// read from the local socket straight into the connection's send buffer
// and write to it straight from the receive buffer, with no buffer of
// their own; otherwise they copy through pooled buffers (Config
// BufferSize, default 32 KiB). The tunnel protocol has no half-close, so:
//
//   - When the local side ends (FIN or error), the tunnel connection is
//     closed: the tunnel library first sends what was written, then the
//     reset that the peer reads as end of file. Data still arriving from the
//     tunnel after that is dropped (the protocol cannot deliver it).
//   - When the tunnel connection ends (the peer closed it, a reset, a lost
//     WebSocket), what was received is written to the local socket, which is
//     then shut down for writing (FIN) and closed once the local side closes
//     too or after a short linger (2 s), whichever comes first; what the
//     local side sends meanwhile is discarded.
//   - A failed write to the local socket closes both at once.
//
// Local TCP connections get TCP_NODELAY (interactive traffic such as SSH).
//
// # Concurrency
//
// NewSource and NewDestination start goroutines: per listener one accept
// loop, per Destination one accept loop, per joined pair two copy loops.
// Close stops all of them, closes every local and tunnel connection, and
// waits; it is idempotent. Done and Err may be called from any goroutine.
//
// # Errors
//
// NewSource fails with an error wrapping ErrListen when a listener cannot
// be opened (after the configured retries), ErrConfig on an invalid config.
// A Source whose listener fails later and cannot be reopened ends with
// ErrListen (Done is closed, Err returns it); its other listeners keep
// serving until Close. A Destination ends when Accept fails (the session
// ended): Err returns Accept's error. Per-connection failures (a dial that
// fails, the connection limit) are logged, never returned.
package proxy
