package ratelimit

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// clock is a settable time source.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newLimiter(t testing.TB, cfg Config) (*Limiter, *clock) {
	t.Helper()
	c := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	if cfg.Now == nil {
		cfg.Now = c.Now
	}
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l, c
}

func TestKey(t *testing.T) {
	tests := []struct {
		addr, key string
		loopback  bool
	}{
		{"192.0.2.1:443", "192.0.2.1", false},
		{"192.0.2.1", "192.0.2.1", false},
		{"127.0.0.1:5555", "127.0.0.1", true},
		{"127.0.0.2:1", "127.0.0.2", true},
		{"[::1]:80", "::1", true},
		{"[2001:db8:1:2:3:4:5:6]:80", "2001:db8:1:2::/64", false},
		{"[2001:db8:1:2:ffff::1]:9", "2001:db8:1:2::/64", false},
		{"[fe80::1%eth0]:22", "fe80::/64", false},
		{"[::ffff:192.0.2.7]:1", "192.0.2.7", false},
		{"not an address", "not an address", false},
		{"", "", false},
	}
	for _, tc := range tests {
		key, lo := Key(tc.addr)
		if key != tc.key || lo != tc.loopback {
			t.Errorf("Key(%q) = %q, %v; want %q, %v", tc.addr, key, lo, tc.key, tc.loopback)
		}
	}
}

func TestBurstThenCooldown(t *testing.T) {
	l, c := newLimiter(t, Config{PerMinute: 10, Burst: 5, Cooldown: 30 * time.Second})
	const a, b = "192.0.2.1:1000", "192.0.2.2:1000"
	for i := range 5 {
		if ok, _ := l.Allow(a); !ok {
			t.Fatalf("refused before failure %d", i+1)
		}
		if blocked := l.Fail(a); blocked != (i == 4) {
			t.Fatalf("failure %d: blocked = %v", i+1, blocked)
		}
	}
	ok, wait := l.Allow("192.0.2.1:2000") // another port, same address
	if ok || wait != 30*time.Second {
		t.Fatalf("after the burst: ok=%v wait=%v, want refused for 30s", ok, wait)
	}
	if ok, _ := l.Allow(b); !ok {
		t.Fatal("another address refused")
	}
	c.advance(29 * time.Second)
	if ok, wait := l.Allow(a); ok || wait != time.Second {
		t.Fatalf("1 s before the end: ok=%v wait=%v", ok, wait)
	}
	c.advance(time.Second)
	if ok, _ := l.Allow(a); !ok {
		t.Fatal("still refused after the cool-down")
	}
	// 30 s refilled 5 tokens: five more failures, then blocked again.
	for i := range 5 {
		if l.Fail(a) != (i == 4) {
			t.Fatalf("second round, failure %d", i+1)
		}
	}
	if ok, _ := l.Allow(a); ok {
		t.Fatal("not blocked again")
	}
	if s := l.Stats(); s.Blocks != 2 || s.Refused != 3 || s.Keys != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestSteadyRateNeverBlocks(t *testing.T) {
	l, c := newLimiter(t, Config{PerMinute: 10, Burst: 2})
	for i := range 100 {
		if l.Fail("192.0.2.1:1") {
			t.Fatalf("blocked at failure %d at 10/min", i+1)
		}
		c.advance(6 * time.Second)
	}
}

func TestDefaultsAndDisabled(t *testing.T) {
	l, _ := newLimiter(t, Config{})
	if l.cfg.Burst != 20 || l.cfg.PerMinute != 10 || l.cfg.Cooldown != time.Minute || l.cfg.MaxKeys != 10000 {
		t.Fatalf("defaults %+v", l.cfg)
	}
	n := 0
	for !l.Fail("127.0.0.1:1") { // loopback is limited by default
		n++
	}
	if n != 19 {
		t.Fatalf("blocked at failure %d, want 20", n+1)
	}
	off, err := New(Config{PerMinute: -1})
	if err != nil || off != nil {
		t.Fatalf("disabled: %v %v", off, err)
	}
	for range 100 {
		off.Fail("192.0.2.1:1")
	}
	if ok, _ := off.Allow("192.0.2.1:1"); !ok {
		t.Fatal("nil limiter refused")
	}
	if s := off.Stats(); s != (Stats{}) {
		t.Fatal(s)
	}
	for _, cfg := range []Config{{Burst: -1}, {Cooldown: -1}, {MaxKeys: -1}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}

func TestExemptLoopback(t *testing.T) {
	l, _ := newLimiter(t, Config{Burst: 1, ExemptLoopback: true})
	for _, a := range []string{"127.0.0.1:1", "127.0.0.2:1", "[::1]:1"} {
		for range 10 {
			l.Fail(a)
		}
		if ok, _ := l.Allow(a); !ok {
			t.Errorf("%s refused", a)
		}
	}
	l.Fail("192.0.2.1:1")
	if ok, _ := l.Allow("192.0.2.1:1"); ok {
		t.Error("non-loopback address not limited")
	}
}

func TestIPv6Prefix(t *testing.T) {
	l, _ := newLimiter(t, Config{Burst: 3})
	for i := range 3 {
		l.Fail(fmt.Sprintf("[2001:db8:0:1::%x]:1", i+1))
	}
	if ok, _ := l.Allow("[2001:db8:0:1:abcd::9]:1"); ok {
		t.Error("same /64 not blocked")
	}
	if ok, _ := l.Allow("[2001:db8:0:2::1]:1"); !ok {
		t.Error("other /64 blocked")
	}
}

// Memory stays bounded under a spray of addresses, and keys that no
// longer matter are pruned as time passes.
func TestBoundedKeys(t *testing.T) {
	l, c := newLimiter(t, Config{Burst: 2, MaxKeys: 100})
	for i := range 1000 {
		l.Fail(fmt.Sprintf("10.0.%d.%d:1", i/256, i%256))
		if n := l.Stats().Keys; n > 100 {
			t.Fatalf("%d keys", n)
		}
	}
	// The most recent ones are remembered.
	l.Fail("10.0.3.231:1") // the last one, again: now blocked
	if ok, _ := l.Allow("10.0.3.231:1"); ok {
		t.Fatal("recent key forgotten")
	}
	// After the buckets refilled (2 tokens at 10/min: 12 s), each
	// operation prunes the cold end.
	c.advance(time.Minute)
	for i := range 60 {
		l.Allow(fmt.Sprintf("192.0.2.%d:1", i))
	}
	if n := l.Stats().Keys; n > 1 {
		t.Fatalf("%d keys left after refill, want at most 1", n)
	}
}

func TestConcurrent(t *testing.T) {
	l, _ := newLimiter(t, Config{Now: time.Now})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				a := fmt.Sprintf("10.%d.0.%d:1", g, i%50)
				if ok, _ := l.Allow(a); ok {
					l.Fail(a)
				}
			}
		})
	}
	wg.Wait()
	if s := l.Stats(); s.Keys != 400 || s.Blocks != 400 {
		t.Fatalf("stats %+v", s)
	}
}

// The cool-down with the real clock, in a synctest bubble.
func TestCooldownSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, err := New(Config{Burst: 1, Cooldown: 5 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		l.Fail("192.0.2.1:1")
		time.Sleep(5*time.Minute - time.Nanosecond)
		if ok, _ := l.Allow("192.0.2.1:1"); ok {
			t.Fatal("allowed before the end of the cool-down")
		}
		time.Sleep(time.Nanosecond)
		if ok, _ := l.Allow("192.0.2.1:1"); !ok {
			t.Fatal("refused after the cool-down")
		}
	})
}

func TestRetryAfter(t *testing.T) {
	for d, want := range map[time.Duration]string{time.Second: "1", 1500 * time.Millisecond: "2", time.Minute: "60"} {
		if got := RetryAfter(d); got != want {
			t.Errorf("RetryAfter(%v) = %q, want %q", d, got, want)
		}
	}
}

// Memory per remembered key, for the MaxKeys documentation.
func TestMemoryPerKey(t *testing.T) {
	l, _ := newLimiter(t, Config{})
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range DefaultMaxKeys {
		l.Fail(fmt.Sprintf("10.%d.%d.%d:1", i>>16, (i>>8)&255, i&255))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (after.HeapAlloc - before.HeapAlloc) / DefaultMaxKeys
	t.Logf("%d keys: %d bytes each", l.Stats().Keys, per)
	if per > 400 {
		t.Errorf("%d bytes per key", per)
	}
	runtime.KeepAlive(l)
}

func FuzzKey(f *testing.F) {
	for _, s := range []string{"192.0.2.1:1", "[::1]:2", "[2001:db8::1%x]:3", "x", "", "[::ffff:1.2.3.4]:5", "1.2.3.4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		key, lo := Key(addr)
		if lo && !strings.Contains(key, "127.") && key != "::1" {
			t.Fatalf("Key(%q) = %q loopback", addr, key)
		}
		if k2, _ := Key(addr); k2 != key {
			t.Fatal("not deterministic")
		}
	})
}

func BenchmarkFailAllow(b *testing.B) {
	l, _ := newLimiter(b, Config{Now: time.Now})
	addrs := make([]string, 1024)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("10.0.%d.%d:1", i/256, i%256)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		a := addrs[i%len(addrs)]
		if ok, _ := l.Allow(a); ok {
			l.Fail(a)
		}
		i++
	}
}
