package localproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/sectun/sectun/internal/localproxy/config"
	"github.com/sectun/sectun/internal/localproxy/metrics"
	"github.com/sectun/sectun/internal/proxy"
	"github.com/sectun/sectun/internal/token"
	"github.com/sectun/sectun/tunnel"
)

// closeTimeout bounds the closing of connections and of the session when
// the process stops.
const closeTimeout = 5 * time.Second

// TunnelConfig translates a local proxy configuration into the tunnel
// library's: mode, tokens, endpoint, TLS (-c, -k), web proxy, peer version
// (-y, source mode only), keepalive, reconnect delay and attempts, the
// connection limit and the largest DATA payload from the settings. It fails if the CA path holds no
// certificate.
func TunnelConfig(cfg *config.Config, log *slog.Logger) (tunnel.Config, error) {
	s := &cfg.Settings
	tc := tunnel.Config{
		Mode:              cfg.Mode,
		AccessToken:       cfg.AccessToken,
		ClientToken:       cfg.ClientToken,
		Endpoint:          cfg.URL(),
		KeepaliveInterval: s.PingPeriod,
		ReconnectMin:      s.WebSocketRetryDelay,
		ReconnectMax:      s.WebSocketRetryDelay,
		MaxConns:          s.MaxActiveConnections,
		MaxDataSize:       s.MaxPayloadSize,
		DisableReconnect:  !s.ReconnectOnDataError,
		Logger:            log,
	}
	if tc.ClientToken == "" && !cfg.SingleUseToken {
		tc.ClientToken = DerivedClientToken(cfg.AccessToken)
	}
	if cfg.Mode == config.ModeSource {
		switch cfg.DestinationClientType {
		case "V1":
			tc.PeerVersion = 1
		case "V2":
			tc.PeerVersion = 2
		}
	}
	if n := s.WebSocketConnectRetryCount; n >= 0 {
		// The reference's count is of retries after the first attempt.
		tc.MaxAttempts = n + 1
	}
	if p := s.Subprotocol; p != "" && p != config.DefaultSettings().Subprotocol {
		// A user's choice is honored alone, as the reference does; the
		// default offers every version so that older services work too.
		tc.Subprotocols = []string{p}
	}
	// The proxy comes from the configuration only (https_proxy, then
	// HTTPS_PROXY; NO_PROXY does not apply, as in the reference): never
	// let the library read the environment on its own.
	webProxy := cfg.Proxy
	tc.Proxy = func(*url.URL) (*url.URL, error) { return webProxy, nil }
	tlsCfg, err := tunnel.TLSConfig(cfg.CAPath, cfg.NoSSLHostVerify)
	if err != nil {
		return tunnel.Config{}, fmt.Errorf("-c/--capath: %w", err)
	}
	tc.TLS = tlsCfg
	return tc, nil
}

// Run runs a local proxy until ctx is canceled (SIGINT, SIGTERM: it then
// returns nil) or the tunnel ends: it connects to the service, matches the
// configured mappings against the tunnel's service IDs, then listens
// (source) or dials the local services (destination). It returns the
// session's error when the session ended (see ExitCode: a tunnel closed by
// the service and a refused access token mean exit 0, as with the
// reference), the error of Resolve for mappings that do not fit the tunnel,
// and an error wrapping proxy.ErrListen when a listener cannot be opened.
// log may be nil.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tc, err := TunnelConfig(cfg, log) // the session adds the mode itself
	log = log.With("mode", cfg.Mode.String())
	for _, w := range cfg.Warnings {
		log.Warn(w)
	}
	if err != nil {
		return err
	}
	tc.OnEvent = eventLogger(log)
	var active atomic.Pointer[func() int] // the Source's or Destination's Active, once started
	if cfg.MetricsListen != "" {
		ln, err := metrics.Listen(cfg.MetricsListen, cfg.MetricsAllowRemote)
		if err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		reg := metrics.New()
		reg.AddGauge("sectun_tcp_connections", "Open local TCP connections carried by the tunnel.", func() float64 {
			if f := active.Load(); f != nil {
				return float64((*f)())
			}
			return 0
		})
		logEvent := tc.OnEvent
		tc.OnEvent = func(ev tunnel.Event) {
			reg.Observe("", ev)
			logEvent(ev)
		}
		// Served from before the first connection, so that a scrape can
		// tell "still connecting" (sectun_tunnel_connected 0).
		defer metrics.Serve(ln, reg, log).Close()
	}
	if cfg.Mode == config.ModeDestination && cfg.DestinationClientType != "" {
		log.Debug("-y is for source mode: a destination answers in the format the source uses")
	}
	log.Info("Starting proxy in "+cfg.Mode.String()+" mode", "endpoint", cfg.URL(), "token_id", token.Short(cfg.AccessToken))
	switch {
	case cfg.ClientToken == "" && cfg.SingleUseToken:
		log.Info("no client token (-i) and --single-use-token: reconnects use one generated for this process, so a restarted localproxy needs a new (rotated) access token")
	case cfg.ClientToken == "":
		log.Info("no client token (-i): using one derived from the access token and this machine, so that a restart here reconnects with the same access token (--single-use-token: a random one)")
	}
	// What can be checked here is checked before the handshake, which
	// uses up the access token: the source's listen ports.
	held, err := bindSourcePorts(ctx, cfg, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer func() {
		for _, ln := range held {
			ln.Close() // those NewSource did not take
		}
	}()
	sess, err := tunnel.Connect(ctx, tc)
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopped while connecting", "err", err)
			return nil
		}
		return err
	}
	defer closeWithin(log, "session", sess)

	services := sess.Services()
	mappings, err := cfg.Resolve(services)
	if err != nil {
		return fmt.Errorf("%w; %s", err, restartHint(cfg))
	}
	log.Info("Use port mapping: " + config.FormatMappings(mappings))

	var (
		done   <-chan struct{}
		failed func() error
	)
	if cfg.Mode == config.ModeSource {
		svcs := make([]proxy.Service, len(mappings))
		for i, m := range mappings {
			svcs[i] = proxy.Service{ServiceID: m.ServiceID, Network: "tcp", Address: cfg.ListenAddress(m)}
			if ln := held[m.Port]; ln != nil && m.Port != 0 {
				svcs[i].Listener = ln
				delete(held, m.Port)
			}
		}
		src, err := proxy.NewSource(ctx, sess, proxy.SourceConfig{
			Services:         svcs,
			MaxConns:         cfg.Settings.MaxActiveConnections,
			ListenRetries:    cfg.Settings.TCPConnectionRetryCount,
			ListenRetryDelay: cfg.Settings.TCPConnectionRetryDelay,
			BufferSize:       copyBuffer(cfg),
			Logger:           log,
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		defer closeWithin(log, "listeners", src)
		f := src.Active
		active.Store(&f)
		done, failed = src.Done(), src.Err
	} else {
		svcs := make([]proxy.Service, len(mappings))
		for i, m := range mappings {
			svcs[i] = proxy.Service{ServiceID: m.ServiceID, Network: m.Network(), Address: m.Address()}
		}
		dst, err := proxy.NewDestination(sess, proxy.DestinationConfig{
			Services:       svcs,
			BindAddress:    cfg.BindAddress,
			DialRetries:    cfg.Settings.TCPConnectionRetryCount,
			DialRetryDelay: cfg.Settings.TCPConnectionRetryDelay,
			BufferSize:     copyBuffer(cfg),
			Logger:         log,
		})
		if err != nil {
			return err
		}
		defer closeWithin(log, "connections", dst)
		f := dst.Active
		active.Store(&f)
		done, failed = dst.Done(), dst.Err
	}

	select {
	case <-ctx.Done():
		log.Info("stopping: " + context.Cause(ctx).Error())
		return nil
	case <-sess.Done():
		return sess.Err()
	case <-done:
		if err := sess.Err(); err != nil {
			return err // the Destination ended because the session did
		}
		return failed()
	}
}

// bindSourcePorts listens on the ports of a source's -s mappings before
// the handshake, so that a port in use fails before the access token is
// used. It returns the listeners by port (none in destination mode, for
// port 0 and for --config-dir mappings, which depend on the tunnel's
// services).
func bindSourcePorts(ctx context.Context, cfg *config.Config, log *slog.Logger) (map[int]net.Listener, error) {
	held := map[int]net.Listener{}
	if cfg.Mode != config.ModeSource {
		return held, nil
	}
	retries, delay := cfg.Settings.TCPConnectionRetryCount, cfg.Settings.TCPConnectionRetryDelay
	var lc net.ListenConfig
	for _, m := range cfg.Mappings {
		if m.Port == 0 || held[m.Port] != nil {
			continue
		}
		addr := cfg.ListenAddress(m)
		for attempt := 0; ; attempt++ {
			ln, err := lc.Listen(ctx, "tcp", addr)
			if err == nil {
				held[m.Port] = ln
				break
			}
			if ctx.Err() != nil || retries >= 0 && attempt >= retries {
				for _, l := range held {
					l.Close()
				}
				return nil, fmt.Errorf("%w for %s on %s: %w (checked before connecting, so the access token is not used: pick another -s port or stop what listens there)", proxy.ErrListen, m, addr, err)
			}
			log.Warn("cannot listen; retrying", "addr", addr, "err", err, "attempt", attempt+1, "delay", delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
	}
	return held, nil
}

// restartHint says how to try again after a mistake found once the
// access token was used.
func restartHint(cfg *config.Config) string {
	switch {
	case cfg.ClientToken != "":
		return "fix it and start again with the same access token and -i: it reconnects"
	case cfg.SingleUseToken:
		return "fix it and start again with a new access token (aws iotsecuretunneling rotate-tunnel-access-token), as --single-use-token used this one up"
	}
	return "fix it and start again on this machine with the same access token: it reconnects (the client token is derived from it and this machine)"
}

// copyBuffer sizes the copy buffers from tcp.read_buffer_size, at most 32
// KiB: larger buffers measured no faster (BenchmarkTransfer in package
// proxy) and cost memory per connection.
func copyBuffer(cfg *config.Config) int {
	return min(cfg.Settings.TCPReadBufferSize, 32<<10)
}

// closeWithin closes c, logging if that takes longer than closeTimeout
// (it still waits: Close waits for goroutines that own sockets).
func closeWithin(log *slog.Logger, what string, c interface{ Close() error }) {
	done := make(chan struct{})
	go func() {
		c.Close()
		close(done)
	}()
	t := time.NewTimer(closeTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		log.Warn("closing the " + what + " takes long")
		<-done
	}
}

// eventLogger logs the session's events that the tunnel library does not
// log itself at a level the reference would.
func eventLogger(log *slog.Logger) func(tunnel.Event) {
	return func(ev tunnel.Event) {
		switch e := ev.(type) {
		case tunnel.Reconnecting:
			log.Info("reconnecting", "attempt", e.Attempt, "delay", e.Delay.Round(time.Millisecond), "err", e.Err)
		case tunnel.StreamStarted:
			log.Debug("stream started", "service_id", e.ServiceID, "stream_id", e.StreamID, "conn_id", e.ConnectionID, "remote", e.Remote)
		case tunnel.ConnectionStarted:
			log.Debug("connection started", "service_id", e.ServiceID, "stream_id", e.StreamID, "conn_id", e.ConnectionID, "remote", e.Remote)
		case tunnel.StreamReset:
			log.Debug("stream reset", "service_id", e.ServiceID, "stream_id", e.StreamID, "remote", e.Remote)
		case tunnel.PeerSilent:
			log.Info("if the destination runs an older local proxy, pass -y V2 or -y V1", "service_id", e.ServiceID)
		case tunnel.PeerVersionDetected:
			log.Info(fmt.Sprintf("pass -y V%d to skip the detection", e.Version), "service_id", e.ServiceID)
		case tunnel.ConnectionReset:
			log.Debug("connection reset", "service_id", e.ServiceID, "stream_id", e.StreamID, "conn_id", e.ConnectionID, "remote", e.Remote)
		}
	}
}

// ExitCode returns the process exit code for Run's result, following the
// reference local proxy: 0 for a normal stop, a tunnel closed by the
// service (close frame) and an HTTP 401 answer to the handshake (the
// reference exits 0 without retrying); 1 for everything else.
func ExitCode(err error) int {
	var he *tunnel.HandshakeError
	switch {
	case err == nil, errors.Is(err, tunnel.ErrTunnelClosed):
		return 0
	case errors.As(err, &he) && he.StatusCode == 401:
		return 0
	}
	return 1
}

// ExitTokenRefused is the exit code with --strict-exit when the service
// refuses the access token (any 4xx answer to the upgrade).
const ExitTokenRefused = 2

// StrictExitCode is ExitCode with --strict-exit: a refused access token
// exits ExitTokenRefused, so that scripts and systemd can tell it from a
// normal end; the rest as ExitCode.
func StrictExitCode(err error) int {
	if errors.Is(err, tunnel.ErrTokenRejected) {
		return ExitTokenRefused
	}
	return ExitCode(err)
}

// Hint says which localproxy option fixes err, "" if none: the tunnel
// library names its Config fields, the user knows the flags.
func Hint(err error) string {
	switch {
	case errors.Is(err, tunnel.ErrTLSRequired):
		return "give -e as HOST[:PORT] or wss://HOST:PORT (the service speaks TLS)"
	case errors.Is(err, tunnel.ErrTLSNotSpoken):
		return "give -e as ws://HOST:PORT (the service does not speak TLS)"
	case errors.Is(err, tunnel.ErrCertificateUntrusted):
		return "pass the service's CA with -c FILE or -c DIR, or -k to skip verification (testing only)"
	}
	return ""
}

// Exit logs the outcome of Run in one line and returns the exit code (see
// ExitCode; StrictExitCode with strict, for --strict-exit).
func Exit(log *slog.Logger, err error, strict bool) int {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	code := ExitCode(err)
	if strict {
		code = StrictExitCode(err)
	}
	if h := Hint(err); h != "" {
		err = fmt.Errorf("%w: %s", err, h)
	}
	var he *tunnel.HandshakeError
	switch {
	case err == nil:
		log.Info("stopped")
	case errors.Is(err, tunnel.ErrTunnelClosed):
		log.Info("the tunnel was closed by the service; exiting", "reason", err)
	case errors.As(err, &he) && he.StatusCode == 401:
		log.Log(context.Background(), slog.LevelError, "the service refused the access token; not retrying: "+err.Error())
	default:
		log.Log(context.Background(), LevelFatal, fmt.Sprint(err))
	}
	return code
}
