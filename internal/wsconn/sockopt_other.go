//go:build !linux

package wsconn

import (
	"errors"
	"net"
	"syscall"
	"time"
)

func tcpRTT(*net.TCPConn) (time.Duration, error) { return 0, errors.ErrUnsupported }

var dialControl func(network, address string, c syscall.RawConn) error // none
