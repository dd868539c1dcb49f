package wsconn

import (
	"bytes"
	"testing"
)

func TestMaskCopy(t *testing.T) {
	key := [4]byte{0x12, 0x34, 0x56, 0x78}
	for _, n := range []int{0, 1, 3, 4, 7, 8, 9, 31, 32, 33, 63, 64, 100, 1000, 131076} {
		src := make([]byte, n)
		for i := range src {
			src[i] = byte(i*31 + 7)
		}
		want := make([]byte, n)
		for i := range src {
			want[i] = src[i] ^ key[i%4]
		}
		dst := make([]byte, n+5)
		maskCopy(dst, src, key)
		if !bytes.Equal(dst[:n], want) {
			t.Fatalf("n=%d: wrong mask", n)
		}
		if !bytes.Equal(dst[n:], make([]byte, 5)) {
			t.Fatalf("n=%d: wrote past the end", n)
		}
	}
}

// BenchmarkMaskCopy compares the fused copy+mask with a copy followed by
// a masking pass (what gorilla does for a client message).
func BenchmarkMaskCopy(b *testing.B) {
	src := make([]byte, 131076)
	dst := make([]byte, len(src))
	key := [4]byte{1, 2, 3, 4}
	b.Run("fused", func(b *testing.B) {
		b.SetBytes(int64(len(src)))
		b.ReportAllocs()
		for b.Loop() {
			maskCopy(dst, src, key)
		}
	})
	b.Run("copy-then-mask", func(b *testing.B) {
		b.SetBytes(int64(len(src)))
		b.ReportAllocs()
		for b.Loop() {
			copy(dst, src)
			for i := range dst {
				dst[i] ^= key[i&3]
			}
		}
	})
}
