package sqlite

import (
	"path/filepath"
	"testing"

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
