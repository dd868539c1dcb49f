// Package server assembles tunneld: storage, the AWS-compatible management
// API, the /tunnel WebSocket relay, TLS, credentials, metrics and health
// endpoints, behind one HTTP(S) listener.
//
// # Devices on the TLS port
//
// With TLS and the embedded MQTT broker (the defaults), the TLS listener
// also serves MQTT, as AWS IoT Core does on port 443: a client offering
// the ALPN protocol x-amzn-mqtt-ca (the AWS IoT Device Client) must
// present a certificate signed by the device CA in DataDir/devices (made
// on first use; CreateDevice issues certificates, DeviceCA finds it) or
// by MQTTConfig.ClientCAFile, and its connection goes to the broker, which
// takes the certificate's CommonName as the thing name. Every other
// client gets HTTPS without being asked for a certificate
// (internal/alpnmux does the split). MQTTConfig.NoALPN turns this off.
//
// # One process per data directory, and its database
//
// New takes DataDir/tunneld.lock (flock, held until Close; ErrDataDirInUse
// names the holder), so no two tunneld share a database. It refuses a
// zero-byte SQLite file (AllowEmptyDB), checks the file with PRAGMA
// quick_check (SkipDBCheck) and marks every tunnel end disconnected (no
// peer survives a restart). /healthz answers 503 with the reason once any
// store call met a damaged database (sticky) or when its probe, cached
// for 5 s, fails; see docs/storage.md.
//
// # Logs for operators
//
// Every TLS handshake runs in internal/alpnmux: plain HTTP on the TLS port
// is answered 400 ("use https://") and logged, failed handshakes are
// logged with the address and cause, net/http's ErrorLog becomes slog
// records; each kind at most 10 a minute, then with a suppressed count.
// An address blocked by a failure limit is logged once per block. Run
// logs the shutdown's start (reason, requests in flight, peers), what it
// waited for, and its end.
//
// New works in stages: Config.withDefaults, Config.validate (which
// touches nothing; its errors are *ConfigError, naming Config fields,
// which cmd/tunneld renders with its flags), then one method per building
// step (TLS, credentials, storage, MQTT, cluster, metrics, handlers,
// listener); a failed step releases what the earlier ones acquired.
//
// Concurrency: New prepares everything and binds the listener; Run serves
// until its context ends and then shuts down (WebSockets are dropped
// without a close frame so that clients reconnect, see relay.Shutdown). A
// Server is run once.
//
// Security defaults: TLS is on (a development CA and certificate are made in
// the data directory when no certificate is given; TLS 1.2 or later, and
// on TLS 1.2 only ECDHE key exchange with AES-GCM or ChaCha20-Poly1305, on
// every TLS listener) and every API request must carry a valid SigV4
// signature; plaintext or no authentication (NoAuth) on a non-loopback
// address is refused at startup unless Config.AllowInsecure is set.
//
// # Abuse limits
//
// Guessing: an address (IPv4, or IPv6 /64) whose /tunnel handshakes fail
// (400/401/431) or whose API requests fail authentication (403) more than
// 10 a minute in bursts of 20 is answered 429 with Retry-After for a
// minute, before any token or signature is checked (HandshakeFailureLimit,
// APIFailureLimit; internal/ratelimit). Successes never count.
//
// Slow or idle clients: the TLS handshake and each request's headers must
// arrive within ReadHeaderTimeout (10 s; tunneld --read-header-timeout),
// a whole request within RequestTimeout (30 s; --request-timeout), and idle keep-alive connections close after 2
// minutes. At most MaxConnsPerIP (64) connections per address may be in
// that state at once: WebSockets and MQTT sessions do not count, so a
// fleet behind one NAT address can hold any number of tunnels. At most
// MaxConns (16384) connections are open in total; further clients wait in
// the kernel's accept queue. A WebSocket peer that stops reading blocks
// its tunnel's sender (the relay holds at most one message for it) and is
// dropped after the relay's WriteTimeout.
//
// Addresses are those of the TCP peer: behind a reverse proxy, every
// client shares the proxy's address and these limits apply to all of them
// at once.
package server
