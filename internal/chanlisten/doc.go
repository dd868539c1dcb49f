// Package chanlisten provides Listener, a net.Listener whose connections
// are handed in by the program (Deliver) instead of accepted from a socket.
// It serves programs that accept on one port and dispatch each connection
// by protocol (ALPN) to several servers: alpnmux hands its non-route
// connections to http.Server through one, and the MQTT broker takes the
// connections given to Broker.ServeConn through another.
//
// Bounds: at most the backlog given to New of delivered connections wait
// for Accept; Deliver waits for room (until its ctx ends) rather than
// buffering more.
//
// Concurrency: every method may be called from any goroutine. Close is
// idempotent; it waits for Deliver calls that may still queue a
// connection, so no connection is queued after Close returns, and closes
// those delivered but never accepted. The Listener starts no goroutines.
//
// Errors: Accept and Deliver return net.ErrClosed after Close; Deliver
// returns ctx.Err() when its ctx ends while the backlog is full.
package chanlisten
