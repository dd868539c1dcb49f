package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"github.com/sectun/sectun/internal/proxy"
	"github.com/sectun/sectun/internal/token"
	"github.com/sectun/sectun/tunnel"
)

// sessionParams are one destination session's inputs.
type sessionParams struct {
	id     string // token.Short(token), for logs
	token  string
	region string
	// services maps service IDs to addresses; nil means "from the
	// tunnel's SERVICE_IDS" (RunToken, where no notification says).
	services map[string]string
	onStart  func(map[string]string)
}

// runSession connects a destination session and serves its connections
// until the tunnel closes, the session fails for good or ctx ends. started
// reports whether the first connection succeeded.
func runSession(ctx context.Context, cfg *Config, p sessionParams) (started bool, err error) {
	log := cfg.Logger.With("session", p.id)
	tcfg := tunnel.Config{
		Mode:        tunnel.ModeDestination,
		AccessToken: p.token,
		Endpoint:    cfg.TunnelEndpoint,
		Region:      p.region,
		TLS:         cfg.TunnelTLS,
		MaxConns:    cfg.MaxConnsPerTunnel,
		Logger:      log,
	}
	if f := cfg.OnTunnelEvent; f != nil {
		tcfg.OnEvent = func(ev tunnel.Event) { f(p.id, ev) }
	}
	if tcfg.Endpoint == "" && tcfg.Region == "" {
		tcfg.Region = cfg.TunnelRegion
	}
	cctx, cancel := context.WithTimeout(ctx, cfg.TunnelConnectTimeout)
	sess, err := tunnel.Connect(cctx, tcfg)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (while connecting: %w)", tunnel.ErrSessionClosed, err)
		}
		if h := TunnelHint(err); h != "" {
			err = fmt.Errorf("%w: %s", err, h)
		}
		log.Error("cannot start the tunnel session", "err", err)
		return false, err
	}
	defer sess.Close()

	mapping := maps.Clone(p.services) // the agent's table holds p.services
	announced := sess.Services()
	if mapping == nil {
		if mapping, err = cfg.mapping(announced); err != nil {
			log.Error("closing the session", "err", err)
			return true, err
		}
	} else {
		for _, s := range announced {
			if _, ok := mapping[s]; !ok {
				// SERVICE_IDS is authoritative; the notification was stale
				// or wrong. Map what we can, refuse what we cannot.
				addr, ok := cfg.serviceAddr(s)
				if !ok {
					err = fmt.Errorf("%w: the tunnel announces service %q, which has no local address", ErrUnmappedService, s)
					log.Error("closing the session", "err", err)
					return true, err
				}
				mapping[s] = addr
			}
		}
	}
	log.Info("tunnel session started", "services", describeMapping(mapping), "version", sess.Version())
	if p.onStart != nil {
		p.onStart(mapping)
	}

	svcs := make([]proxy.Service, 0, len(mapping))
	for _, id := range sortedKeys(mapping) {
		svcs = append(svcs, proxy.Service{ServiceID: id, Address: mapping[id]})
	}
	dest, err := proxy.NewDestination(sess, proxy.DestinationConfig{
		Services:       svcs,
		DialRetries:    max(cfg.DialRetries, 0),
		DialRetryDelay: cfg.DialRetryDelay,
		Logger:         log,
	})
	if err != nil {
		log.Error("closing the session", "err", err)
		return true, err
	}
	select {
	case <-sess.Done():
	case <-ctx.Done():
	}
	dest.Close()
	sess.Close()
	err = sess.Err()
	switch {
	case errors.Is(err, tunnel.ErrTunnelClosed):
		log.Info("tunnel closed: session ended", "err", err)
	case errors.Is(err, tunnel.ErrSessionClosed):
		log.Info("session stopped")
	default:
		log.Warn("session ended", "err", err)
	}
	return true, err
}

func describeMapping(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for _, k := range sortedKeys(m) {
		name := k
		if name == "" {
			name = "(no service ID)"
		}
		out = append(out, name+"="+m[k])
	}
	return out
}

// RunToken runs one destination session with an access token known in
// advance (no MQTT) until its tunnel closes or ctx ends, mapping the
// services the tunnel announces with cfg.Services (and DefaultServices).
// It needs cfg.TunnelEndpoint or cfg.TunnelRegion. It returns nil when the
// tunnel was closed by the service or ctx ended, and otherwise the error
// that ended the session (a *tunnel.HandshakeError for a refused token,
// ErrUnmappedService, ...). cfg.OnEvent receives SessionStarted and
// SessionEnded.
func RunToken(ctx context.Context, cfg Config, accessToken string) error {
	if err := cfg.normalize(); err != nil {
		return err
	}
	if accessToken == "" {
		return fmt.Errorf("%w: empty access token", ErrInvalidConfig)
	}
	if cfg.TunnelEndpoint == "" && cfg.TunnelRegion == "" {
		return fmt.Errorf("%w: set the tunnel endpoint (--tunnel-endpoint) or the region (--region)", ErrInvalidConfig)
	}
	id := token.Short(accessToken)
	emit := func(ev Event) {
		if cfg.OnEvent != nil {
			cfg.OnEvent(ev)
		}
	}
	started, err := runSession(ctx, &cfg, sessionParams{
		id: id, token: accessToken,
		onStart: func(m map[string]string) { emit(SessionStarted{Session: id, Services: m}) },
	})
	emit(SessionEnded{Session: id, Started: started, Err: err})
	if errors.Is(err, tunnel.ErrTunnelClosed) || errors.Is(err, tunnel.ErrSessionClosed) {
		return nil
	}
	return err
}

// TunnelHint says which tunnel-agent option fixes a tunnel connection
// error, "" if none: the tunnel library names its Config fields.
func TunnelHint(err error) string {
	switch {
	case errors.Is(err, tunnel.ErrTLSRequired):
		return "the tunneling service speaks TLS: give --tunnel-endpoint (tunnelEndpoint) as wss://HOST:PORT or HOST[:PORT]"
	case errors.Is(err, tunnel.ErrTLSNotSpoken):
		return "the tunneling service does not speak TLS: give --tunnel-endpoint (tunnelEndpoint) as ws://HOST:PORT"
	case errors.Is(err, tunnel.ErrCertificateUntrusted):
		return "pass the tunneling service's CA with --tunnel-ca FILE (tunnelCa), or --tunnel-insecure (testing only)"
	}
	return ""
}
