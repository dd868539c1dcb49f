package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sectun/sectun/internal/store"
)

// healthProbeInterval is how long a /healthz probe of the store is reused.
const healthProbeInterval = 5 * time.Second

// storeHealth is what /healthz says of the store: damage any call met
// (sticky: a damaged file does not heal), else the result of a probe made
// at most every healthProbeInterval.
type storeHealth struct {
	st      store.Store
	damaged func(error) bool // the backend's test for a damaged database; nil: none
	advice  string           // what to do about damage
	log     *slog.Logger
	now     func() time.Time

	mu     sync.Mutex
	damage error // first damage seen

	probeMu  sync.Mutex // one probe at a time
	probedAt time.Time  // guarded by mu
	probeErr error      // guarded by mu
}

// note records err if it shows damage, logging it (once) with what to do.
func (h *storeHealth) note(err error) {
	if err == nil || h.damaged == nil || !h.damaged(err) {
		return
	}
	h.mu.Lock()
	first := h.damage == nil
	if first {
		h.damage = err
	}
	h.mu.Unlock()
	if first {
		h.log.Error("storage is damaged: API calls and handshakes that reach the damaged part fail, and /healthz answers 503", "err", err, "fix", h.advice)
	}
}

// status returns why the store is unhealthy, or nil.
func (h *storeHealth) status(ctx context.Context) error {
	h.mu.Lock()
	damage, probed, perr := h.damage, h.probedAt, h.probeErr
	h.mu.Unlock()
	if damage != nil {
		return fmt.Errorf("database damaged: %v; %s", damage, h.advice)
	}
	if !probed.IsZero() && h.now().Sub(probed) < healthProbeInterval {
		return perr
	}
	h.probeMu.Lock()
	defer h.probeMu.Unlock()
	h.mu.Lock()
	if !h.probedAt.Equal(probed) { // another request probed meanwhile
		perr = h.probeErr
		h.mu.Unlock()
		return perr
	}
	h.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	// Two cheap reads: a count (served by an index) and a lookup that
	// walks the tunnels table from its root to a leaf.
	_, err := h.st.CountOpen(ctx)
	if err == nil {
		if _, err = h.st.Get(ctx, "healthz-probe"); errors.Is(err, store.ErrNotFound) {
			err = nil
		}
	}
	h.note(err)
	if err != nil {
		err = fmt.Errorf("storage unavailable: %w", err)
	}
	h.mu.Lock()
	h.probedAt, h.probeErr = h.now(), err
	damage = h.damage
	h.mu.Unlock()
	if damage != nil {
		return fmt.Errorf("database damaged: %v; %s", damage, h.advice)
	}
	return err
}

// healthStore is a store.Store that reports the errors of its calls to a
// storeHealth. Methods it does not list pass through unobserved.
type healthStore struct {
	store.Store
	h *storeHealth
}

func (s healthStore) Create(ctx context.Context, t *store.Tunnel) error {
	err := s.Store.Create(ctx, t)
	s.h.note(err)
	return err
}

func (s healthStore) Get(ctx context.Context, id string) (*store.Tunnel, error) {
	t, err := s.Store.Get(ctx, id)
	s.h.note(err)
	return t, err
}

func (s healthStore) FindByToken(ctx context.Context, tokenHash []byte) (*store.Tunnel, store.Mode, error) {
	t, m, err := s.Store.FindByToken(ctx, tokenHash)
	s.h.note(err)
	return t, m, err
}

func (s healthStore) List(ctx context.Context, opts store.ListOptions) ([]*store.Tunnel, string, error) {
	ts, next, err := s.Store.List(ctx, opts)
	s.h.note(err)
	return ts, next, err
}

func (s healthStore) Update(ctx context.Context, id string, fn func(*store.Tunnel) error) (*store.Tunnel, error) {
	t, err := s.Store.Update(ctx, id, fn)
	s.h.note(err)
	return t, err
}

func (s healthStore) Delete(ctx context.Context, id string) error {
	err := s.Store.Delete(ctx, id)
	s.h.note(err)
	return err
}

func (s healthStore) CountOpen(ctx context.Context) (int, error) {
	n, err := s.Store.CountOpen(ctx)
	s.h.note(err)
	return n, err
}

func (s healthStore) OpenExpiringBefore(ctx context.Context, t time.Time) ([]*store.Tunnel, error) {
	ts, err := s.Store.OpenExpiringBefore(ctx, t)
	s.h.note(err)
	return ts, err
}

func (s healthStore) DeleteClosedBefore(ctx context.Context, t time.Time) (int, error) {
	n, err := s.Store.DeleteClosedBefore(ctx, t)
	s.h.note(err)
	return n, err
}
