//go:build !linux

package tunnel

import "net"

// limitUnsent is a no-op where TCP_NOTSENT_LOWAT is not wired up.
func limitUnsent(net.Conn, int) {}
