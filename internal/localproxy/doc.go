// Package localproxy runs sectun's local proxy, the drop-in replacement for
// the AWS reference local proxy (v3.3.1): Run connects a tunnel session
// (package tunnel) as configured by package config, matches the tunnel's
// service IDs against the mappings, and serves them with package proxy (a
// Source listening on local ports, or a Destination dialing local
// services) until the process is told to stop or the tunnel ends.
//
// With --metrics-listen (Config.MetricsListen; off by default, so the
// drop-in behaviour is unchanged) Run also serves Prometheus metrics
// (package metrics): goroutines, whether the tunnel is connected, its
// reconnects, the connections per service and the open local TCP
// connections, from before the first connection until it returns.
//
// NewLogger writes the reference's log format and verbosity levels (0 off
// .. 6 trace); ExitCode and Exit give the reference's exit codes: 0 for a
// normal stop, a tunnel closed by the service and an access token refused
// with HTTP 401; 1 otherwise. Tokens are never logged, only token.Short.
//
// Concurrency: Run blocks; everything it starts is stopped and waited for
// before it returns. The logger is safe for concurrent use.
//
// Errors: Run returns the session's error (tunnel.ErrTunnelClosed,
// *tunnel.HandshakeError, ...), a config.ErrServiceIDs error from Resolve
// for mappings that do not fit the tunnel, an error wrapping
// proxy.ErrListen, or the tunnel's configuration errors.
package localproxy
