// Package metrics is the opt-in debug listener of localproxy and
// tunnel-agent: Prometheus text on http://ADDR/metrics with the goroutine
// and file-descriptor counts (go_goroutines, process_open_fds, the names
// tunneld's /metrics uses), whether the tunnel sessions are connected,
// their connects, reconnects and disconnects, and the open and started
// tunnel connections per service ID. The fault tests read go_goroutines
// to check that a process is back to its baseline after a fault.
//
// It is written by hand instead of with client_golang, so that the local
// proxy binary stays small and starts no goroutine unless asked.
//
// Listen refuses a non-loopback address unless allowRemote: the metrics
// hold no token or secret, but they reveal service IDs and traffic
// patterns, and a local proxy should open no network port by surprise.
//
// Concurrency: a Registry is safe for concurrent use (Observe from
// tunnel.Config.OnEvent, WriteText from the server). Server.Close is
// idempotent and waits for the serving goroutine.
//
// Errors: Listen returns ErrNotLoopback (wrapped) for a refused address,
// and the listen error otherwise.
package metrics
