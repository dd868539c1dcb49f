package relaytest

import (
	"context"
	"fmt"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/server/relay"
	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/token"
)

// Timeout bounds the relay's Shutdown when a test ends.
const Timeout = 20 * time.Second

// end is one access token's state.
type end struct {
	tunnelID    string
	mode        store.Mode
	services    []string
	clientToken string // bound client token; "" until one is used
	consumed    bool   // used without a client token
	revoked     bool   // rotated away
}

// Authz is an in-memory relay.Authorizer with tunneld's token rules (see
// the package comment). The zero value is not usable: use NewAuthz.
type Authz struct {
	mu     sync.Mutex
	ends   map[string]*end // access token -> state
	closed map[string]bool // tunnel ID -> closed
	n      int
}

// NewAuthz returns an Authz without tunnels.
func NewAuthz() *Authz {
	return &Authz{ends: map[string]*end{}, closed: map[string]bool{}}
}

// Open adds a tunnel with services; it returns the tunnel's ID
// ("tunnel1", "tunnel2", ...) and fresh source and destination tokens.
func (a *Authz) Open(services ...string) (id, src, dst string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.n++
	id = fmt.Sprintf("tunnel%d", a.n)
	src, _ = token.New()
	dst, _ = token.New()
	a.ends[src] = &end{tunnelID: id, mode: store.ModeSource, services: services}
	a.ends[dst] = &end{tunnelID: id, mode: store.ModeDestination, services: services}
	return id, src, dst
}

// rotate revokes the tunnel's destination tokens and returns a new one.
func (a *Authz) rotate(id string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var services []string
	for _, e := range a.ends {
		if e.tunnelID == id && e.mode == store.ModeDestination && !e.revoked {
			e.revoked = true
			services = e.services
		}
	}
	dst, _ := token.New()
	a.ends[dst] = &end{tunnelID: id, mode: store.ModeDestination, services: services}
	return dst
}

// close refuses every token of the tunnel from now on.
func (a *Authz) close(id string) {
	a.mu.Lock()
	a.closed[id] = true
	a.mu.Unlock()
}

// Authorize implements relay.Authorizer.
func (a *Authz) Authorize(_ context.Context, req relay.HandshakeRequest) (relay.Grant, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.ends[req.AccessToken]
	switch {
	case e == nil:
		return relay.Grant{}, fmt.Errorf("%w: invalid access token", relay.ErrUnauthorized)
	case e.mode != req.Mode:
		return relay.Grant{}, fmt.Errorf("%w: this access token is for local-proxy-mode=%s", relay.ErrUnauthorized, e.mode)
	case e.revoked:
		return relay.Grant{}, fmt.Errorf("%w: access token was rotated", relay.ErrUnauthorized)
	case a.closed[e.tunnelID]:
		return relay.Grant{}, fmt.Errorf("%w: tunnel is closed", relay.ErrUnauthorized)
	case e.consumed:
		return relay.Grant{}, fmt.Errorf("%w: access token already used", relay.ErrUnauthorized)
	case req.ClientToken == "" && e.clientToken != "":
		return relay.Grant{}, fmt.Errorf("%w: access token is bound to a client token", relay.ErrUnauthorized)
	case req.ClientToken == "":
		e.consumed = true
	case e.clientToken == "":
		e.clientToken = req.ClientToken
	case e.clientToken != req.ClientToken:
		return relay.Grant{}, fmt.Errorf("%w: access token already used with a different client token", relay.ErrUnauthorized)
	}
	return relay.Grant{TunnelID: e.tunnelID, Services: e.services}, nil
}

// PeerChanged implements relay.Authorizer; it records nothing.
func (a *Authz) PeerChanged(context.Context, string, store.Mode, bool) {}

// Service is the real relay behind an httptest server on 127.0.0.1, with
// an Authz (embedded: Open adds tunnels).
type Service struct {
	*Authz
	// Relay is the running relay.
	Relay *relay.Relay
	// URL is the endpoint for tunnel.Config.Endpoint: ws://127.0.0.1:port.
	URL string
	// Addr is the server's 127.0.0.1:port.
	Addr string
}

// NewService starts a relay with cfg (its Authorizer is replaced by a new
// Authz) behind an httptest server. t.Cleanup shuts the relay down and
// fails the test if that takes longer than Timeout.
func NewService(t testing.TB, cfg relay.Config) *Service {
	t.Helper()
	a := NewAuthz()
	cfg.Authorizer = a
	r, err := relay.New(cfg)
	if err != nil {
		t.Fatalf("relaytest: %v", err)
	}
	srv := httptest.NewServer(r)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), Timeout)
		defer cancel()
		if err := r.Shutdown(ctx); err != nil {
			t.Errorf("relaytest: relay Shutdown: %v", err)
		}
		srv.Close()
	})
	addr := srv.Listener.Addr().String()
	return &Service{Authz: a, Relay: r, URL: "ws://" + addr, Addr: addr}
}

// Rotate revokes the tunnel's destination token, disconnects its
// destination and returns a new destination token, as tunneld's
// RotateTunnelAccessToken does.
func (s *Service) Rotate(id string) string {
	dst := s.rotate(id)
	s.Relay.DisconnectPeer(id, store.ModeDestination, "access token rotated")
	return dst
}

// CloseTunnel closes the tunnel: its tokens are refused from now on and
// the relay ends its peers' connections.
func (s *Service) CloseTunnel(id string) {
	s.close(id)
	s.Relay.CloseTunnel(id, "tunnel closed")
}
