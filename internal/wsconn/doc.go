// Package wsconn is the project's only importer of a WebSocket library. It
// gives the tunnel code what the protocol needs and nothing more: a client
// dialer (TLS, HTTP CONNECT proxy, handshake headers and subprotocols), a
// server upgrade, the received binary messages as one continuous byte
// stream, whole binary messages out, pings with a liveness check (a
// watchdog that counts data waiting in the kernel as a sign of life, so a
// reader held up locally is not told that a live peer went silent), and
// close frames with a code and reason.
//
// Client messages are framed by wsconn itself (masked while copied, one
// write call per message), and so are server messages (on plain TCP one
// writev, reaching the TCP socket through wrappers with a NetConn method;
// over TLS as few records as the size allows). Server connections are
// read by wsconn's own frame parser, straight into the caller's buffer
// (unmasked in place, a word at a time; no read buffer per connection);
// gorilla reads the client's.
//
// Kernel queues: every stream of a tunnel shares one WebSocket, and the
// kernel's socket buffers are FIFO queues that nothing above can reorder.
// On Linux, Dial and Accept therefore give the TCP connection short ones
// (TCP_NOTSENT_LOWAT, and SO_SNDBUF/SO_RCVBUF sized for the link's round
// trip on links under ~8 ms) so that bulk data waits in the per-stream
// buffers above, where writers interleave streams; KeepSocketBuffers in
// the options turns this off. Elsewhere the kernel's defaults stay.
//
// Concurrency: one goroutine may read (Read) and one may write
// (WriteMessage, SetWriteDeadline) at a time; Ping, SendClose, Close and
// CloseWith may be called from any goroutine. Control frames written while
// a message write is blocked wait for it up to their own deadline.
//
// Errors: a text message from the peer ends the stream with ErrTextMessage
// (close 1003), a message over MaxMessageSize with ErrMessageTooBig (close
// 1009), both after the closing handshake: the reader keeps reading and
// dropping until the peer answers the close frame, for at most 2 s, so the
// peer reads the close frame rather than a TCP reset. A peer's close frame
// is reported as a *CloseError, and so is a connection that ends without
// one (code 1006). On a server connection a frame that breaks RFC 6455
// (unmasked, reserved bits or opcodes, bad control frames or
// fragmentation) ends the stream with an error wrapping ErrProtocol after
// a close frame 1002, without waiting for the answer (the framing may be
// lost).
package wsconn
