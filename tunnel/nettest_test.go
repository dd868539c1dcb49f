package tunnel

import (
	"context"
	"net"
	"testing"

	"golang.org/x/net/nettest"

	"github.com/sectun/sectun/tunnel/internal/fakeservice"
)

func TestNetConn(t *testing.T) {
	for _, v := range []int{3, 2} {
		t.Run(map[int]string{3: "V3", 2: "V2"}[v], func(t *testing.T) {
			_, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, func(s, d *Config) {
				s.PeerVersion = v
				// Small buffers make the write-timeout tests fill them quickly.
				s.SendBuffer, d.SendBuffer = 64<<10, 64<<10
				s.ReceiveBuffer, d.ReceiveBuffer = 64<<10, 64<<10
			})
			nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
				ctx := context.Background()
				a, err := src.Dial(ctx, "SSH1")
				if err != nil {
					return nil, nil, nil, err
				}
				b, err := dst.Accept(ctx)
				if err != nil {
					a.Close()
					return nil, nil, nil, err
				}
				return a, b, func() { a.Close(); b.Close() }, nil
			})
		})
	}
}
