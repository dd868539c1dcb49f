package sqlite

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/store/storetest"
)

// BenchmarkStore runs the shared suite on a file store (WAL, reader pool),
// as tunneld uses it.
func BenchmarkStore(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) store.Store {
		return openFile(b, filepath.Join(b.TempDir(), "tunneld.db"))
	})
}

// TestQuickCheckDuration measures QuickCheck on a database of
// $SECTUN_MEASURE_QUICKCHECK tunnels (skipped when unset), for the figure
// in docs/storage.md.
func TestQuickCheckDuration(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("SECTUN_MEASURE_QUICKCHECK"))
	if n <= 0 {
		t.Skip("set SECTUN_MEASURE_QUICKCHECK=100000 to measure PRAGMA quick_check on that many tunnels")
	}
	path := filepath.Join(t.TempDir(), "tunneld.db")
	s := openFile(t, path)
	for i := range n {
		tun, _, _ := tunnel(fmt.Sprintf("tunnel-%08d", i))
		if err := s.Create(context.Background(), tun); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	fi, _ := os.Stat(path)
	for range 3 {
		s, err := Open(context.Background(), path)
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		if err := s.QuickCheck(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Logf("%d tunnels, %d MB: quick_check %v", n, fi.Size()>>20, time.Since(t0).Round(time.Millisecond))
		s.Close()
	}
}
