// Package relaytest runs the real /tunnel relay (internal/server/relay) on
// 127.0.0.1 with an in-memory Authorizer, for tests of the packages that
// connect to it (the proxy, the local proxy, the agent): a tunneling
// service without tunneld's API, store and notifications.
//
// Authz follows tunneld's access-token rules: a token is for one mode; used
// without a client token it is consumed; used with one it is bound to it
// and may reconnect with the same client token only; a rotated destination
// token and every token of a closed tunnel are refused. Every refusal
// wraps relay.ErrUnauthorized (the relay answers 401).
//
// Only tests import it. A Service is shut down by t.Cleanup, within
// Timeout.
//
// Concurrency: Authz and Service methods may be called from any goroutine.
package relaytest
