package tunnel

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Sentinel errors. Errors returned by this package wrap them; test with
// errors.Is.
var (
	// ErrTunnelClosed: the service closed the WebSocket with a close frame
	// that ends the tunnel (the tunnel was closed or deleted). Permanent.
	ErrTunnelClosed = errors.New("tunnel: tunnel closed by the service")
	// ErrTokenRejected: the service refused the WebSocket upgrade with a 4xx
	// status (bad, expired or used token, wrong mode, closed tunnel). It is
	// wrapped by a *HandshakeError and is permanent: no retry can help.
	ErrTokenRejected = errors.New("tunnel: access token rejected")
	// ErrStreamReset: the stream or connection was reset (by the peer, the
	// service's SESSION_RESET, a replacing stream or a stalled reader).
	// Reads return io.EOF instead when the peer simply closed its end.
	ErrStreamReset = errors.New("tunnel: stream reset")
	// ErrSessionClosed: Session.Close was called.
	ErrSessionClosed = errors.New("tunnel: session closed")
	// ErrDisconnected: the WebSocket to the service was lost; connections
	// open at that moment fail with it while the session reconnects.
	ErrDisconnected = errors.New("tunnel: connection to the service lost")
	// ErrUnknownService: the service ID is not one of the tunnel's.
	ErrUnknownService = errors.New("tunnel: unknown service")
	// ErrVersionMismatch: the service or the peer speaks a protocol version
	// that cannot carry what was asked.
	ErrVersionMismatch = errors.New("tunnel: protocol version mismatch")
	// ErrWrongMode: Dial on a destination or Accept on a source.
	ErrWrongMode = errors.New("tunnel: operation not available in this mode")
	// ErrTooManyConns: Config.MaxConns connections are already open.
	ErrTooManyConns = errors.New("tunnel: too many connections")
	// ErrInvalidConfig: Config failed validation.
	ErrInvalidConfig = errors.New("tunnel: invalid config")

	// ErrPeerNotConnected (source): a connection was reset before any
	// reply in the way the service resets connections for an end that has
	// no peer (STREAM_RESET for a just-started V3 stream): the destination
	// is not connected to the tunnel. Conn.ResetReason returns it; it
	// wraps ErrStreamReset.
	ErrPeerNotConnected = fmt.Errorf("%w: the destination is not connected to the tunnel", ErrStreamReset)
	// ErrServiceRefused (source): the destination reset a connection
	// before sending anything (CONNECTION_RESET of a V3 connection, as
	// sectun's destination answers a failed dial of its local service):
	// it could not connect to its service (connection refused, or no
	// mapping for the service). It wraps ErrStreamReset.
	ErrServiceRefused = fmt.Errorf("%w: the destination could not connect to its service", ErrStreamReset)
	// ErrResetBeforeReply (source): a connection was reset before any
	// reply in a way that does not tell why (STREAM_RESET on a V1/V2
	// stream, or from a destination that answered before): the
	// destination could not connect to its service, or is not connected.
	// It wraps ErrStreamReset.
	ErrResetBeforeReply = fmt.Errorf("%w: the destination reset the connection before any reply (it could not connect to its service, or is not connected)", ErrStreamReset)

	// ErrTLSRequired: a ws:// (plain) Endpoint answers with TLS: use
	// wss://. Permanent when the session never connected (see Connect).
	ErrTLSRequired = errors.New("tunnel: the endpoint speaks TLS: use a wss:// Endpoint (or host[:port])")
	// ErrTLSNotSpoken: a wss:// Endpoint answers without TLS: use ws://.
	// Permanent when the session never connected.
	ErrTLSNotSpoken = errors.New("tunnel: the endpoint does not speak TLS: use a ws:// Endpoint")
	// ErrCertificateUntrusted: the service's TLS certificate does not
	// verify (unknown authority, wrong host name, expired): add its CA to
	// Config.TLS's RootCAs (TLSConfig reads a CA file or directory), or,
	// for tests only, set InsecureSkipVerify. Permanent when the session
	// never connected.
	ErrCertificateUntrusted = errors.New("tunnel: the service's certificate is not trusted")
)

// HandshakeError is a WebSocket upgrade refused by the service with an HTTP
// status. For 4xx statuses it wraps ErrTokenRejected and the session gives
// up; 5xx statuses and 429 (rate limited: retry later) are retried.
type HandshakeError struct {
	StatusCode int
	ChannelID  string // the service's channel-id header, for support requests
	Body       string // the start of the response body
	Reason     string // what went wrong and what to do, derived from status and body
}

func (e *HandshakeError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "tunnel: handshake refused (HTTP %d", e.StatusCode)
	if e.ChannelID != "" {
		fmt.Fprintf(&b, ", channel-id %s", e.ChannelID)
	}
	b.WriteString(")")
	if e.Reason != "" {
		b.WriteString(": ")
		b.WriteString(e.Reason)
	}
	if body := strings.TrimSpace(e.Body); body != "" {
		fmt.Fprintf(&b, " (service said: %q)", body)
	}
	return b.String()
}

// Unwrap returns ErrTokenRejected for 4xx statuses other than 429.
func (e *HandshakeError) Unwrap() error {
	if e.StatusCode >= 400 && e.StatusCode < 500 && e.StatusCode != http.StatusTooManyRequests {
		return ErrTokenRejected
	}
	return nil
}

// handshakeReason explains a refused upgrade to the user: what went wrong
// and what to do. The service's body is matched loosely because neither
// AWS nor other services document it.
func handshakeReason(status int, body string, mode Mode) string {
	b := strings.ToLower(body)
	switch {
	case status == http.StatusTooManyRequests:
		return "rate limited by the service after failed attempts from this address: retried with backoff"
	case status >= 500:
		return "the service is unavailable (5xx): retried with backoff"
	case strings.Contains(b, "expired"):
		return "access token expired: rotate the token or open a new tunnel"
	case strings.Contains(b, "client token") || strings.Contains(b, "client-token"):
		return "client token rejected: the access token was first used with another client token (another process or machine, or one started without a client token): use the same client token as that first connection (Config.ClientToken), or get a new access token: " + rotateCommand(mode)
	case strings.Contains(b, "already") || strings.Contains(b, "used") || strings.Contains(b, "in use"):
		return "access token already used (a first connection without a client token consumes it; one with a client token binds it to that client token): reconnect with that connection's client token (Config.ClientToken), or get a new access token: " + rotateCommand(mode)
	case strings.Contains(b, "mode"):
		return "access token is for the other mode: use the source token in source mode and the destination token in destination mode"
	case status == 410 || strings.Contains(b, "closed"):
		return "the tunnel is closed: open a new tunnel"
	case status == 401 || status == 403:
		return "access token rejected: check the token and the mode, or get a new one: " + rotateCommand(mode)
	case status == 404 || status == 400:
		return "bad request: check the endpoint (it must serve /tunnel) and the options"
	}
	return "the service refused the connection: check the token, mode and endpoint"
}

// rotateCommand is the AWS CLI command that issues a new access token for
// mode; against tunneld, the same with --endpoint-url.
func rotateCommand(mode Mode) string {
	cm := mode.APIName()
	if cm == "" {
		cm = ModeSource.APIName()
	}
	return "aws iotsecuretunneling rotate-tunnel-access-token --tunnel-id TUNNEL_ID --client-mode " + cm +
		" (against tunneld add --endpoint-url https://HOST:PORT)"
}
