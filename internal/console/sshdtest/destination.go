package sshdtest

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/sectun/sectun/tunnel"
)

// Destination is the device end of a tunnel, run with the tunnel library
// (what sectun's localproxy and tunnel-agent run): every connection the
// source opens is copied to target.
type Destination struct {
	Session *tunnel.Session
	wg      sync.WaitGroup
}

// StartDestination connects the destination with token and serves
// connections until the test ends. subprotocols, when set, are the only
// ones offered (e.g. V1 only, as the AWS IoT Device Client).
func StartDestination(t testing.TB, endpoint, token string, tlsCfg *tls.Config, target string, subprotocols ...string) *Destination {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := tunnel.Connect(ctx, tunnel.Config{
		Mode: tunnel.ModeDestination, AccessToken: token, Endpoint: endpoint, TLS: tlsCfg,
		Subprotocols: subprotocols, DisableReconnect: true,
	})
	if err != nil {
		t.Fatalf("destination: %v", err)
	}
	d := &Destination{Session: s}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for {
			c, err := s.Accept(context.Background())
			if err != nil {
				return
			}
			d.wg.Add(1)
			go func() {
				defer d.wg.Done()
				defer c.Close()
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{})
				go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); close(done) }()
				io.Copy(c, up)
				c.Close()
				<-done
			}()
		}
	}()
	t.Cleanup(func() { s.Close(); d.wg.Wait() })
	return d
}
