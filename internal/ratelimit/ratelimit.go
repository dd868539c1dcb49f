package ratelimit

import (
	"container/list"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// ErrConfig reports an invalid Config.
var ErrConfig = errors.New("ratelimit: invalid config")

// Defaults of Config.
const (
	DefaultPerMinute = 10
	DefaultCooldown  = time.Minute
	DefaultMaxKeys   = 10000
)

// Config configures a Limiter. The zero value means the defaults: 10
// failures a minute, bursts of 20, a one-minute cool-down, 10000 keys,
// loopback limited like any address.
type Config struct {
	// PerMinute is how many failures per minute a key may have in the
	// long run (the bucket's refill rate); default 10. Negative disables
	// the limiter: New returns nil, which allows everything.
	PerMinute float64
	// Burst is how many failures in a row a key may have (the bucket's
	// size) before it is blocked; default 2*PerMinute, at least 1.
	Burst int
	// Cooldown is how long a key stays blocked once its bucket is empty;
	// default 1 minute. Requests refused while blocked do not extend it.
	Cooldown time.Duration
	// MaxKeys caps the keys remembered; default 10000 (about 1.8 MB:
	// 183 bytes per key measured by TestMemoryPerKey).
	// Beyond it the least recently failed key is forgotten.
	MaxKeys int
	// ExemptLoopback never limits loopback addresses (127/8, ::1).
	ExemptLoopback bool
	// Now is the clock; default time.Now (tests inject their own).
	Now func() time.Time
}

// Limiter counts failures per client address. See the package doc.
type Limiter struct {
	cfg    Config
	rate   float64 // tokens per second
	burst  float64
	mu     sync.Mutex
	keys   map[string]*list.Element // of *entry
	lru    list.List                // front: most recently failed
	refuse atomic.Int64
	blocks atomic.Int64
}

type entry struct {
	key          string
	tokens       float64
	last         time.Time // when tokens was computed
	blockedUntil time.Time
}

// New returns a Limiter, or nil (allow everything) when cfg.PerMinute is
// negative.
func New(cfg Config) (*Limiter, error) {
	if cfg.PerMinute < 0 {
		return nil, nil
	}
	if cfg.PerMinute == 0 {
		cfg.PerMinute = DefaultPerMinute
	}
	if math.IsNaN(cfg.PerMinute) || math.IsInf(cfg.PerMinute, 0) {
		return nil, fmt.Errorf("%w: PerMinute %v", ErrConfig, cfg.PerMinute)
	}
	if cfg.Burst < 0 || cfg.Cooldown < 0 || cfg.MaxKeys < 0 {
		return nil, fmt.Errorf("%w: negative Burst, Cooldown or MaxKeys", ErrConfig)
	}
	if cfg.Burst == 0 {
		cfg.Burst = max(1, int(math.Ceil(2*cfg.PerMinute)))
	}
	if cfg.Cooldown == 0 {
		cfg.Cooldown = DefaultCooldown
	}
	if cfg.MaxKeys == 0 {
		cfg.MaxKeys = DefaultMaxKeys
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Limiter{
		cfg:   cfg,
		rate:  cfg.PerMinute / 60,
		burst: float64(cfg.Burst),
		keys:  make(map[string]*list.Element),
	}, nil
}

// Key returns the limiter key of a client address given as "ip:port" (as
// http.Request.RemoteAddr) or a bare IP: the IPv4 address, or the IPv6
// /64 prefix. An unparsable address is its own key. loopback reports
// whether the address is a loopback one.
func Key(addr string) (key string, loopback bool) {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host, false
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is4() || ip.IsLoopback() {
		return ip.String(), ip.IsLoopback()
	}
	p, _ := ip.Prefix(64)
	return p.String(), ip.IsLoopback()
}

// Allow reports whether a request from addr may be served. When it may
// not, wait is how long the key stays blocked (at least a second, for a
// Retry-After header).
func (l *Limiter) Allow(addr string) (ok bool, wait time.Duration) {
	if l == nil {
		return true, 0
	}
	key, lo := Key(addr)
	if lo && l.cfg.ExemptLoopback {
		return true, 0
	}
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.prune(now)
	el := l.keys[key]
	if el == nil {
		return true, 0
	}
	e := el.Value.(*entry)
	if !now.Before(e.blockedUntil) {
		return true, 0
	}
	l.refuse.Add(1)
	return false, max(time.Second, e.blockedUntil.Sub(now))
}

// Fail records a failure from addr. It returns true when this failure
// emptied the key's bucket and blocked it for Config.Cooldown.
func (l *Limiter) Fail(addr string) (blocked bool) {
	if l == nil {
		return false
	}
	key, lo := Key(addr)
	if lo && l.cfg.ExemptLoopback {
		return false
	}
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.prune(now)
	var e *entry
	if el := l.keys[key]; el != nil {
		e = el.Value.(*entry)
		l.lru.MoveToFront(el)
	} else {
		for l.lru.Len() >= l.cfg.MaxKeys {
			l.remove(l.lru.Back())
		}
		e = &entry{key: key, tokens: l.burst, last: now}
		l.keys[key] = l.lru.PushFront(e)
	}
	if now.Before(e.blockedUntil) {
		return false // a failure that slipped in while blocked
	}
	e.tokens = l.tokensAt(e, now) - 1
	e.last = now
	if e.tokens < 1 {
		e.tokens = max(e.tokens, 0)
		e.blockedUntil = now.Add(l.cfg.Cooldown)
		l.blocks.Add(1)
		return true
	}
	return false
}

func (l *Limiter) tokensAt(e *entry, now time.Time) float64 {
	el := now.Sub(e.last).Seconds()
	if el <= 0 {
		return e.tokens
	}
	return min(l.burst, e.tokens+el*l.rate)
}

// prune drops up to two keys at the cold end of the list that no longer
// matter: not blocked, bucket full again. Called on every operation, it
// keeps pace with insertions without a sweeping goroutine. l.mu is held.
func (l *Limiter) prune(now time.Time) {
	for range 2 {
		el := l.lru.Back()
		if el == nil {
			return
		}
		e := el.Value.(*entry)
		if now.Before(e.blockedUntil) || l.tokensAt(e, now) < l.burst {
			return
		}
		l.remove(el)
	}
}

func (l *Limiter) remove(el *list.Element) {
	delete(l.keys, el.Value.(*entry).key)
	l.lru.Remove(el)
}

// Cooldown returns how long a key stays blocked (0 for a nil Limiter).
func (l *Limiter) Cooldown() time.Duration {
	if l == nil {
		return 0
	}
	return l.cfg.Cooldown
}

// Stats is a snapshot of a Limiter's activity.
type Stats struct {
	// Keys is the number of addresses remembered.
	Keys int
	// Refused counts requests refused because their key was blocked.
	Refused int64
	// Blocks counts times a key was blocked.
	Blocks int64
}

// Stats returns current figures; a nil Limiter has none.
func (l *Limiter) Stats() Stats {
	if l == nil {
		return Stats{}
	}
	l.mu.Lock()
	n := l.lru.Len()
	l.mu.Unlock()
	return Stats{Keys: n, Refused: l.refuse.Load(), Blocks: l.blocks.Load()}
}

// RetryAfter formats wait for a Retry-After header: whole seconds, rounded
// up.
func RetryAfter(wait time.Duration) string {
	return fmt.Sprint(int64(math.Ceil(wait.Seconds())))
}
