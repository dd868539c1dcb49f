package cluster

import "syscall"

// tcpNotsentLowat is TCP_NOTSENT_LOWAT: it bounds the unsent bytes a
// link socket queues, so a bulk transfer does not add latency to a
// tunnel's small messages (the send buffer stays sized for throughput).
const tcpNotsentLowat = 25

func setLowat(fd uintptr) {
	syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpNotsentLowat, 256<<10)
}
