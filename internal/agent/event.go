package agent

import "errors"

// Sentinel errors. Returned errors and the errors in events wrap them; test
// with errors.Is.
var (
	// ErrInvalidConfig: a Config or configuration file setting is wrong;
	// the message says which and what to do.
	ErrInvalidConfig = errors.New("agent: invalid config")
	// ErrUnmappedService: a tunnel names a service ID with no local
	// address in the configuration (nor in DefaultServices).
	ErrUnmappedService = errors.New("agent: service without a local address")
	// ErrDuplicate: a notification carries a token the agent already acts
	// on or acted on recently (MQTT delivers at least once).
	ErrDuplicate = errors.New("agent: duplicate notification")
	// ErrTooManyTunnels: Config.MaxTunnels sessions are already running.
	ErrTooManyTunnels = errors.New("agent: too many tunnels")
	// ErrWrongTopic: a message arrived on a topic other than the agent's
	// notify topic (left over from an earlier persistent session).
	ErrWrongTopic = errors.New("agent: message on an unexpected topic")
	// ErrStopping: the notification arrived while the agent was stopping.
	ErrStopping = errors.New("agent: stopping")
	// ErrAlreadyRun: Run was called twice.
	ErrAlreadyRun = errors.New("agent: Run called twice")
)

// Event is something that happened to an Agent, passed to Config.OnEvent.
// It is one of the types below.
type Event interface{ agentEvent() }

// Subscribed: the agent is connected to the broker and subscribed to its
// notify topic. Reconnect is false for the first time only.
type Subscribed struct {
	Topic     string
	Reconnect bool
}

// BrokerLost: the connection to the broker was lost, or an attempt to
// connect or subscribe failed; the agent retries after a backoff.
type BrokerLost struct{ Err error }

// Ignored: a notification was not acted on. Err wraps
// notify.ErrInvalidDocument, ErrUnmappedService, ErrDuplicate,
// ErrTooManyTunnels, ErrWrongTopic or ErrStopping. Session is the token's
// log-safe id (token.Short), "" if the document had no usable token.
type Ignored struct {
	Session string
	Err     error
}

// SessionStarted: a destination session connected to the tunneling
// service for a notification (or for RunToken). Services maps the tunnel's
// service IDs to local addresses ("" for a tunnel without service IDs).
type SessionStarted struct {
	Session   string
	Services  map[string]string
	ChannelID string
}

// SessionEnded: a session ended and left the agent's table. Err says why:
// it wraps tunnel.ErrTunnelClosed when the tunnel was closed (or the token
// rotated), tunnel.ErrSessionClosed when the agent stopped it, a
// *tunnel.HandshakeError when the service refused the token, or the error
// of a first connection that never succeeded (Started false).
type SessionEnded struct {
	Session string
	Started bool
	Err     error
}

func (Subscribed) agentEvent()     {}
func (BrokerLost) agentEvent()     {}
func (Ignored) agentEvent()        {}
func (SessionStarted) agentEvent() {}
func (SessionEnded) agentEvent()   {}
