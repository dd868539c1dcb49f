// Package tunnel is a client of the AWS IoT Secure Tunneling protocol
// (versions 1 to 3), wire-compatible with the AWS service, the reference
// local proxy, the device SDKs and sectun's own tunneld. It is what
// sectun's local proxy and device agent stand on, and what Go programs
// embed to open or serve tunneled connections.
//
// # Use
//
// A Session is one end of a tunnel, connected with Connect:
//
//	s, err := tunnel.Connect(ctx, tunnel.Config{
//		Mode:        tunnel.ModeSource,
//		AccessToken: sourceToken,
//		Region:      "us-east-1",
//	})
//	defer s.Close()
//	c, err := s.Dial(ctx, "SSH1") // a net.Conn to the device's SSH1 service
//
// On the device, ModeDestination with Accept (or Listen per service)
// yields a *Conn per connection the source opens; the caller dials the
// local service and copies, or calls Conn.Reject when it cannot.
//
// Connect returns once the first handshake succeeded and, on V2/V3, the
// service announced the tunnel's service IDs (Services). Afterwards the
// session keeps itself connected: on a lost WebSocket every open Conn
// fails with ErrDisconnected and the session reconnects with full-jitter
// exponential backoff, with the same client token, until Close or a
// permanent error: a 4xx handshake refusal (*HandshakeError wrapping
// ErrTokenRejected), a tunnel closed by the service (ErrTunnelClosed), or
// Config.MaxAttempts failed attempts. Before the session was first up,
// a wrong scheme (ErrTLSRequired: a ws:// endpoint that speaks TLS;
// ErrTLSNotSpoken: a wss:// one that does not) and a certificate that
// does not verify (ErrCertificateUntrusted) end Connect at once too: no
// retry can fix them; later they are retried, as a service being
// redeployed may show them for a moment. (A close frame from the service ends
// the session with ErrTunnelClosed, except the codes of a service going
// away, restarting or overloaded, 1001, 1011, 1012 and 1013, and the
// protocol-error codes 1002, 1003 and 1009, after which the session
// reconnects.) A frame from the service that cannot be decoded, or that
// breaks the protocol's rules for the service (wire.Message.Validate with
// wire.RoleService: stream ID 0, a type unset or unknown and not
// ignorable, ...), ends the WebSocket with a close frame saying why (1002
// or 1008) and the session reconnects. Done and Err report the end; Events
// (Config.OnEvent) report everything on the way. A Session pings the
// service every KeepaliveInterval and counts the connection dead after
// twice that long without receiving anything.
//
// RawConn (DialRaw) is the bare protocol: one handshake, then protocol
// messages in and out, for programs that manage streams themselves and for
// tests.
//
// # Protocol versions
//
// The service's choice of subprotocol sets Session.Version; without one in
// its answer, the highest version offered is assumed. A source speaks V3
// to the destination unless Config.PeerVersion says 1 or 2 (the reference
// proxy's -y V1/-y V2) or, in automatic mode, the destination's replies
// show an older version: DATA without a connection ID means V2, without a
// service ID V1. The session then switches to that version, logs a warning
// naming the option that skips detection and emits PeerVersionDetected;
// connections that the older peer cannot carry fail with
// ErrVersionMismatch. A V1/V2 peer has one connection per service (V1: per
// tunnel): as with the reference local proxy, a new Dial replaces the
// previous connection, which fails with ErrStreamReset. If a new
// connection gets no reply at all within NoReplyWarning, the session warns
// once that the destination may be V1/V2 (PeerSilent), so that a version
// mismatch never hangs silently (after a reset from the destination, or
// a refused V1 retry, it does not: the destination did answer).
//
// The AWS IoT Device Client connects with subprotocol 3.0 but answers
// only streams started in V1 framing and drops every other reply, so its
// traffic shows nothing to detect. When the first connection of a service
// has received nothing for Config.V1Retry, a source in automatic mode
// starts it again in V1 framing beside the V3 stream (STREAM_START without
// service ID, then the bytes sent so far, at most 64 KiB, and every later
// write on both) and keeps whichever answers first: a reply on the V1
// stream switches the session to V1 (logged, PeerVersionDetected), a
// reply on the V3 stream resets the retry. The real Device Client drops
// its WebSocket at the retry (its SDK reconnects to change protocol
// version) and the service resets both streams: a reset of the whole
// stream within 2 s of the retry, before any reply, switches the session
// to V1 and keeps the local connection, which starts again in V1 framing
// (the replay again) every 300 ms until the destination takes it, for at
// most 15 s. A sectun destination refuses a
// V1-framed stream while a V3 stream is open (STREAM_RESET), so a V3
// destination that is merely slow is never switched. (A reference
// destination might serve the retry as a second connection to its
// service; set PeerVersion 3 to rule that out.) A destination answers each stream in the
// format it was started with (no connection IDs for a V2 source, no
// service ID for a V1 source), switching a stream to the V2 format when
// DATA arrives without a connection ID, as the reference does.
//
// # Connections
//
// On V3 the first Dial of a service starts a stream (STREAM_START,
// connection 1) and further simultaneous ones join it (CONNECTION_START,
// connections 2, 3, ...); once all connections of a source's stream are
// closed the next Dial starts a new stream. Stream IDs start at 1 and are
// never reused within a Session, reconnects included. Messages for a
// stream that is not the service's active one are dropped, as are resets
// of unknown connections.
//
// The protocol has no half-close and no flow control. Conn.Close sends the
// data already written, then CONNECTION_RESET (V3) or STREAM_RESET (V1/V2);
// the peer reads that data and then io.EOF. A peer's reset likewise gives
// the data received before it, then io.EOF, and writes fail with
// ErrStreamReset. SESSION_RESET from the service ends every connection with
// ErrStreamReset. Conn.Reject (destination) sends CONNECTION_RESET on a V3
// stream (the reference sends STREAM_RESET for a failed dial) and
// STREAM_RESET on V1/V2 ones. A source tells from these why a connection
// ended before any reply (Conn.ResetReason): a CONNECTION_RESET is the
// destination's, whose service refused (ErrServiceRefused); a STREAM_RESET
// of a just-started V3 stream is what the service sends when no
// destination is connected (ErrPeerNotConnected); anything else is
// ErrResetBeforeReply. It logs the destination coming (its first reply)
// and going (not connected, or all its streams reset) and emits
// DestinationStatus.
//
// # Data path, buffers and head-of-line blocking
//
// Each WebSocket has one reader and one writer goroutine. Conn.Write
// copies into the connection's send buffer (Config.SendBuffer, default 256
// KiB) and blocks while it is full, which is the backpressure a TCP
// adapter needs. The writer sends control messages first, then takes one
// DATA message of at most MaxDataSize (63 KiB) from each connection with
// pending data in turn, so an interactive connection is never stuck
// behind another one's bulk data in our queues; it coalesces frames into
// WebSocket messages of up to 131076 bytes and flushes as soon as nothing
// more is ready, so a lone small write leaves at once. (Data already in
// the kernel's and the service's buffers is first in, first out: on a
// single WebSocket that is the floor of the latency beside bulk traffic.)
//
// Conn also implements io.ReaderFrom and io.WriterTo, which io.Copy uses:
// ReadFrom reads from its reader straight into the send buffer and WriteTo
// writes to its writer straight from the receive buffer, with no copy
// buffer in between (a reset or Close meanwhile drops the chunks involved
// instead of reusing them). ReadFrom returns when its reader's Read does:
// a Close or reset while it waits there takes effect at the next read, so
// a caller unblocks it by closing the reader or setting a deadline on it,
// as the local proxy does.
//
// The reader copies each DATA payload once, into the connection's receive
// buffer (Config.ReceiveBuffer, default 256 KiB). The protocol has no flow
// control, so when a receive buffer is full the reader waits for the
// connection to be read and the whole WebSocket waits with it: head-of-line
// blocking, bounded memory. A connection that stays full and unread for
// Config.StallTimeout (default 30 s) is reset (its reader gets the data
// buffered so far, then ErrStreamReset) so that one stuck reader cannot
// hold the tunnel forever. Memory per connection is thus bounded by its two
// buffers plus one 32 KiB chunk each; buffers are pooled chunks held only
// while they hold data, so idle connections hold no buffer memory. The
// steady-state data path makes no allocation of its own.
//
// # Concurrency
//
// Session and Conn methods are safe for concurrent use. Config.OnEvent is
// called from one goroutine, in order, and must not block for long. Close
// on a Session waits for all its goroutines, the event callback included.
//
// # Errors
//
// Errors wrap the package's sentinels (ErrTunnelClosed, ErrTokenRejected,
// ErrStreamReset, ErrSessionClosed, ErrDisconnected, ErrUnknownService,
// ErrVersionMismatch, ErrWrongMode, ErrTooManyConns, ErrInvalidConfig,
// ErrTLSRequired, ErrTLSNotSpoken, ErrCertificateUntrusted, and the
// reset reasons ErrPeerNotConnected, ErrServiceRefused,
// ErrResetBeforeReply, which wrap ErrStreamReset); their texts name
// Config fields, never a program's flags (programs add those);
// test them with errors.Is. A refused handshake is a *HandshakeError whose
// text says what went wrong and what to do. Conn deadlines fail with
// os.ErrDeadlineExceeded; use after Close fails with net.ErrClosed.
//
// Logs go to Config.Logger with the keys mode, channel_id, service_id,
// stream_id and conn_id; access tokens are never logged (only a short
// hash at debug level). A 4xx refusal of a used or unknown access token
// says how to get a new one (aws iotsecuretunneling
// rotate-tunnel-access-token ...).
package tunnel
