package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/sectun/sectun/wire"
)

type discardMessages struct{ n int }

func (d *discardMessages) WriteMessage(p []byte) error { d.n += len(p); return nil }

// FuzzSessionHandle drives a session's protocol state machine (the code
// that acts on what the service sends: streams, connections, resets,
// version detection) with an arbitrary interleaving of messages from the
// service and local actions (Dial, Write, Close, a round of the writer),
// without a network. The input is a sequence of steps: one opcode byte,
// then for a message a 2-byte length and the encoded message. Messages
// that fail wire.Validate(RoleService) end the run, as they end a link.
// Nothing may panic, and the session's bookkeeping must stay consistent.
//
//	go test -run '^$' -fuzz FuzzSessionHandle -fuzztime 10m ./tunnel/
func FuzzSessionHandle(f *testing.F) {
	msg := func(m wire.Message) []byte {
		b := m.Marshal()
		return append(binary.BigEndian.AppendUint16([]byte{0}, uint16(len(b))), b...)
	}
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	// Destination: a stream, data, a second connection, resets.
	f.Add(cat([]byte{0x80},
		msg(wire.Message{Type: wire.TypeStreamStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1}),
		msg(wire.Message{Type: wire.TypeData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1, Payload: []byte("hi")}),
		msg(wire.Message{Type: wire.TypeConnectionStart, StreamID: 1, ServiceID: "SSH1", ConnectionID: 2}),
		[]byte{2, 3, 4},
		msg(wire.Message{Type: wire.TypeConnectionReset, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1}),
		msg(wire.Message{Type: wire.TypeStreamStart, StreamID: 2, ServiceID: "WEB"}),
		msg(wire.Message{Type: wire.TypeData, StreamID: 2, ServiceID: "WEB", Payload: []byte("v2")}),
		msg(wire.Message{Type: wire.TypeSessionReset}),
	))
	// Source: dials, replies in V3, then V2 and V1 shapes (detection).
	f.Add(cat([]byte{0x00, 1, 1, 2},
		msg(wire.Message{Type: wire.TypeData, StreamID: 1, ServiceID: "SSH1", ConnectionID: 1, Payload: []byte("a")}),
		msg(wire.Message{Type: wire.TypeData, StreamID: 1, ServiceID: "SSH1", Payload: []byte("b")}),
		msg(wire.Message{Type: wire.TypeData, StreamID: 1, Payload: []byte("c")}),
		[]byte{3, 4},
		msg(wire.Message{Type: wire.TypeStreamReset, StreamID: 1, ServiceID: "SSH1"}),
		msg(wire.Message{Type: wire.TypeServiceIDs, AvailableServiceIDs: []string{"SSH1"}}),
		[]byte{1, 4},
	))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		watchdog := time.AfterFunc(5*time.Second, func() { panic(fmt.Sprintf("stuck on input %x", data)) })
		defer watchdog.Stop()
		mode := ModeSource
		if data[0]&0x80 != 0 {
			mode = ModeDestination
		}
		cfg := Config{Mode: mode, AccessToken: "fuzz", Endpoint: "ws://127.0.0.1:1", StallTimeout: -1,
			MaxConns: 8, Logger: slog.New(slog.DiscardHandler)}
		if mode == ModeSource {
			cfg.PeerVersion = int(data[0] & 3) // 0 (auto), 1, 2, 3
		}
		s, err := newSession(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer s.ev.close()
		defer s.cancel()
		l := newLink(s, nil, 3, "fuzz")
		s.mu.Lock()
		s.services, s.servicesKnown = []string{"SSH1", "WEB"}, true
		s.link = l
		s.mu.Unlock()
		fw := wire.NewFrameWriter(&discardMessages{}, 0)
		var conns []*Conn
		var batch []*Conn
		var ctrl []wire.Message
		svc := [...]string{"SSH1", "WEB", ""}
		data = data[1:]
		for len(data) > 0 {
			op := data[0]
			data = data[1:]
			switch op % 5 {
			case 0: // a message from the service
				if len(data) < 2 {
					return
				}
				n := int(binary.BigEndian.Uint16(data))
				data = data[2:]
				if n > len(data) {
					return
				}
				var m wire.Message
				if err := m.Unmarshal(data[:n]); err != nil {
					return // malformed: the link would end
				}
				data = data[n:]
				if m.Validate(wire.RoleService) != nil {
					return // invalid: the link would end
				}
				if err := s.handle(l, &m); err != nil {
					return
				}
			case 1: // Dial
				if mode != ModeSource {
					continue
				}
				s.mu.Lock()
				c, err := s.openLocked(l, svc[int(op/5)%len(svc)])
				s.mu.Unlock()
				if err == nil {
					conns = append(conns, c)
				}
			case 2: // Write on a connection
				if len(conns) > 0 {
					conns[int(op/5)%len(conns)].Write([]byte("payload"))
				}
			case 3: // Close a connection
				if len(conns) > 0 {
					conns[int(op/5)%len(conns)].Close()
				}
			case 4: // one round of the writer
				if batch, ctrl, _, err = l.drain(fw, batch, ctrl); err != nil {
					t.Fatalf("drain: %v", err)
				}
			}
			// Incoming connections (destination) join the list.
			for more := true; more; {
				select {
				case c := <-s.acceptQ:
					conns = append(conns, c)
				default:
					more = false
				}
			}
			checkSession(t, s)
		}
		s.deactivate(l, errors.New("fuzz: end"))
		checkSession(t, s)
		if s.nconns != 0 || len(s.streams) != 0 {
			t.Fatalf("after the link ended: %d conns, %d streams", s.nconns, len(s.streams))
		}
	})
}

// checkSession checks the session's bookkeeping: the connection count
// matches the streams' connections, and each stream is filed under its
// service.
func checkSession(t *testing.T, s *Session) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for svc, st := range s.streams {
		if st.service != svc {
			t.Fatalf("stream %d filed under %q, serves %q", st.id, svc, st.service)
		}
		for id, c := range st.conns {
			if c.id != id || c.st != st {
				t.Fatalf("connection %d of stream %d is misfiled", id, st.id)
			}
		}
		n += len(st.conns)
	}
	if n != s.nconns || n > s.cfg.MaxConns {
		t.Fatalf("nconns %d, streams hold %d (max %d)", s.nconns, n, s.cfg.MaxConns)
	}
}
