// Package relay is the tunneling service's WebSocket endpoint, /tunnel: it
// performs the handshake that local proxies, the AWS IoT Device Client, the
// AWS device SDKs and the tunnel library expect (see PROTOCOL.md), then
// relays tunnel frames between the two peers of each tunnel, enforcing the
// protocol's rules.
//
// # Contract with the rest of the server
//
// The relay keeps no persistent state. An Authorizer, supplied by the
// server, decides who may connect:
//
//   - Authorize is called once per handshake that passed the HTTP-level
//     checks, before the upgrade. It must check the access token against
//     the requested mode, the tunnel's status and lifetime, and apply the
//     client-token rules (bind the client token on first use, or consume a
//     token used without one; allow the same access token + client token to
//     reconnect). Refusals wrap ErrUnauthorized and become HTTP 401 with the
//     error's text (minus the "relay: unauthorized: " prefix) as the body,
//     so the text must be readable and must not reveal other tunnels. Any
//     other error is answered 500 ("retry later") and logged. A token that
//     Authorize accepted is then used, even if the upgrade fails afterwards.
//   - A second successful handshake for a tunnel end that already has a
//     peer replaces it: the relay closes the old WebSocket with 1008
//     "replaced by a new connection" and sends STREAM_RESET to the other
//     end for every active stream. The old peer is closed off the new
//     one's path (a client that reconnects has usually lost the old
//     connection, whose socket may be full): a write still in progress to
//     it after 250 ms is cut, and if the close frame cannot be written
//     within 1 s the connection is closed without it.
//   - PeerChanged reports connection-state changes for DescribeTunnel. Calls
//     for one tunnel are serialized and each reports the state at the time
//     of the call, so the last call always matches reality. It is called
//     with a context that expires after 10 s.
//
// The server in turn calls CloseTunnel when a tunnel is closed or expires
// (both WebSockets closed with 1000 and the reason), DisconnectPeer when an
// end's token is rotated (that WebSocket closed with 1008 and the reason),
// and Shutdown when the process stops: it stops reading, lets what was
// already relayed go out (for at most 1 s) and drops every connection
// without a close frame, like a crash, because tunnels outlive a restart
// and the reference local proxy exits on any close frame but reconnects
// after a dropped connection.
// A handshake already past Authorize when CloseTunnel or DisconnectPeer is
// called is refused after its upgrade with the same close code, so a race
// with the store cannot leave a peer connected to a closed tunnel.
//
// The relay must be mounted on exactly the path /tunnel (Config.Path) of
// an http.Server whose MaxHeaderBytes is at least 4 KiB; the 4 KiB request
// limit of the protocol is enforced here, on the size of the request line
// and headers as sent. http.Server timeouts must not cut hijacked
// connections (net/http clears deadlines on hijack).
//
// # Handshake
//
// Checks in order, each failure answered with a plain-text body saying what
// is wrong and a channel-id header (present on every response): the
// client address's failure limit (429 with Retry-After),
// path (400), request size (431), WebSocket upgrade form (400),
// local-proxy-mode (400), access token count (400), client-token (400),
// Sec-WebSocket-Protocol (400), shutting down (503), Authorize (401/500).
// The highest offered subprotocol among Config.Subprotocols is echoed. On
// protocol 2.0 and 3.0 the first WebSocket message is SERVICE_IDS, alone;
// the peer is already reachable when it arrives, and no frame from the
// other peer precedes it. Requests whose headers exceed the http.Server's
// MaxHeaderBytes are refused by net/http itself (431, no channel-id).
//
// Refusals for the client's fault (400, 401, 431) count against its
// address (an IPv4 address, an IPv6 /64; internal/ratelimit): after
// Config.HandshakeFailureLimit's burst (default 20, refilled at 10 a
// minute) the address is refused with 429 for a cool-down (default 1
// minute) before anything else is checked, so guessing tokens costs the
// guesser a minute per 10 guesses and costs the store nothing. Successful
// handshakes are never counted; 5xx refusals neither. Addresses are those
// of the TCP peer: behind a reverse proxy all clients share its address.
//
// # Pairings and peers
//
// Each tunnel with an end on this node has one pairing: two ends behind
// one small interface, Peer (Send whole checked tunnel frames, blocking
// for backpressure; Close with a code and reason; Abort, which never
// blocks). A local peer, a WebSocket connected here, is one kind of end;
// a remote end is the other: its client is connected to another tunneld
// node, and frames reach it over a link between the nodes (internal/
// cluster, SCALEOUT.md), which attaches it with AttachRemote and feeds
// what it reads from the link to Attachment.Deliver. Everything else lives
// in the pairing, once, for both kinds: which end is current (a newer
// connection of an end, local or remote, replaces the older one, by
// Grant.Epoch and Remote.Epoch when there are epochs), the active streams
// (tracked from the STREAM_START and STREAM_RESET frames relayed either
// way, and reset to the other end when an end goes), the answers to
// starts for an absent end, the bandwidth limits (each direction, charged
// by whoever feeds the pairing) and the counters. Frames are checked where
// they are read (wire.Message.Validate for the sender's role, the
// tunnel's service IDs, sizes, the stream rules): a local peer's by its
// reader here, a remote end's by the node its client is on, so Deliver
// only decodes them for the stream state. When a link is lost its owner
// calls Detach: the local peer gets STREAM_RESET for every active stream
// and stays connected, as the protocol says for broken internal routing.
//
// # Relaying
//
// Each local peer has one goroutine, started by ServeHTTP (which then
// returns, so net/http frees its per-connection state): it reads tunnel
// frames from its WebSocket into a read buffer (196 KiB, pooled between
// bursts), splits it into frames with wire.SplitFrame, checks them and
// hands them to the pairing, which lends them to
// the other end as they are: a run of frames for one end is one range of
// the read buffer, sent as one Send (one WebSocket message of at most
// 131076 bytes) without being copied. One small type, the forwarder, owns
// the rule that makes this safe: the range it holds is sent before each
// read from the network that could block (so before the buffer is
// reused), before the buffer is released, and whenever the next frame
// would not fit or does not follow. A read cannot block when the kernel already
// holds a TLS record's worth of bytes (SIOCINQ on Linux, when the TCP
// socket is reachable through the net.Conn wrappers: TLS, or a NetConn
// method): then the reader reads on, so that over TLS, where a read
// returns one 16 KiB record, a message carries more than one record's
// frames; queued frames wait only for reads of data already received.
// A slow receiver therefore blocks
// the sender's reader, which stops reading its socket: TCP backpressure,
// with at most one message buffered per peer. The per-tunnel bandwidth limit
// is applied at the same point, before reading more. Frames for an end that
// has no peer are dropped and counted; a STREAM_START or CONNECTION_START so
// dropped is answered with STREAM_RESET or CONNECTION_RESET, so the sender's
// client is not left hanging.
//
// Closing sends a close frame and keeps reading (and dropping) until the
// peer answers it, or for at most 2 s, before closing the TCP connection:
// closing at once could make the peer see a TCP reset instead of the close
// frame, and the reference local proxy reconnects after a reset where it
// exits after a close frame. Close codes: 1000 CloseTunnel; 1002
// undecodable frame; 1003 text message; 1008 rule violation, replaced by
// a new connection, DisconnectPeer, not reading (WriteTimeout); 1009
// message over 131076 bytes; 1011 internal error. Shutdown and the idle
// timeout send none: they close the TCP connection (under TLS without
// close_notify), so that clients reconnect.
//
// Violations close only the offender: undecodable frames with 1002, frames
// breaking a rule (wire.Message.Validate for the sender's role, service IDs
// not of the tunnel, a service ID on a stream started without one) with
// 1008, text messages with 1003 and messages over 131076 bytes with 1009.
// The relay pings each peer every Config.PingInterval and drops a peer from
// which nothing (message, ping or pong) arrived for Config.IdleTimeout
// by dropping its connection: such a peer is most likely cut off, and
// were its link to come back, a close frame would make the reference
// local proxy exit instead of reconnecting. When a peer leaves or is replaced, the other gets
// STREAM_RESET for each stream still active.
//
// # Keepalive while the other end is stuck
//
// A reader blocked writing to a peer that does not read (or waiting for
// the bandwidth limit) does not read its own peer either, so that peer's
// pings wait unanswered until the write completes, or until WriteTimeout
// (default 30 s) drops the stuck end; answering them would need reading
// past the data frames queued before them, which backpressure forbids.
// (wsconn's write funnel does not change this: it lets a pong out while
// a message write to the same connection is blocked, but here the pings
// are never read.) Instead, once a reader has been held up for 1 s, the
// relay pings its peer every second until it reads again. A client that counts any frame
// from the service as a sign of life (the tunnel library; read deadlines
// extended by pings, as with gorilla/websocket) keeps its connection with
// any liveness window over about a second; one that requires a pong to
// its own ping within less than WriteTimeout may still give up on the
// healthy end. The reference local proxy never times out a ping. Such a
// client must not itself be blocked writing (its pongs would wait).
//
// Writing from the readers (no writer goroutine) keeps two goroutines per
// tunnel and about 15 KiB per idle peer (measured: TestMemoryPerPeer), and
// makes backpressure exact: there is no queue between the two sockets
// beyond one WebSocket message. The relay allocates nothing per relayed
// message, either way and whichever kind each end is (TestRelayAllocsAlone).
//
// # Concurrency
//
// A Relay is safe for concurrent use. Sends to an end are serialized by
// its own mutex (the other end's frames and the relay's own messages);
// stream state by a per-tunnel mutex; the tunnel table by one relay mutex
// (taken on connect and disconnect only). The data path takes no
// relay-wide lock.
//
// # Errors
//
// ErrUnauthorized is the sentinel Authorizers wrap. New fails with
// ErrConfig on an invalid Config. AttachRemote fails with ErrNotHere or
// ErrStale; Deliver with ErrDetached or ErrBadFrames. Shutdown returns the context's error if
// goroutines are still running when it expires.
package relay
