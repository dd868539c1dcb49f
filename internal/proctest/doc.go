// Package proctest starts a child program and watches its output: the one
// process harness of the end-to-end tests (test/e2e), the benchmark
// harness (bench) and the soak command (test/soak).
//
// Start runs a program with its stdout and stderr merged into one stream
// of lines. The last Config.Tail lines are kept (Output, Tail, Lines);
// every line can also go to a log writer and to a callback as it comes,
// which is how a long run counts events without keeping its output. Lines
// longer than MaxLine bytes are cut there. WaitLine reads the kept lines
// in order with a cursor: a line is taken by the first WaitLine that sees
// it, lines printed before the call count, and Drain skips what is there.
// Stop sends the stop signal (SIGTERM by default), then SIGKILL after a
// grace period.
//
// Memory is bounded: at most Tail lines of at most MaxLine bytes, whatever
// the process prints and for however long.
//
// It does not import "testing": its functions return errors, and test
// helpers wrap them into t.Fatal.
//
// Concurrency: every method may be called from any goroutine. The log
// writer and the OnLine callback are called from one goroutine at a time,
// in output order, while the process is blocked on its write: they must
// be quick.
//
// Errors: WaitLine and WaitExit return errors that wrap ErrExited (the
// process ended first), ErrTimeout (the timeout passed) or the ctx's
// error, and name the process and what was waited for.
package proctest
