// Package wsconn is the project's WebSocket implementation (RFC 6455),
// for both roles, shaped after coder/websocket: one Conn with a role
// (Dial makes clients, Accept servers), one frame reader, one write
// funnel, and nothing of another library's state. It gives the tunnel
// code what the protocol needs and nothing more: a client dialer (TLS,
// HTTP CONNECT proxy, handshake headers and subprotocols), a server
// upgrade, the received binary messages as one continuous byte stream
// (Read), whole binary messages out (WriteMessage), pings with a liveness
// check (SetLiveness: a watchdog that counts data waiting in the kernel as
// a sign of life, so a reader held up locally is not told that a live peer
// went silent), close frames with a code and reason (SendClose, Close),
// Abort, and the kernel-unread check (Unread, SIOCINQ) in one place.
//
// Reading (read.go): one frame parser for both roles reads straight into
// the caller's buffer, unmasking a server's input in place (a word at a
// time) and moving payload over the frame headers in the same pass; there
// is no read buffer per connection. It enforces RFC 6455: a server refuses
// unmasked frames and a client masked ones; reserved bits and opcodes,
// fragmented or oversized control frames, continuations without a
// message, new messages inside one, bad close codes or reasons are
// protocol errors (close 1002). Text messages are refused (1003) and
// messages over MaxMessageSize (1009) after the closing handshake.
//
// Writing (write.go): data, ping, pong and close frames all go through one
// funnel, waited for with a context. A client's message is masked while
// copied and sent with one write call; a server's on plain TCP with one
// writev (reaching the TCP socket through wrappers with a NetConn method),
// over TLS as few records as the size allows. A pong never waits for a
// message write held up by a slow peer: the writer sends it after its
// message. Abort closes the TCP socket itself: it never blocks (no TLS
// close_notify).
//
// Kernel queues: every stream of a tunnel shares one WebSocket, and the
// kernel's socket buffers are FIFO queues that nothing above can reorder.
// On Linux, Dial and Accept therefore give the TCP connection short ones
// (TCP_NOTSENT_LOWAT, and SO_SNDBUF/SO_RCVBUF sized for the link's round
// trip on links under ~8 ms) so that bulk data waits in the per-stream
// buffers above, where writers interleave streams; KeepSocketBuffers in
// the options turns this off. Elsewhere the kernel's defaults stay.
//
// Concurrency: one goroutine may read (Read) and one may write messages
// (WriteMessage) at a time; Ping, SendClose, Close, Abort, SetLiveness and
// Unread may be called from any goroutine.
//
// Errors: a text message from the peer ends the stream with ErrTextMessage
// (close 1003), a message over MaxMessageSize with ErrMessageTooBig (close
// 1009), both after the closing handshake: the reader keeps reading and
// dropping until the peer answers the close frame, for at most 2 s, so the
// peer reads the close frame rather than a TCP reset. A peer's close frame
// is reported as a *CloseError, and so is a connection that ends without
// one (code 1006). A frame that breaks RFC 6455 ends the stream with an
// error wrapping ErrProtocol after a close frame 1002, without waiting for
// the answer (the framing may be lost). Writes after a close frame fail
// with ErrCloseSent; a refused upgrade is a *HandshakeError wrapping
// ErrBadHandshake.
package wsconn
