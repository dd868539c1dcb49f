package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/sectun/sectun/internal/store"
)

// Run sweeps at once and then every SweepInterval until ctx is done, then
// returns nil. Sweep failures are logged and retried on the next tick.
func (s *Server) Run(ctx context.Context) error {
	tick := time.NewTicker(s.interval)
	defer tick.Stop()
	for {
		if err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
			s.log.LogAttrs(ctx, slog.LevelWarn, "sweep failed", slog.String("error", err.Error()))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// Sweep does one pass at the current time (Config.Now): it closes open
// tunnels whose lifetime has run out, disconnecting their peers, and
// deletes tunnels closed longer than Retention ago.
func (s *Server) Sweep(ctx context.Context) error {
	now := s.clock()
	var errs []error
	expired, err := s.store.OpenExpiringBefore(ctx, now.Add(time.Millisecond)) // ExpiresAt <= now
	if err != nil {
		errs = append(errs, fmt.Errorf("api: listing expired tunnels: %w", err))
	}
	for _, t := range expired {
		var closed bool
		_, err := s.store.Update(ctx, t.ID, func(t *store.Tunnel) error {
			closed = false
			if t.Status != store.StatusOpen || t.ExpiresAt.After(now) {
				return nil
			}
			closeInPlace(t, now)
			closed = true
			return nil
		})
		if errors.Is(err, store.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("api: closing expired tunnel %s: %w", t.ID, err))
			continue
		}
		if closed {
			s.log.LogAttrs(ctx, slog.LevelInfo, "tunnel closed", slog.String("tunnel_id", t.ID), slog.String("reason", "lifetime expired"))
			if s.peers != nil {
				s.peers.CloseTunnel(t.ID, "tunnel lifetime expired")
			}
		}
	}
	n, err := s.store.DeleteClosedBefore(ctx, now.Add(-s.retention))
	if err != nil {
		errs = append(errs, fmt.Errorf("api: deleting old closed tunnels: %w", err))
	}
	if n > 0 {
		s.log.LogAttrs(ctx, slog.LevelInfo, "closed tunnels deleted", slog.Int("count", n))
	}
	return errors.Join(errs...)
}
