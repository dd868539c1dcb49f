// Package endpoint parses where the tunneling service is: an endpoint
// ("host", "host:port", "[v6addr]:port", or a ws:// or wss:// URL) or an AWS
// region, into the service's base URL (scheme, host and explicit port, and
// an optional path prefix, without the /tunnel path). It is the one parser
// of that syntax: package tunnel (Config.Endpoint and Config.Region) and
// the local proxy's configuration (-e, -r and the settings file) both use
// it, and the local proxy's mappings and web proxy URL use its host and
// port helpers.
//
// Errors are one line, name the input and say what form is accepted;
// callers wrap them in their own sentinel (tunnel.ErrInvalidConfig,
// config.ErrEndpoint).
package endpoint
