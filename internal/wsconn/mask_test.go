package wsconn

import (
	"bytes"
	"testing"
	"unsafe"
)

// maskRef is the definition (RFC 6455 section 5.3): byte i XOR key[i%4].
func maskRef(dst, src []byte, key [4]byte) {
	for i := range src {
		dst[i] = src[i] ^ key[i%4]
	}
}

func TestMaskCopy(t *testing.T) {
	key := [4]byte{0x12, 0x34, 0x56, 0x78}
	for _, n := range []int{0, 1, 3, 4, 7, 8, 9, 31, 32, 33, 63, 64, 65, 100, 1000, 131076} {
		for _, off := range []int{0, 1, 3} { // unaligned source and destination
			src := make([]byte, n+off)[off:]
			for i := range src {
				src[i] = byte(i*31 + 7)
			}
			want := make([]byte, n)
			maskRef(want, src, key)
			buf := make([]byte, n+5+off)
			dst := buf[off:]
			maskCopy(dst, src, key)
			if !bytes.Equal(dst[:n], want) {
				t.Fatalf("n=%d off=%d: wrong mask", n, off)
			}
			if !bytes.Equal(dst[n:], make([]byte, 5)) || !bytes.Equal(buf[:off], make([]byte, off)) {
				t.Fatalf("n=%d off=%d: wrote outside dst[:n]", n, off)
			}
		}
	}
}

func FuzzMaskCopy(f *testing.F) {
	f.Add([]byte("hello, world: a masked frame payload"), uint32(0x12345678), uint8(0))
	f.Add(make([]byte, 100), uint32(0xffffffff), uint8(3))
	f.Fuzz(func(t *testing.T, src []byte, k uint32, off uint8) {
		key := [4]byte{byte(k), byte(k >> 8), byte(k >> 16), byte(k >> 24)}
		o := int(off % 8)
		want := make([]byte, len(src))
		maskRef(want, src, key)
		buf := make([]byte, o+len(src)+8)
		maskCopy(buf[o:], src, key)
		if !bytes.Equal(buf[o:o+len(src)], want) {
			t.Fatalf("%d bytes at offset %d: wrong mask", len(src), o)
		}
		if !bytes.Equal(buf[:o], make([]byte, o)) || !bytes.Equal(buf[o+len(src):], make([]byte, 8)) {
			t.Fatal("wrote outside dst")
		}
	})
}

// gorillaMask is gorilla's maskBytes (mask.go, v1.5.3): the server-side
// unmask and, after a copy into the write buffer, the client-side mask.
func gorillaMask(key [4]byte, pos int, b []byte) int {
	const wordSize = int(unsafe.Sizeof(uintptr(0)))
	if len(b) < 2*wordSize {
		for i := range b {
			b[i] ^= key[pos&3]
			pos++
		}
		return pos & 3
	}
	if n := int(uintptr(unsafe.Pointer(&b[0]))) % wordSize; n != 0 {
		n = wordSize - n
		for i := range b[:n] {
			b[i] ^= key[pos&3]
			pos++
		}
		b = b[n:]
	}
	var k [wordSize]byte
	for i := range k {
		k[i] = key[(pos+i)&3]
	}
	kw := *(*uintptr)(unsafe.Pointer(&k))
	n := (len(b) / wordSize) * wordSize
	for i := 0; i < n; i += wordSize {
		*(*uintptr)(unsafe.Add(unsafe.Pointer(&b[0]), i)) ^= kw
	}
	b = b[n:]
	for i := range b {
		b[i] ^= key[pos&3]
		pos++
	}
	return pos & 3
}

// BenchmarkMaskCopy compares the fused copy+mask with what gorilla does
// for a client message: a copy into its write buffer, then maskBytes.
func BenchmarkMaskCopy(b *testing.B) {
	for _, size := range []int{1 << 10, 16 << 10, 131076} {
		src := make([]byte, size)
		dst := make([]byte, len(src))
		key := [4]byte{1, 2, 3, 4}
		b.Run("fused/"+itoa(size), func(b *testing.B) {
			b.SetBytes(int64(len(src)))
			b.ReportAllocs()
			for b.Loop() {
				maskCopy(dst, src, key)
			}
		})
		b.Run("gorilla/"+itoa(size), func(b *testing.B) {
			b.SetBytes(int64(len(src)))
			b.ReportAllocs()
			for b.Loop() {
				copy(dst, src)
				gorillaMask(key, 0, dst)
			}
		})
	}
}

func itoa(n int) string {
	if n%1024 == 0 {
		return string(bytes.TrimSpace([]byte(fmtInt(n>>10) + "KiB")))
	}
	return fmtInt(n)
}

func fmtInt(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}
