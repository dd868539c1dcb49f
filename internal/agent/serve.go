package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/sectun/sectun/tunnel"
)

// serve accepts the session's connections and connects each to the local
// address of its service until ctx ends, then closes them and returns.
//
// TODO(agent): replace with the destination adapter of internal/proxy once
// it lands (dial retries, buffer reuse, metrics).
func serve(ctx context.Context, sess *tunnel.Session, mapping map[string]string, log *slog.Logger) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := sess.Accept(ctx)
		if err != nil {
			return
		}
		addr, ok := mapping[c.ServiceID()]
		if !ok {
			log.Warn("connection for an unmapped service rejected", "service_id", c.ServiceID())
			c.Reject()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			pipe(ctx, c, addr, log)
		}()
	}
}

func pipe(ctx context.Context, c *tunnel.Conn, addr string, log *slog.Logger) {
	d := net.Dialer{Timeout: 10 * time.Second}
	lc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		log.Warn("cannot reach the local service", "service_id", c.ServiceID(), "addr", addr, "err", err)
		c.Reject()
		return
	}
	stop := context.AfterFunc(ctx, func() { lc.Close(); c.Close() })
	defer stop()
	done := make(chan struct{})
	go func() {
		io.Copy(lc, c)
		if tc, ok := lc.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		close(done)
	}()
	io.Copy(c, lc)
	c.Close()
	<-done
	lc.Close()
}
