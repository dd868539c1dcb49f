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
// Concurrency: New prepares everything and binds the listener; Run serves
// until its context ends and then shuts down gracefully (WebSockets get a
// going-away close frame). A Server is run once.
//
// Security defaults: TLS is on (a development CA and certificate are made in
// the data directory when no certificate is given) and every API request
// must carry a valid SigV4 signature; plaintext or no authentication on a
// non-loopback address is refused unless Config.AllowInsecure is set.
package server
