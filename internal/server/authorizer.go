package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/sectun/sectun/internal/server/relay"
	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/token"
)

// storeAuthorizer checks handshakes against the store. The client-token rules
// live here because they must survive a restart: without a client token an
// access token is consumed by its first successful handshake; with one, the
// same pair may reconnect and any other client token is refused.
type storeAuthorizer struct {
	store  store.Store
	now    func() time.Time
	logger *slog.Logger
}

func (a *storeAuthorizer) Authorize(ctx context.Context, req relay.HandshakeRequest) (relay.Grant, error) {
	hash := token.Hash(req.AccessToken)
	t, mode, err := a.store.FindByToken(ctx, hash)
	if errors.Is(err, store.ErrNotFound) {
		return relay.Grant{}, fmt.Errorf("%w: invalid access token", relay.ErrUnauthorized)
	}
	if err != nil {
		return relay.Grant{}, err
	}
	if mode != req.Mode {
		return relay.Grant{}, fmt.Errorf("%w: this access token is for local-proxy-mode=%s, not %s", relay.ErrUnauthorized, mode, req.Mode)
	}
	now := a.now()
	t, err = a.store.Update(ctx, t.ID, func(t *store.Tunnel) error {
		p := t.Peer(mode)
		if !token.Equal(p.TokenHash, hash) {
			return fmt.Errorf("%w: access token was rotated", relay.ErrUnauthorized)
		}
		if t.Status != store.StatusOpen {
			return fmt.Errorf("%w: tunnel is closed", relay.ErrUnauthorized)
		}
		if !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt) {
			return fmt.Errorf("%w: tunnel lifetime has expired", relay.ErrUnauthorized)
		}
		switch {
		case p.Consumed:
			return fmt.Errorf("%w: access token already used without a client token: rotate the token (RotateTunnelAccessToken), and pass a client token to be able to reconnect", relay.ErrUnauthorized)
		case req.ClientToken == "" && p.ClientTokenHash != nil:
			return fmt.Errorf("%w: access token is bound to a client token: reconnect with the same client token", relay.ErrUnauthorized)
		case req.ClientToken == "":
			p.Consumed = true
		case p.ClientTokenHash == nil:
			p.ClientTokenHash = token.Hash(req.ClientToken)
		case !token.Equal(p.ClientTokenHash, token.Hash(req.ClientToken)):
			return fmt.Errorf("%w: access token already used with a different client token", relay.ErrUnauthorized)
		}
		return nil
	})
	if err != nil {
		return relay.Grant{}, err
	}
	return relay.Grant{TunnelID: t.ID, Services: t.Services}, nil
}

func (a *storeAuthorizer) PeerChanged(ctx context.Context, tunnelID string, mode store.Mode, connected bool) {
	_, err := a.store.Update(ctx, tunnelID, func(t *store.Tunnel) error {
		p := t.Peer(mode)
		p.Connected = connected
		p.UpdatedAt = a.now().UTC()
		t.UpdatedAt = p.UpdatedAt
		return nil
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		a.logger.Warn("recording connection state", "tunnel_id", tunnelID, "mode", mode, "err", err)
	}
}
