// Package alpnmux serves several protocols on one TLS port and picks the
// protocol of each connection by ALPN (RFC 7301), the way AWS IoT Core
// serves MQTT ("x-amzn-mqtt-ca") and HTTPS on port 443.
//
// A Mux accepts TCP connections from a net.Listener and completes each TLS
// handshake on a goroutine of its own, within Config.HandshakeTimeout. A
// client that offers the protocol of a Route gets that route's TLS
// configuration (for example one that requires and verifies client
// certificates) and, once the handshake is done, its connection is handed
// to Route.Serve. Every other connection uses Config.TLS and is returned
// by the Mux's Listener, a net.Listener for http.Server.Serve; its
// handshake is already complete. So HTTPS clients are never asked for a
// client certificate, and a client offering only protocols the server
// does not know is served without ALPN instead of being refused (Go's TLS
// server aborts such a handshake when it has NextProtos of its own).
//
// Bounds: at most Config.MaxHandshakes handshakes run at once (Serve stops
// accepting while that many are in progress) and at most Config.Backlog
// finished connections wait for Listener.Accept (the handshake goroutine
// waits for room). Failed handshakes are logged at debug level, except on
// a route, where a refused client certificate is worth an info line.
//
// Concurrency: Serve runs in one goroutine; Listener, Addr and Close may
// be called from any goroutine. Close is idempotent: it stops accepting,
// aborts handshakes in progress, closes connections waiting for Accept,
// cancels the context given to Route.Serve and waits for every goroutine
// the Mux started, Route.Serve calls included (so they must return soon
// after their context ends; a handler that keeps a connection should hand
// it to something with its own lifetime, as broker.ServeConn does).
//
// Errors: New reports configuration errors; Serve returns nil after Close
// and the listener's error otherwise; the Listener's Accept returns
// net.ErrClosed once it or the Mux is closed.
package alpnmux
