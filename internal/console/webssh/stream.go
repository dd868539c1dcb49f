package webssh

import (
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sectun/sectun/wire"
)

var (
	// ErrStreamReset: the destination (or the relay) ended the stream.
	ErrStreamReset = errors.New("webssh: the stream was reset")
	// ErrNoService: the tunnel offers no service this client can use.
	ErrNoService = errors.New("webssh: no usable service")
)

// Transport is a WebSocket connected to /tunnel as the source: whole
// binary messages each way.
type Transport interface {
	// Send writes one binary WebSocket message; it must not retain msg.
	Send(msg []byte) error
	// Recv returns the next binary WebSocket message; an error when the
	// WebSocket is closed (its text says why).
	Recv() ([]byte, error)
	// Close closes the WebSocket.
	Close() error
}

// Options choose the stream.
type Options struct {
	// Version is the protocol version of the WebSocket: that of the
	// subprotocol the relay echoed (1, 2 or 3).
	Version int
	// Service is the service ID to use; "" picks the only one, else the
	// one named like SSH.
	Service string
}

// Stream is the client's stream through the tunnel: a net.Conn for the
// SSH client.
type Stream struct {
	t       Transport
	version int
	id      int32
	conn    uint32
	service string

	rmu  sync.Mutex
	msg  []byte // what is left of the last WebSocket message
	data []byte // what is left of the last DATA payload
	rerr error

	wmu  sync.Mutex
	wbuf []byte
	werr error
}

var sshLike = regexp.MustCompile(`(?i)ssh`)

// Open starts a stream: on V2 and V3 it waits for SERVICE_IDS and picks a
// service; then it sends STREAM_START.
func Open(t Transport, o Options) (*Stream, error) {
	s := &Stream{t: t, version: o.Version, id: 1}
	if s.version < 1 || s.version > 3 {
		return nil, fmt.Errorf("webssh: protocol version %d: want 1, 2 or 3", o.Version)
	}
	if s.version >= 2 {
		ids, err := s.serviceIDs()
		if err != nil {
			return nil, err
		}
		switch {
		case o.Service != "" && slices.Contains(ids, o.Service):
			s.service = o.Service
		case o.Service != "":
			return nil, fmt.Errorf("%w: the tunnel offers %s, not %q", ErrNoService, describe(ids), o.Service)
		case len(ids) <= 1:
			if len(ids) == 1 {
				s.service = ids[0]
			}
		default:
			i := slices.IndexFunc(ids, sshLike.MatchString)
			if i < 0 {
				return nil, fmt.Errorf("%w: the tunnel offers %s and none is SSH: choose one", ErrNoService, describe(ids))
			}
			s.service = ids[i]
		}
		if s.version == 3 {
			s.conn = 1
		}
	}
	if err := s.send(&wire.Message{Type: wire.TypeStreamStart, StreamID: s.id, ServiceID: s.service, ConnectionID: s.conn}); err != nil {
		return nil, err
	}
	return s, nil
}

func describe(ids []string) string {
	if len(ids) == 0 {
		return "no service"
	}
	return strings.Join(ids, ", ")
}

// Service is the service ID in use ("" for V1 and tunnels without one).
func (s *Stream) Service() string {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.service
}

// serviceIDs reads up to the SERVICE_IDS message.
func (s *Stream) serviceIDs() ([]string, error) {
	for {
		m, err := s.next()
		if err != nil {
			return nil, err
		}
		if m.Type == wire.TypeServiceIDs {
			return m.AvailableServiceIDs, nil
		}
	}
}

// next returns the next message from the relay.
func (s *Stream) next() (*wire.Message, error) {
	for len(s.msg) == 0 {
		b, err := s.t.Recv()
		if err != nil {
			return nil, err
		}
		s.msg = b
	}
	if len(s.msg) < wire.FrameHeaderSize {
		return nil, fmt.Errorf("webssh: a WebSocket message ends inside a frame header")
	}
	n := int(s.msg[0])<<8 | int(s.msg[1])
	if len(s.msg) < wire.FrameHeaderSize+n {
		return nil, fmt.Errorf("webssh: a WebSocket message ends inside a frame")
	}
	var m wire.Message
	if err := m.Unmarshal(s.msg[wire.FrameHeaderSize : wire.FrameHeaderSize+n]); err != nil {
		return nil, err
	}
	s.msg = s.msg[wire.FrameHeaderSize+n:]
	return &m, nil
}

// mine reports whether m is about this client's stream.
func (s *Stream) mine(m *wire.Message) bool {
	if m.StreamID != s.id || m.ServiceID != s.service && m.ServiceID != "" {
		return false
	}
	return s.conn == 0 || m.ConnectionID == 0 || m.ConnectionID == s.conn
}

// detect follows an older destination, as the reference source does:
// DATA without a service ID is V1's format, without a connection ID V2's;
// what this end sends from then on is in that format.
func (s *Stream) detect(m *wire.Message) {
	if m.ServiceID == "" && s.service != "" || m.ConnectionID == 0 && s.conn != 0 {
		s.wmu.Lock()
		if m.ServiceID == "" {
			s.service = ""
		}
		s.conn = 0
		s.wmu.Unlock()
	}
}

// Read returns the stream's data.
func (s *Stream) Read(p []byte) (int, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	for len(s.data) == 0 {
		if s.rerr != nil {
			return 0, s.rerr
		}
		m, err := s.next()
		if err != nil {
			s.rerr = err
			return 0, err
		}
		switch m.Type {
		case wire.TypeData:
			if s.mine(m) {
				s.data = m.Payload
				s.detect(m)
			}
		case wire.TypeStreamReset, wire.TypeConnectionReset:
			if s.mine(m) {
				s.rerr = fmt.Errorf("%w by the destination", ErrStreamReset)
			}
		case wire.TypeSessionReset:
			s.rerr = fmt.Errorf("%w: the session was reset", ErrStreamReset)
		case wire.TypeServiceIDs:
			// The destination reconnected: its side of the stream is gone.
			s.rerr = fmt.Errorf("%w: the destination reconnected", ErrStreamReset)
		}
	}
	n := copy(p, s.data)
	s.data = s.data[n:]
	return n, nil
}

// Write sends p as DATA (chunks of at most wire.MaxPayloadSize).
func (s *Stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.werr != nil {
		return 0, s.werr
	}
	n := 0
	for len(p) > 0 {
		c := p[:min(len(p), wire.MaxPayloadSize)]
		if err := s.sendLocked(&wire.Message{Type: wire.TypeData, StreamID: s.id, ServiceID: s.service, ConnectionID: s.conn, Payload: c}); err != nil {
			s.werr = err
			return n, err
		}
		n += len(c)
		p = p[len(c):]
	}
	return n, nil
}

func (s *Stream) send(m *wire.Message) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.sendLocked(m)
}

func (s *Stream) sendLocked(m *wire.Message) error {
	b, err := wire.AppendFrame(s.wbuf[:0], m)
	if err != nil {
		return err
	}
	s.wbuf = b
	return s.t.Send(b)
}

// Close resets the stream (best effort) and closes the WebSocket.
func (s *Stream) Close() error {
	s.send(&wire.Message{Type: wire.TypeStreamReset, StreamID: s.id, ServiceID: s.service, ConnectionID: s.conn})
	return s.t.Close()
}

// net.Conn, for the SSH client. Deadlines are not supported (the SSH
// client sets none).

type addr struct{}

func (addr) Network() string { return "tunnel" }
func (addr) String() string  { return "tunnel" }

func (s *Stream) LocalAddr() net.Addr              { return addr{} }
func (s *Stream) RemoteAddr() net.Addr             { return addr{} }
func (s *Stream) SetDeadline(time.Time) error      { return nil }
func (s *Stream) SetReadDeadline(time.Time) error  { return nil }
func (s *Stream) SetWriteDeadline(time.Time) error { return nil }

var _ net.Conn = (*Stream)(nil)
var _ io.ReadWriteCloser = (*Stream)(nil)
