// Package storetest is the conformance suite every store.Store backend
// must pass. A backend's test calls Run with a function that opens a new,
// empty store; Run gives each subtest its own store and closes it. Bench,
// called the same way from a backend's benchmark, measures the hot paths
// (FindByToken, alone and in parallel, and Update) on a store of 1000
// tunnels, so backends are compared on the same workload. RunReopen, for
// backends whose data outlives a Store, checks reopening: data and token
// lookups kept, no DDL on a current schema, migrations applied once by
// racing Opens, a newer schema refused.
//
// What it pins down beyond the interface comments: times come back in UTC
// with at least millisecond precision (the zero time stays zero); empty
// slices and hashes come back nil; Update's returned tunnel equals what Get
// then returns; a token hash is unique across all tunnels and ends
// (ErrExists otherwise); tunnels with an empty ID, an unknown status or a
// token hash that is not 32 bytes are refused with ErrInvalidTunnel; List
// pages are keyset pages (a tunnel created between two calls never shows
// up twice or shifts later pages); a bad cursor fails with
// ErrInvalidCursor.
//
// Concurrency: subtests run sequentially; some start goroutines against one
// store and wait for all of them.
package storetest
