// Package devicetest stands in for the AWS IoT Device Client in tests of
// tunneld (it is not used by any program). It reproduces what the Device
// Client does on the wire, as observed:
//
//   - MQTT (ConnectMQTT): MQTT 3.1.1 over TLS with ALPN x-amzn-mqtt-ca and
//     the device certificate, trusting only the configured root CA; clean
//     session false, keepalive 1200 s, client ID = thing name, the SDK
//     metrics string as username; a QoS 1 subscription to exactly
//     $aws/things/<thing>/tunnels/notify. Notification.Check applies the
//     Device Client's checks to what arrives (clientMode "destination",
//     non-empty token and region, exactly one service, SSH or VNC).
//   - Tunnel (ConnectDestination): a destination that dials
//     wss://<endpoint>/tunnel?local-proxy-mode=destination offering only
//     aws.iot.securetunneling-3.0, with a random client token, pings
//     every 20 s, counts as connected only after SERVICE_IDS, and speaks
//     V1 only: it takes STREAM_START, DATA and STREAM_RESET without service
//     or connection IDs, dials one local address per stream, answers DATA
//     without a service ID in chunks of at most 32 KiB and STREAM_RESET when
//     the local connection ends. A message in the V2/V3 format is recorded
//     as a violation (the Device Client would close and reconnect) and
//     ends the session.
//
// Concurrency: MQTTClient and Destination methods are safe for concurrent
// use; Close waits for the goroutines they started.
//
// Errors: connection errors are returned as they come (a refused tunnel
// handshake is a *tunnel.HandshakeError); ErrViolation reports a message
// the Device Client could not handle.
package devicetest
