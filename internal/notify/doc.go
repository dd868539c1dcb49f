// Package notify tells devices about new tunnels over MQTT, the way AWS IoT
// Secure Tunneling does: when a tunnel is opened for a thing (or its
// destination token is rotated) the service publishes, at QoS 1, to
// "$aws/things/<thing>/tunnels/notify" the JSON document
//
//	{"clientAccessToken":"<destination CAT>","clientMode":"destination","region":"<region>","services":["SSH1"]}
//
// and a device agent subscribed to its own topic starts a destination proxy
// with that token.
//
// The package holds both sides of that contract: Notification and its exact
// Document (Marshal) for the service, ParseDocument (strict validation) for
// device agents; the Publisher interface with ClientPublisher (an external
// broker such as Mosquitto or AWS IoT Core, through paho MQTT 3.1.1) and
// Retrying (a bounded background queue with backoff, so that the API never
// fails or waits because of MQTT). The embedded broker lives in the broker
// subpackage so that device agents importing this package do not link it.
//
// The topic prefix ("$aws" by default) is configurable everywhere because
// some external brokers reserve topics beginning with '$'.
//
// Delivery is at least once: a publish whose PUBACK did not arrive in time
// is retried and may reach the device twice. Devices should ignore a token
// they already act on.
//
// Concurrency: all Publishers are safe for concurrent use; Close is
// idempotent and waits for the goroutines the Publisher started
// (ClientPublisher: at most ConnectTimeout for a connection attempt in
// progress).
//
// Errors: ErrInvalidNotification (a notification that cannot be published:
// bad thing name, empty token or region, bad service ID), ErrInvalidDocument
// (ParseDocument refuses a payload; the message says which field and why),
// ErrNotConnected (ClientPublisher is between connections), ErrClosed (use
// after Close). Tokens never appear in errors or logs: only token.Short.
package notify
