// Command bench is sectun's end-to-end benchmark harness (issue 6, "The
// data path at the speed of the wire"). One command builds tunneld and
// localproxy, runs them as users run them (a tunneld, a destination and a
// source localproxy, each its own process) in front of the harness's own
// target server, and measures in the same run the same scenarios through a
// plain TCP relay chain with the same number of hops (3 relay processes,
// each an io.Copy in both directions: the bench binary re-executed with
// the hidden "relay" subcommand):
//
//   - bulk: one connection, N MiB up and N MiB down at the same time,
//     every byte checked against the expected stream (or by SHA-256 with
//     -verify sha256); MB/s per direction;
//   - rtt: 64-byte ping-pong, p50/p90/p99;
//   - fair: rtt on one connection while another connection of the same
//     tunnel, of the same service and of another service, carries data
//     both ways as fast as it can;
//   - conns: K connections opened at once, each doing 3 round trips;
//     success count and setup time (dial to first echo) against direct TCP;
//   - idle: RSS of tunneld per connected idle peer with T tunnels open (the
//     peers are tunnel library sessions in this process), and of each
//     localproxy per idle TCP connection;
//   - cpu: CPU seconds (utime+stime from /proc/PID/stat) per GiB moved
//     during the bulk runs, per process.
//
// Plain ws:// and TLS (tunneld's self-signed development CA, -c on both
// proxies) are measured separately; the relay baseline is plain TCP in
// both. TLS runs add two more rows per figure of the bulk and cpu
// scenarios: a TLS relay baseline (the same 3 hops, the links between
// them TLS, each hop terminating and re-encrypting as sectun's path does:
// the same cryptographic work), and the reference local proxy pair (AWS's
// C++ localproxy, SECTUN_REFERENCE_LOCALPROXY or ../shared/peers/localproxy,
// skipped where absent; its -c gets an openssl-rehashed CA directory)
// through the same tunneld on a tunnel of its own, each run interleaved
// with sectun's. The output is one table per transport with the ratio to the
// baseline and the targets; -json prints the same as JSON.
//
//	go run ./bench                      # all scenarios, plain and TLS
//	go run ./bench -scenarios bulk,cpu -size 1GiB -tls
//
// See docs/bench.md for every flag, what each figure means and measured
// results.
//
// # Concurrency and processes
//
// Scenarios run one after the other; within one, the harness uses as many
// goroutines as connections. Every child process is started with
// SIGKILL as its parent-death signal (Linux) and stopped with SIGTERM
// (SIGKILL after 10 s) when the run ends, on success or failure.
//
// # Errors
//
// A failed start of a process, a wrong hash or echo, or a timeout ends the
// run with an error that names the scenario and carries the last output
// lines of the processes involved. A connection that fails in the conns
// scenario is counted, not fatal: the count is a figure.
//
// The harness is Linux-only: it reads /proc for CPU time and RSS.
package main
