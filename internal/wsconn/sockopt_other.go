//go:build !linux

package wsconn

import (
	"errors"
	"net"
	"syscall"
	"time"
)

// Elsewhere the kernel's defaults stay: the short-queue policy is Linux
// only.

func tcpMinRTT(*net.TCPConn) (time.Duration, error) { return 0, errors.ErrUnsupported }

func setNotsentLowat(*net.TCPConn, int) error { return errors.ErrUnsupported }

func segmentControl(int) func(network, address string, c syscall.RawConn) error { return nil }

func tcpMSS(*net.TCPConn) (int, error) { return 0, errors.ErrUnsupported }

func ioctlInq(uintptr) (int, error) { return 0, errors.ErrUnsupported }
