// Package cluster makes a tunneld process a node of a cluster sharing one
// PostgreSQL (docs/cluster.md, SCALEOUT.md): its lease on the database
// clock, the node-to-node link that carries a tunnel whose two peers are
// on different nodes, the handshake Authorizer (one store Claim per
// handshake: token use, epoch, the other end's node), LISTEN/NOTIFY
// wake-ups for Close, Rotate, expiry and cross-node replacement (with a
// resync after a lost listener or a lease gap), the periodic jobs every
// node runs (outbox, peers of dead nodes) and drain.
//
// The link: one TCP connection per cross-node tunnel, dialed by the node
// whose peer connected second, TLS 1.3 by default with both certificates
// pinned by the SHA-256 each node publishes in its nodes row (the
// database is the root of trust), plaintext as an option. The dialer's
// hello names the tunnel, its end's mode and epoch and the epoch it read
// for the acceptor's end; the acceptor attaches it to its relay only if
// they match (relay.AttachRemote). Then both ways: records of whole
// tunnel frames, already validated by the node that read them from its
// client, handed to relay.Attachment.Deliver without re-encoding and with
// reused buffers (0 allocations per message), and pings; a link silent
// for three ping intervals is ended, and the surviving peer gets
// STREAM_RESET from its relay (Detach) and stays connected.
//
// Concurrency: a Node is safe for concurrent use; Run, Drain and Close are
// called once each by the server.
package cluster
