package relaytest

import (
	"context"
	"errors"
	"testing"

	"go.uber.org/goleak"

	"github.com/sectun/sectun/internal/server/relay"
	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/tunnel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestAuthorizeRules(t *testing.T) {
	const c1, c2 = "client-token-one-0123456789abcdef", "client-token-two-0123456789abcdef"
	type try struct {
		which  string // "src" or "dst"
		mode   store.Mode
		client string
		ok     bool
	}
	tests := []struct {
		name   string
		before func(a *Authz, id string) // after Open, before the tries
		tries  []try
	}{
		{"wrong mode", nil, []try{{"src", store.ModeDestination, "", false}, {"src", store.ModeSource, "", true}}},
		{"no client token: consumed", nil, []try{{"dst", store.ModeDestination, "", true}, {"dst", store.ModeDestination, "", false}, {"dst", store.ModeDestination, c1, false}}},
		{"client token: bound", nil, []try{
			{"src", store.ModeSource, c1, true}, {"src", store.ModeSource, c1, true},
			{"src", store.ModeSource, c2, false}, {"src", store.ModeSource, "", false}}},
		{"rotated destination", func(a *Authz, id string) { a.rotate(id) }, []try{{"dst", store.ModeDestination, c1, false}, {"src", store.ModeSource, c1, true}}},
		{"closed tunnel", func(a *Authz, id string) { a.close(id) }, []try{{"src", store.ModeSource, c1, false}, {"dst", store.ModeDestination, "", false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := NewAuthz()
			id, src, dst := a.Open("SSH")
			if tt.before != nil {
				tt.before(a, id)
			}
			for i, tr := range tt.tries {
				tok := map[string]string{"src": src, "dst": dst}[tr.which]
				g, err := a.Authorize(context.Background(), relay.HandshakeRequest{AccessToken: tok, Mode: tr.mode, ClientToken: tr.client})
				if tr.ok != (err == nil) {
					t.Fatalf("try %d (%+v): err = %v, want ok %v", i, tr, err, tr.ok)
				}
				if err != nil && !errors.Is(err, relay.ErrUnauthorized) {
					t.Fatalf("try %d: %v does not wrap relay.ErrUnauthorized", i, err)
				}
				if err == nil && (g.TunnelID != id || len(g.Services) != 1 || g.Services[0] != "SSH") {
					t.Fatalf("try %d: grant %+v", i, g)
				}
			}
		})
	}
	if _, err := NewAuthz().Authorize(context.Background(), relay.HandshakeRequest{AccessToken: "unknown", Mode: store.ModeSource}); !errors.Is(err, relay.ErrUnauthorized) {
		t.Fatalf("unknown token: %v", err)
	}
}

// TestService connects both peers of a tunnel through the real relay,
// rotates the destination token and closes the tunnel.
func TestService(t *testing.T) {
	s := NewService(t, relay.Config{})
	id, src, dst := s.Open("SSH")
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	connect := func(mode tunnel.Mode, tok string) (*tunnel.Session, error) {
		return tunnel.Connect(ctx, tunnel.Config{Mode: mode, AccessToken: tok, Endpoint: s.URL})
	}
	ss, err := connect(tunnel.ModeSource, src)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	ds, err := connect(tunnel.ModeDestination, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	newDst := s.Rotate(id)
	if _, err := connect(tunnel.ModeDestination, dst); err == nil {
		t.Fatal("the rotated destination token still connects")
	}
	ds2, err := connect(tunnel.ModeDestination, newDst)
	if err != nil {
		t.Fatalf("the new destination token: %v", err)
	}
	defer ds2.Close()
	s.CloseTunnel(id)
	select {
	case <-ss.Done():
	case <-ctx.Done():
		t.Fatal("the source session did not end when the tunnel closed")
	}
}
