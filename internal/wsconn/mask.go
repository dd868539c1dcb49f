package wsconn

import "encoding/binary"

// maskCopy copies src into dst (len(dst) >= len(src)) XORed with the
// WebSocket masking key, key[i%4] for byte i: the copy into the output
// buffer and the masking in one pass over the data.
func maskCopy(dst, src []byte, key [4]byte) {
	k32 := uint64(binary.LittleEndian.Uint32(key[:]))
	k := k32 | k32<<32
	n := len(src)
	dst = dst[:n]
	i := 0
	for ; n-i >= 32; i += 32 {
		s := src[i : i+32 : i+32]
		d := dst[i : i+32 : i+32]
		binary.LittleEndian.PutUint64(d[0:], binary.LittleEndian.Uint64(s[0:])^k)
		binary.LittleEndian.PutUint64(d[8:], binary.LittleEndian.Uint64(s[8:])^k)
		binary.LittleEndian.PutUint64(d[16:], binary.LittleEndian.Uint64(s[16:])^k)
		binary.LittleEndian.PutUint64(d[24:], binary.LittleEndian.Uint64(s[24:])^k)
	}
	for ; n-i >= 8; i += 8 {
		binary.LittleEndian.PutUint64(dst[i:i+8], binary.LittleEndian.Uint64(src[i:i+8])^k)
	}
	for ; i < n; i++ {
		dst[i] = src[i] ^ key[i&3]
	}
}
