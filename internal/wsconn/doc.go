// Package wsconn is the project's only importer of a WebSocket library. It
// gives the tunnel code what the protocol needs and nothing more: a client
// dialer (TLS, HTTP CONNECT proxy, handshake headers and subprotocols), a
// server upgrade, the received binary messages as one continuous byte
// stream, whole binary messages out, pings with a liveness deadline, and
// close frames with a code and reason.
//
// Concurrency: one goroutine may read (Reader) and one may write
// (WriteMessage) at a time; Ping, Close and CloseWith may be called from any
// goroutine.
//
// Errors: a text message from the peer ends the stream with ErrTextMessage
// (close 1003), a message over MaxMessageSize with ErrMessageTooBig (close
// 1009), both after the closing handshake: the reader keeps reading and
// dropping until the peer answers the close frame, for at most 2 s, so the
// peer reads the close frame rather than a TCP reset. A peer's close frame
// is reported as a *CloseError.
package wsconn
