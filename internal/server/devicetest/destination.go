package devicetest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/sectun/sectun/internal/token"
	"github.com/sectun/sectun/tunnel"
	"github.com/sectun/sectun/wire"
)

// ErrViolation reports a message the Device Client cannot handle (V2/V3
// format, a message type V1 does not have).
var ErrViolation = errors.New("devicetest: message the Device Client cannot handle")

// MaxChunk is the largest DATA payload the Device Client sends.
const MaxChunk = 32 << 10

// DestinationConfig configures the emulated Device Client tunnel.
type DestinationConfig struct {
	// Endpoint is host:port of tunneld (the Device Client: the
	// tunneling.endpoint host, port 443).
	Endpoint string
	// TLS trusts tunneld's certificate (the Device Client: root-ca).
	TLS *tls.Config
	// Token is the notified destination access token.
	Token string
	// ClientToken is sent with every connection; default a random one.
	ClientToken string
	// Target is the local address each stream is connected to (the
	// Device Client: 127.0.0.1:22 for SSH).
	Target string
	// PingInterval is the WebSocket ping period (default 20 s).
	PingInterval time.Duration
	// Timeout bounds the handshake, the wait for SERVICE_IDS and each dial
	// of Target (default 10 s).
	Timeout time.Duration
}

// Destination is a connected emulated Device Client tunnel.
type Destination struct {
	cfg      DestinationConfig
	raw      *tunnel.RawConn
	services []string

	mu       sync.Mutex
	active   int32    // stream ID, 0 = none
	local    net.Conn // of the active stream
	streams  int      // streams started
	err      error    // why the session ended
	closed   bool
	done     chan struct{}
	stopPing chan struct{}
	wg       sync.WaitGroup
	once     sync.Once
}

// ConnectDestination makes the handshake and returns once SERVICE_IDS has
// arrived (the Device Client's "connection complete").
func ConnectDestination(ctx context.Context, cfg DestinationConfig) (*Destination, error) {
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = 20 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.ClientToken == "" {
		cfg.ClientToken = token.NewClientToken()
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	raw, err := tunnel.DialRaw(ctx, tunnel.Config{
		Mode:         tunnel.ModeDestination,
		AccessToken:  cfg.Token,
		ClientToken:  cfg.ClientToken,
		Endpoint:     "wss://" + cfg.Endpoint,
		TLS:          cfg.TLS,
		Subprotocols: []string{"aws.iot.securetunneling-3.0"},
		Proxy:        func(*url.URL) (*url.URL, error) { return nil, nil },
	})
	if err != nil {
		return nil, err
	}
	d := &Destination{cfg: cfg, raw: raw, done: make(chan struct{}), stopPing: make(chan struct{})}
	// SERVICE_IDS first; a deadline-less read is bounded by closing.
	first := make(chan error, 1)
	go func() {
		m, err := raw.ReadMessage()
		switch {
		case err != nil:
		case m.Type != wire.TypeServiceIDs:
			err = fmt.Errorf("%w: first message %v, want SERVICE_IDS", ErrViolation, m.Type)
		default:
			d.services = append([]string(nil), m.AvailableServiceIDs...)
		}
		first <- err
	}()
	select {
	case err = <-first:
	case <-ctx.Done():
		raw.Close()
		<-first
		err = fmt.Errorf("devicetest: no SERVICE_IDS: %w", ctx.Err())
	}
	if err != nil {
		raw.Close()
		return nil, err
	}
	d.wg.Add(2)
	go d.readLoop()
	go d.pingLoop()
	return d, nil
}

// Services returns the service IDs announced by SERVICE_IDS.
func (d *Destination) Services() []string { return d.services }

// ClientToken returns the client token used.
func (d *Destination) ClientToken() string { return d.cfg.ClientToken }

// Streams returns the number of streams started so far.
func (d *Destination) Streams() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.streams
}

// Done is closed when the session has ended.
func (d *Destination) Done() <-chan struct{} { return d.done }

// Err returns why the session ended (nil while it runs or after Close).
func (d *Destination) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// Close ends the session and waits for its goroutines.
func (d *Destination) Close() error {
	d.end(nil)
	d.wg.Wait()
	return nil
}

// end records why the session ended (the first reason wins) and tears it
// down.
func (d *Destination) end(err error) {
	d.once.Do(func() {
		d.mu.Lock()
		d.closed = true
		d.err = err
		local := d.local
		d.local, d.active = nil, 0
		d.mu.Unlock()
		if local != nil {
			local.Close()
		}
		close(d.stopPing)
		d.raw.Close()
		close(d.done)
	})
}

func (d *Destination) pingLoop() {
	defer d.wg.Done()
	t := time.NewTicker(d.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			d.raw.Ping()
		case <-d.stopPing:
			return
		}
	}
}

func (d *Destination) readLoop() {
	defer d.wg.Done()
	for {
		m, err := d.raw.ReadMessage()
		if err != nil {
			d.end(err)
			return
		}
		if err := d.handle(m); err != nil {
			d.end(err)
			return
		}
	}
}

// handle acts on one message as the V1-only Device Client does.
func (d *Destination) handle(m *wire.Message) error {
	switch m.Type {
	case wire.TypeStreamStart:
		if m.ServiceID != "" || m.ConnectionID != 0 {
			return fmt.Errorf("%w: STREAM_START with service ID %q, connection ID %d (V2/V3 format)", ErrViolation, m.ServiceID, m.ConnectionID)
		}
		d.startStream(m.StreamID)
	case wire.TypeData:
		if m.ServiceID != "" || m.ConnectionID != 0 {
			return fmt.Errorf("%w: DATA with service ID %q, connection ID %d (V2/V3 format)", ErrViolation, m.ServiceID, m.ConnectionID)
		}
		d.mu.Lock()
		local := d.local
		ok := m.StreamID == d.active && local != nil
		d.mu.Unlock()
		if ok {
			local.SetWriteDeadline(time.Now().Add(d.cfg.Timeout))
			if _, err := local.Write(m.Payload); err != nil {
				d.resetStream(m.StreamID, true)
			}
		}
	case wire.TypeStreamReset:
		d.resetStream(m.StreamID, false)
	case wire.TypeSessionReset:
		d.mu.Lock()
		id := d.active
		d.mu.Unlock()
		d.resetStream(id, false)
	case wire.TypeServiceIDs:
	default:
		if !m.Ignorable {
			return fmt.Errorf("%w: %v", ErrViolation, m.Type)
		}
	}
	return nil
}

// startStream replaces the active stream with id, connected to Target.
func (d *Destination) startStream(id int32) {
	d.mu.Lock()
	old := d.local
	d.active, d.local = id, nil
	d.streams++
	d.mu.Unlock()
	if old != nil {
		old.Close()
	}
	c, err := net.DialTimeout("tcp", d.cfg.Target, d.cfg.Timeout)
	if err != nil {
		d.raw.WriteMessage(&wire.Message{Type: wire.TypeStreamReset, StreamID: id})
		d.mu.Lock()
		if d.active == id {
			d.active = 0
		}
		d.mu.Unlock()
		return
	}
	d.mu.Lock()
	if d.closed || d.active != id {
		d.mu.Unlock()
		c.Close()
		return
	}
	d.local = c
	d.wg.Add(1)
	d.mu.Unlock()
	go d.pump(id, c)
}

// pump sends what the local connection reads as DATA, then STREAM_RESET.
func (d *Destination) pump(id int32, c net.Conn) {
	defer d.wg.Done()
	buf := make([]byte, MaxChunk)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if werr := d.raw.WriteMessage(&wire.Message{Type: wire.TypeData, StreamID: id, Payload: buf[:n]}); werr != nil {
				d.end(werr)
				return
			}
		}
		if err != nil { // EOF or error: the Device Client resets the stream either way
			d.resetStream(id, true)
			return
		}
	}
}

// resetStream closes the stream's local connection if id is active,
// telling the source when tell is set.
func (d *Destination) resetStream(id int32, tell bool) {
	d.mu.Lock()
	if id == 0 || d.active != id {
		d.mu.Unlock()
		return
	}
	local := d.local
	d.active, d.local = 0, nil
	closed := d.closed
	d.mu.Unlock()
	if local != nil {
		local.Close()
	}
	if tell && !closed {
		d.raw.WriteMessage(&wire.Message{Type: wire.TypeStreamReset, StreamID: id})
	}
}
