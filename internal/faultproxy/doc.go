// Package faultproxy is a TCP proxy that injects network faults between a
// client and a server, for end-to-end tests and the soak run: it sits
// between a local proxy and tunneld (or any other pair) and can reset
// connections, blackhole them, add latency and jitter, cap bandwidth and
// cut data into tiny segments, all while the connections are in use.
//
// # Faults
//
// Faults (SetFaults) shape the data of every connection, current and
// future, from the next chunk on: Latency and Jitter delay each chunk
// read from one side before it is written to the other (a chunk never
// overtakes an earlier one of the same direction, as on a real TCP
// connection, so jitter delays but never reorders); Bandwidth caps each
// direction of each connection; Segment writes at most that many bytes per
// write call on a TCP_NODELAY socket (1 = one-byte segments). Data is never
// altered, dropped or reordered by these faults.
//
// Events act on the connections alive at the time of the call:
//
//   - Reset aborts them with a TCP RST towards both ends (SO_LINGER 0), as
//     a crashed middlebox or peer would: "connection reset by peer".
//   - Blackhole makes them carry nothing more, in either direction, and
//     close nothing: no FIN, no RST; the proxy stops reading, so the
//     senders' socket buffers fill as when packets vanish. Only a keepalive
//     or a timeout at either end can notice. The proxy holds the sockets
//     until DropBlackholed or Close, which reset them.
//
// SetMode decides what happens to new connections: Pass (forward), Refuse
// (accept, then reset at once, as a server that is down behind a load
// balancer) or Hole (accept, then never forward a byte: a blackholed
// route). The target is dialed only in Pass mode; a failed dial resets the
// client.
//
// # Concurrency
//
// A Proxy is safe for concurrent use. It runs one accept goroutine and,
// per connection, a reader and a writer goroutine per direction, joined by
// a bounded queue of 8 chunks of at most 32 KiB (so at most 256 KiB of
// data waits in the proxy per direction, plus what latency holds in that
// queue). Close stops accepting, aborts every connection and waits for all
// goroutines; it is idempotent.
//
// # Errors
//
// New fails with ErrConfig on an invalid Config or the listener's error.
// Everything after that is a fault the proxy injects or observes: it is
// logged at debug level, never returned.
package faultproxy
