// Package broker is tunneld's embedded MQTT broker (mochi-mqtt): devices
// connect to it and subscribe to their notify topic, and the Broker, which
// is a notify.Publisher, publishes tunnel notifications into it directly.
//
// # Listeners
//
// A plain TCP listener (default 127.0.0.1:1883; Config.DisableTCP turns it
// off), an optional TLS listener (Config.TLSAddr), and connections handed
// over from outside with ServeConn (for tunneld's single TLS port, where
// the caller has done the TLS handshake and picked MQTT by ALPN). Each
// connection must complete its TLS handshake and send CONNECT within
// Config.ConnectTimeout.
//
// # Authentication (CONNECT), first rule that applies
//
//  1. A verified TLS client certificate (a connection whose net.Conn has a
//     ConnectionState method, e.g. *tls.Conn, with verified chains): its
//     identity is the leaf's Subject CommonName, or if that is empty its
//     first DNS SAN, or its first URI SAN. An identity listed in
//     Config.AdminCertNames is an admin; any other must be a valid thing
//     name (notify.ValidThingName) and is that thing. The MQTT username and
//     password are then ignored (AWS SDKs send metrics in the username).
//  2. A non-empty username: it must be in Config.Users with that password
//     (compared in constant time). An admin user is an admin; any other
//     user is the thing of the same name.
//  3. Neither: anonymous. Allowed only on a listener bound to a loopback
//     address (127.0.0.0/8, ::1) and unless Config.NoAnonymous; never on
//     the TLS-port connections of ServeConn. The thing is the client ID
//     up to its first '@' ("dev-1" and "dev-1@agent" are both thing
//     dev-1), which must be a valid thing name. This is the quick-start
//     mode: any local process can claim any thing that is not protected
//     as below, and receive its notifications (destination tokens).
//
// A device (non-admin) must also use a client ID equal to its thing name,
// or "<thing>@<anything>", or an empty one (the broker assigns a random
// ID): client IDs key sessions, and a client taking over another thing's
// client ID would otherwise take over its subscriptions. The client ID
// "inline" is reserved. A will message must be on a topic the client may
// publish to. Refused connections get CONNACK "bad user name or password"
// (MQTT 3.1.1: "not authorized").
//
// # Session ownership
//
// A session belongs to the identity that made it. One made by a
// certificate or a password may be resumed, or taken over (which
// disconnects its live holder), only by the same thing (or admin)
// authenticated again, by certificate or password; an anonymous one by the
// same anonymous thing, or by that thing authenticated, which then owns
// it. Anyone else gets CONNACK "identifier rejected" (MQTT 5: "client
// identifier not valid"), logged at Warn. And while a thing's device holds
// an authenticated session (connected, or kept after it disconnected), no
// anonymous client may claim that thing under any client ID: CONNACK "not
// authorized". (So an anonymous loopback client can neither disconnect a
// device that uses its certificate nor receive the notification queued for
// it; it can still claim a thing that has never authenticated, or whose
// session has expired.) CONNECTs of one client ID are checked one after
// the other.
//
// # Limits
//
// Config's Max* settings bound what clients can make the broker hold:
// connections in all (from accept, before CONNECT), per address (those not
// authenticated by certificate or password) and per identity (all the
// anonymous clients of one address are one identity), sessions in all and
// per identity, and queued QoS 1 messages per session and in all. A
// connection over a connection limit is closed at once; a CONNECT over an
// identity or session limit gets CONNACK "server unavailable" (MQTT 5:
// "quota exceeded"); a message over a queue limit is dropped for that
// session. Stats reports the counts, limits, refusals and drops by reason;
// refusals are logged at Warn (the first and every 100th) and Debug. The
// broker also finishes mochi v2.7.9's session expiry, which leaves the
// expired session's subscriptions and queued-message count behind.
//
// # Access control (SUBSCRIBE, PUBLISH)
//
// With P the topic prefix (default "$aws") and T the device's thing:
//   - an admin may subscribe and publish anywhere;
//   - a device may subscribe only to filters beginning with "P/things/T/"
//     (e.g. "P/things/T/tunnels/notify", "P/things/T/tunnels/#",
//     "P/things/T/#"): wildcards after that prefix can only match its own
//     topics. A refused filter gets SUBACK 0x80;
//   - a device may publish only to topics beginning with "P/things/T/" and
//     not beginning with "P/things/T/tunnels/" (the service's part, which
//     holds the notify topic). A refused QoS 0 publish is dropped; a
//     refused QoS 1/2 publish disconnects an MQTT 3.1.1 client (MQTT 5
//     clients get a "not authorized" acknowledgement);
//   - the broker itself (NotifyTunnel) bypasses these rules.
//
// Retained messages are disabled (a retained notification would replay a
// used token to every new subscriber).
//
// # Packet identifiers
//
// A client's packet identifiers are kept apart from the broker's, as MQTT
// requires: a device that resubscribes (or unsubscribes, or publishes at
// QoS 1 or 2) with the identifier of a notification it has not yet
// acknowledged is served normally, and the notification stays queued
// until acknowledged. mochi v2.7.9 does not do this on its own; see
// packetIDHook for the work-around.
//
// # Session takeover
//
// A QoS 1 message (a notification from NotifyTunnel, or a network
// client's publish, which mochi acknowledges before routing it) that
// arrives while a device's new connection takes over its persistent
// session is delivered on the new connection. mochi v2.7.9 would queue it
// on the old connection and lose it; see takeoverHook.
//
// Concurrency: Broker methods are safe for concurrent use. Close is
// idempotent and waits for every goroutine the broker started.
//
// Errors: ErrNotStarted, ErrStarted, notify.ErrClosed, and configuration
// errors from New that say which setting is wrong.
package broker
