package relay

import (
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/time/rate"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/wire"
)

// limiterBurst lets one full WebSocket message through at once.
const limiterBurst = wire.MaxWebSocketMessageSize

// tunnel is the live state of a tunnel with at least one peer (or whose
// last disconnection is still being reported).
type tunnel struct {
	id       string
	services atomic.Pointer[[]string]
	// peers holds the current peer of each end (index modeIndex). Written
	// under mu (and the relay's mu); read without locks on the data path.
	peers [2]atomic.Pointer[peer]
	// limiters caps each direction, indexed by the sender's end; nil when
	// unlimited.
	limiters [2]*rate.Limiter

	mu sync.Mutex
	// streams maps a service ID ("" for the anonymous one) to its active
	// stream ID, as started by STREAM_START and ended by STREAM_RESET.
	streams map[string]int32
	// anon mirrors streams[""] (0: none) for a lock-free check on DATA.
	anon atomic.Int32

	notifyMu sync.Mutex
	reported [2]bool // last connected state given to PeerChanged
}

// streamRef is an active stream.
type streamRef struct {
	service string
	id      int32
}

func modeIndex(m store.Mode) int {
	switch m {
	case store.ModeSource:
		return 0
	case store.ModeDestination:
		return 1
	}
	return -1
}

func (t *tunnel) setServices(s []string) {
	if cur := t.services.Load(); cur != nil && slices.Equal(*cur, s) {
		return
	}
	s = slices.Clone(s)
	t.services.Store(&s)
}

// hasService reports whether a frame may carry service ID s: with no
// services only "", else "" (a V1 peer) or one of them.
func (t *tunnel) hasService(s string) bool {
	if s == "" {
		return true
	}
	p := t.services.Load()
	return p != nil && slices.Contains(*p, s)
}

// takeStreams returns the active streams and forgets them. t.mu is held.
func (t *tunnel) takeStreams() []streamRef {
	if len(t.streams) == 0 {
		return nil
	}
	refs := make([]streamRef, 0, len(t.streams))
	for s, id := range t.streams {
		refs = append(refs, streamRef{s, id})
	}
	slices.SortFunc(refs, func(a, b streamRef) int {
		if a.service < b.service {
			return -1
		}
		if a.service > b.service {
			return 1
		}
		return 0
	})
	clear(t.streams)
	t.anon.Store(0)
	return refs
}

// anonConflict reports a frame that names service s for stream id while id
// is the anonymous service's active stream (and not s's): a stream started
// without a service ID cannot later carry one. t.mu is held.
func (t *tunnel) anonConflict(s string, id int32) bool {
	if s == "" {
		return false
	}
	a, ok := t.streams[""]
	if !ok || a != id {
		return false
	}
	return t.streams[s] != id
}
