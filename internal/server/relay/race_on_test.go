//go:build race

package relay

// raceEnabled: the race detector makes sync.Pool drop entries at random,
// so allocation counts are meaningless.
const raceEnabled = true
