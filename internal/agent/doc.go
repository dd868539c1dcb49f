// Package agent is the device side of tunnel notifications: it subscribes
// to "<prefix>/things/<thing>/tunnels/notify" on an MQTT broker (AWS IoT
// Core, Mosquitto, tunneld's embedded broker) and, for every valid
// notification, runs a destination session (package tunnel) that connects
// the tunnel's services to local addresses (package proxy).
//
// # MQTT
//
// The client (paho, MQTT 3.1.1) uses the thing name as client ID unless
// Config.ClientID says otherwise, a persistent session (clean session
// false: the broker queues QoS 1 notifications while the device is away)
// and subscribes at QoS 1. After any loss of the broker it reconnects with
// jittered exponential backoff (0.5 s doubling up to
// Config.MaxReconnectInterval) and subscribes again, since a broker that
// restarted without persistence has forgotten the subscription. A refused
// subscription (SUBACK 0x80) is logged with the policy to fix and retried
// like a lost connection.
//
// # Notifications
//
// Payloads are checked with notify.ParseDocument; each service ID must map
// to a local address (Config.Services, then DefaultServices: SSH ->
// localhost:22, VNC -> localhost:5900; a tunnel without service IDs uses
// Config.V1Service). A notification that fails any check, a duplicate
// delivery (same token as a running session or one of the last 1024
// started: MQTT delivers at least once) and a notification beyond
// Config.MaxTunnels are logged and ignored; running sessions are not
// affected. A notification with a new token for an existing tunnel (a
// rotated destination token) starts a new session: the service disconnects
// the old one, which then ends.
//
// # Sessions
//
// A session connects to Config.TunnelEndpoint, or to the AWS endpoint of
// the notification's region, with a client token generated for it, so
// that it can reconnect after network trouble for as long as the tunnel
// is open. It ends when the service closes the tunnel (or disconnects it
// after a token rotation), when its token is refused, or when the agent
// stops; it then leaves the agent's table (Sessions). Each connection the
// source opens is dialed to the service's local address, with
// Config.DialRetries further attempts; a failure rejects that connection
// only. RunToken runs one such session for a token given in advance,
// without MQTT.
//
// # Concurrency
//
// Run may be called once; it returns when its context ends, after
// disconnecting from the broker and closing every session (each sends a
// normal WebSocket close) and waiting for all goroutines. Sessions and
// Topic are safe to call concurrently with Run. Config.OnEvent is called
// from several goroutines, never with a lock held.
//
// # Errors
//
// New and RunToken fail with errors wrapping ErrInvalidConfig. Events
// carry errors wrapping notify.ErrInvalidDocument, ErrUnmappedService,
// ErrDuplicate, ErrTooManyTunnels, ErrWrongTopic or ErrStopping (Ignored)
// and the tunnel package's errors (SessionEnded). Tokens never appear in
// logs, events or errors: sessions are named by token.Short.
package agent
