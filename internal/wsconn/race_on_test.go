//go:build race

package wsconn

// raceEnabled: the race detector makes sync.Pool drop entries at random,
// so allocation counts are meaningless.
const raceEnabled = true
