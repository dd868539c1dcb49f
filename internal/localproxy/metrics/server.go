package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// ErrNotLoopback: Listen was asked for an address that is not loopback
// without allowRemote.
var ErrNotLoopback = errors.New("metrics: not a loopback address")

// Path is where the metrics are served.
const Path = "/metrics"

// Listen binds addr (host:port; port 0 picks a free one) for Serve. Unless
// allowRemote is set, the host must be a loopback address or "localhost":
// the metrics hold no secret, but they tell service IDs and activity, and
// a device's proxy should not open a port on its network without being
// told to.
func Listen(addr string, allowRemote bool) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen address %q: %w (want host:port, e.g. 127.0.0.1:9090)", addr, err)
	}
	if !allowRemote && !isLoopback(host) {
		return nil, fmt.Errorf("%w: %q: use 127.0.0.1:PORT or [::1]:PORT, or allow other addresses explicitly", ErrNotLoopback, addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return ln, nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	return ip != nil && ip.IsLoopback()
}

// Server serves a Registry over HTTP on a listener.
type Server struct {
	addr      net.Addr
	srv       *http.Server
	done      chan struct{}
	closeOnce sync.Once
}

// Serve serves reg at Path on ln (GET only) until Close, logging the
// address in one line. log may be nil.
func Serve(ln net.Listener, reg *Registry, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+Path, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		reg.WriteText(w)
	})
	s := &Server{
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      10 * time.Second,
			IdleTimeout:       30 * time.Second,
			MaxHeaderBytes:    8 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		},
		addr: ln.Addr(),
		done: make(chan struct{}),
	}
	log.Info("metrics on http://" + ln.Addr().String() + Path)
	go func() {
		defer close(s.done)
		s.srv.Serve(ln)
	}()
	return s
}

// Addr returns the listener's address.
func (s *Server) Addr() net.Addr { return s.addr }

// Close stops the server, closes its connections and waits for it. It is
// idempotent.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			s.srv.Close()
		}
		<-s.done
	})
	return nil
}
