package tunnel

import (
	"errors"
	"testing"

	"github.com/sectun/sectun/tunnel/internal/fakeservice"
	"github.com/sectun/sectun/wire"
)

// TestInvalidFromService: messages that decode but break the protocol's
// rules for the service (wire.Validate with RoleService) end the link, as
// malformed frames do, and the session reconnects; they are not acted on.
// Regression: they used to be processed (a STREAM_START with stream ID 0
// opened a connection to the destination's service) or silently ignored.
func TestInvalidFromService(t *testing.T) {
	for _, tc := range []struct {
		name string
		to   string
		m    wire.Message
	}{
		{"type unset", fakeservice.Source, wire.Message{StreamID: 1}},
		{"unknown type, not ignorable", fakeservice.Source, wire.Message{Type: 42, StreamID: 1}},
		{"DATA on stream 0", fakeservice.Source, wire.Message{Type: wire.TypeData, ServiceID: "SSH1", Payload: []byte("x")}},
		{"STREAM_START on stream 0", fakeservice.Destination, wire.Message{Type: wire.TypeStreamStart, ServiceID: "SSH1", ConnectionID: 1}},
		{"STREAM_RESET on stream 0", fakeservice.Destination, wire.Message{Type: wire.TypeStreamReset, ServiceID: "SSH1"}},
		{"availableServiceIds in DATA", fakeservice.Source, wire.Message{Type: wire.TypeData, StreamID: 1, AvailableServiceIDs: []string{"X"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := newEvents()
			accepted := 0
			svc, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, func(s, d *Config) {
				s.OnEvent, d.OnEvent = ev.add, ev.add
			})
			if err := svc.Send(tc.to, &tc.m); err != nil {
				t.Fatal(err)
			}
			dis := waitEvent(t, ev, func(e Disconnected) bool { return errors.Is(e.Err, wire.ErrInvalidMessage) })
			if !errors.Is(dis.Err, ErrDisconnected) {
				t.Fatalf("Disconnected %v, want ErrDisconnected", dis.Err)
			}
			waitEvent(t, ev, func(e Connected) bool { return e.Reconnect })
			for _, e := range ev.list() {
				if _, ok := e.(StreamStarted); ok {
					accepted++
				}
			}
			if accepted != 0 {
				t.Fatalf("%d streams started from an invalid message", accepted)
			}
			// The tunnel works after the reconnect.
			a, b := dialAccept(t, src, dst, "SSH1")
			writeAll(t, a, []byte("ok"))
			readN(t, b, 2)
		})
	}
}

// TestIgnorableUnknownFromService: an unknown type marked ignorable is
// skipped without a reconnect, as the protocol allows.
func TestIgnorableUnknownFromService(t *testing.T) {
	ev := newEvents()
	svc, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, func(s, d *Config) { s.OnEvent = ev.add })
	if err := svc.Send(fakeservice.Source, &wire.Message{Type: 42, Ignorable: true}); err != nil {
		t.Fatal(err)
	}
	a, b := dialAccept(t, src, dst, "SSH1")
	writeAll(t, a, []byte("ok"))
	readN(t, b, 2)
	for _, e := range ev.list() {
		if d, ok := e.(Disconnected); ok {
			t.Fatalf("disconnected: %v", d.Err)
		}
	}
}
