// Package server assembles tunneld: storage, the AWS-compatible management
// API, the /tunnel WebSocket relay, TLS, credentials, metrics and health
// endpoints, behind one HTTP(S) listener.
//
// Concurrency: New prepares everything and binds the listener; Run serves
// until its context ends and then shuts down gracefully (WebSockets get a
// going-away close frame). A Server is run once.
//
// Security defaults: TLS is on (a development CA and certificate are made in
// the data directory when no certificate is given) and every API request
// must carry a valid SigV4 signature; plaintext or no authentication on a
// non-loopback address is refused unless Config.AllowInsecure is set.
package server
