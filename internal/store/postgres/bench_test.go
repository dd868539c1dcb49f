package postgres

import (
	"testing"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/store/storetest"
)

// BenchmarkStore runs the shared suite, each benchmark in a fresh schema.
func BenchmarkStore(b *testing.B) {
	dsn := testDSN(b)
	storetest.Bench(b, func(b *testing.B) store.Store {
		d, _ := freshSchema(b, dsn)
		return openStore(b, d)
	})
}
