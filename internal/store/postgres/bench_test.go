package postgres

import (
	"context"
	"fmt"
	"testing"

	"github.com/sectun/sectun/internal/store"
)

func benchStore(b *testing.B, n int) (*Store, [][]byte) {
	b.Helper()
	dsn, _ := freshSchema(b, testDSN(b))
	s := openStore(b, dsn)
	b.Cleanup(func() { s.Close() })
	hashes := make([][]byte, n)
	for i := range n {
		tun := tunnel(fmt.Sprintf("bench-%05d", i))
		if err := s.Create(context.Background(), tun); err != nil {
			b.Fatal(err)
		}
		hashes[i] = tun.Destination.TokenHash
	}
	return s, hashes
}

func BenchmarkFindByToken(b *testing.B) {
	s, hashes := benchStore(b, 1000)
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, _, err := s.FindByToken(ctx, hashes[i%len(hashes)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkUpdate(b *testing.B) {
	s, _ := benchStore(b, 1000)
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		id := fmt.Sprintf("bench-%05d", i%1000)
		if _, err := s.Update(ctx, id, func(t *store.Tunnel) error {
			t.Source.Connected = !t.Source.Connected
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
