package tunnel

import (
	"context"
	"errors"
	"sync"

	"github.com/sectun/sectun/internal/token"
	"github.com/sectun/sectun/internal/wsconn"
	"github.com/sectun/sectun/wire"
)

// RawConn is a bare WebSocket to the tunneling service exchanging protocol
// messages, for programs that manage streams themselves (like the device
// SDK's secure tunnel client) and for tests. It neither validates,
// filters, answers nor reconnects: SERVICE_IDS is the first message read on
// V2/V3. The service's pings are answered; RawConn sends none unless Ping
// is called.
//
// One goroutine may call ReadMessage at a time; WriteMessage, Ping and
// Close may be called from any goroutine.
type RawConn struct {
	ws        *wsconn.Conn
	fr        *wire.FrameReader
	version   int
	channelID string

	wmu sync.Mutex
	fw  *wire.FrameWriter
}

// DialRaw makes one handshake with the service, as Connect's first attempt
// would (same Config, same errors), and returns the connection without
// starting anything. Reconnect, keepalive, buffer and event settings are
// ignored.
func DialRaw(ctx context.Context, cfg Config) (*RawConn, error) {
	u, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	ct := cfg.ClientToken
	if ct == "" {
		ct = token.NewClientToken()
	}
	ws, version, channelID, err := handshake(ctx, &cfg, u.String(), ct)
	if err != nil {
		return nil, err
	}
	r := &RawConn{ws: ws, fr: wire.NewFrameReader(ws), version: version, channelID: channelID}
	r.fw = wire.NewFrameWriter(ws.Writer(context.Background()), 0)
	return r, nil
}

// Version returns the negotiated protocol version.
func (r *RawConn) Version() int { return r.version }

// ChannelID returns the service's id of this WebSocket.
func (r *RawConn) ChannelID() string { return r.channelID }

// ReadMessage returns the next message. It and its Payload are valid until
// the next call. A close frame from the service ends the stream with an
// error wrapping ErrTunnelClosed or, for the codes of a service going away
// or restarting, ErrDisconnected; a malformed frame's error wraps
// wire.ErrMalformed.
func (r *RawConn) ReadMessage() (*wire.Message, error) {
	m, err := r.fr.Next()
	if err != nil {
		var ce *wsconn.CloseError
		if errors.As(err, &ce) {
			return nil, closeError(ce)
		}
		return nil, err
	}
	return m, nil
}

// WriteMessage sends the messages as tunnel frames, coalesced into as few
// WebSocket messages as fit (usually one).
func (r *RawConn) WriteMessage(msgs ...*wire.Message) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	for _, m := range msgs {
		if err := r.fw.Write(m); err != nil {
			return err
		}
	}
	return r.fw.Flush()
}

// Ping sends a WebSocket ping.
func (r *RawConn) Ping() error { return r.ws.Ping(context.Background()) }

// Close closes the WebSocket with a normal close frame.
func (r *RawConn) Close() error { return r.ws.Close(wsconn.CloseNormal, "") }
