// Package ratelimit refuses clients that keep failing: a per-address token
// bucket of failures (bad tokens, bad signatures, malformed requests). A
// client that used up its bucket is blocked for a cool-down, during which
// its requests are refused before any expensive or revealing work (a store
// lookup, a signature check). Successes cost nothing and never block.
//
// Keys are client addresses: an IPv4 address, or the /64 prefix of an IPv6
// address (one host usually owns a whole /64, so per-address keys would be
// trivial to escape). Memory is bounded: at most Config.MaxKeys keys are
// held, least recently failed first out, and keys whose bucket has
// refilled and that are not blocked are dropped as they age out of the
// LRU list, so there is no pruning goroutine.
//
// Concurrency: a Limiter is safe for concurrent use (one mutex, held for a
// map lookup and a few list moves). A nil *Limiter allows everything.
//
// Errors: New returns ErrConfig (wrapped) for an invalid Config.
package ratelimit
