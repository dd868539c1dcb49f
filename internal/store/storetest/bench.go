package storetest

import (
	"fmt"
	"testing"

	"github.com/sectun/sectun/internal/store"
)

// benchTunnels is how many tunnels each benchmark's store holds.
const benchTunnels = 1000

// Bench runs the benchmark suite of the store's hot paths (the relay's
// FindByToken on every connect, Update on every connect and disconnect)
// as sub-benchmarks. open must return a new, empty store each time it is
// called; it may register cleanups with b (they run after Bench has closed
// the store).
func Bench(b *testing.B, open func(b *testing.B) store.Store) {
	benches := []struct {
		name string
		fn   func(b *testing.B, s store.Store, hashes [][]byte)
	}{
		{"FindByToken", benchFindByToken},
		{"FindByTokenParallel", benchFindByTokenParallel},
		{"Update", benchUpdate},
	}
	for _, bb := range benches {
		b.Run(bb.name, func(b *testing.B) {
			s := open(b)
			b.Cleanup(func() {
				if err := s.Close(); err != nil {
					b.Errorf("Close: %v", err)
				}
			})
			hashes := make([][]byte, benchTunnels)
			for i := range hashes {
				tun := newTunnel(benchID(i), base)
				if err := s.Create(ctx, tun); err != nil {
					b.Fatal(err)
				}
				hashes[i] = tun.Destination.TokenHash
			}
			b.ReportAllocs()
			b.ResetTimer()
			bb.fn(b, s, hashes)
		})
	}
}

func benchID(i int) string { return fmt.Sprintf("bench-%05d", i%benchTunnels) }

func benchFindByToken(b *testing.B, s store.Store, hashes [][]byte) {
	i := 0
	for b.Loop() {
		if _, _, err := s.FindByToken(ctx, hashes[i%len(hashes)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func benchFindByTokenParallel(b *testing.B, s store.Store, hashes [][]byte) {
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, _, err := s.FindByToken(ctx, hashes[i%len(hashes)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

func benchUpdate(b *testing.B, s store.Store, _ [][]byte) {
	i := 0
	for b.Loop() {
		if _, err := s.Update(ctx, benchID(i), func(t *store.Tunnel) error {
			t.Source.Connected = !t.Source.Connected
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
