// Command tunneld is a self-hosted, AWS-compatible secure tunneling service:
// the IoTSecuredTunneling management API and the /tunnel WebSocket relay.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/sectun/sectun/internal/cliconf"
	"github.com/sectun/sectun/internal/clidoc"
	"github.com/sectun/sectun/internal/notify/broker"
	"github.com/sectun/sectun/internal/ratelimit"
	"github.com/sectun/sectun/internal/server"
	"github.com/sectun/sectun/internal/tunnelsctl"
	"github.com/sectun/sectun/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, pflag.ErrHelp) {
		msg := err.Error()
		if !strings.HasPrefix(msg, "tunneld: ") {
			msg = "tunneld: " + msg
		}
		fmt.Fprintln(os.Stderr, msg)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "device":
			return device(args[1:], stdout, stderr)
		case "tunnels":
			return tunnelsctl.Run(ctx, args[1:], stdout, stderr)
		case "version":
			fmt.Fprintln(stdout, "tunneld", version.String())
			return nil
		}
	}
	var cfg server.Config
	fs := pflag.NewFlagSet("tunneld", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:8443", "address for the API and /tunnel (HTTPS unless --plaintext)")
	fs.StringVar(&cfg.DataDir, "data-dir", "tunneld-data", "directory for the database, generated TLS material and credentials")
	fs.StringVar(&cfg.TLSCertFile, "tls-cert", "", "TLS certificate file (PEM)")
	fs.StringVar(&cfg.TLSKeyFile, "tls-key", "", "TLS key file (PEM)")
	selfSigned := fs.Bool("tls-self-signed", false, "use a development CA and certificate made in <data-dir>/tls (the default when no --tls-cert is given)")
	fs.StringArrayVar(&cfg.TLSHosts, "tls-host", nil, "extra DNS name or IP for the self-signed certificate (repeatable)")
	fs.BoolVar(&cfg.Plaintext, "plaintext", false, "serve HTTP and ws:// without TLS (loopback only unless --allow-insecure)")
	fs.BoolVar(&cfg.NoAuth, "no-auth", false, "accept unsigned API requests (refused at startup on a non-loopback --listen unless --allow-insecure)")
	fs.BoolVar(&cfg.AllowInsecure, "allow-insecure", false, "permit --plaintext or --no-auth on a non-loopback address (anyone who reaches it can then open tunnels)")
	fs.StringArrayVar(&cfg.CredentialsFiles, "credentials-file", nil, "AWS shared-credentials file with access keys allowed to sign API requests (repeatable; default <data-dir>/aws-credentials, created at first start)")
	fs.StringVar(&cfg.Region, "region", "us-east-1", "region in tunnel ARNs and device notifications")
	fs.StringVar(&cfg.AccountID, "account-id", "123456789012", "account ID in tunnel ARNs")
	fs.IntVar(&cfg.MaxServicesPerTunnel, "max-services", 3, "services per tunnel (AWS: 3)")
	fs.IntVar(&cfg.MaxOpenTunnels, "max-open-tunnels", 0, "open tunnels at once (0 = unlimited)")
	fs.IntVar(&cfg.MaxLifetimeMinutes, "max-lifetime-minutes", 720, "longest tunnel lifetime and the default (AWS: 720)")
	fs.DurationVar(&cfg.Retention, "retention", 0, "how long closed tunnels stay listable (default 3h)")
	fs.Int64Var(&cfg.BandwidthLimit, "bandwidth-limit", 0, "bytes per second per tunnel direction (0 = unlimited)")
	handshakeLimit := fs.Int("handshake-failure-limit", 10, "failed /tunnel handshakes (HTTP 400/401) allowed per client address per minute, in bursts of twice that; past it the address gets HTTP 429 for a minute (0 = no limit)")
	apiLimit := fs.Int("api-failure-limit", 10, "API requests failing authentication (HTTP 403) allowed per client address per minute, in bursts of twice that; past it the address gets HTTP 429 ThrottlingException for a minute (0 = no limit)")
	exemptLoopback := fs.Bool("failure-limit-exempt-loopback", false, "do not apply --handshake-failure-limit and --api-failure-limit to loopback clients")
	fs.IntVar(&cfg.MaxConns, "max-conns", 16384, "open connections at once, WebSockets included; more wait in the accept queue (0 = unlimited)")
	fs.IntVar(&cfg.MaxConnsPerIP, "max-conns-per-ip", 64, "connections per client address (IPv6: per /64) that are not WebSockets or MQTT sessions, i.e. idle, slow or in-flight HTTP; more are closed at once (0 = unlimited)")
	fs.DurationVar(&cfg.ReadHeaderTimeout, "read-header-timeout", 10*time.Second, "how long a client may take for its TLS handshake and each request's headers (slowloris defence; also the WebSocket handshake's limit)")
	fs.DurationVar(&cfg.RequestTimeout, "request-timeout", 30*time.Second, "how long an API request may take to be read and answered (WebSockets are not affected: they have their own keepalive)")
	fs.StringVar(&cfg.PostgresDSN, "postgres", os.Getenv("SECTUN_POSTGRES_DSN"), "PostgreSQL DSN instead of SQLite (env SECTUN_POSTGRES_DSN)")
	fs.BoolVar(&cfg.AllowEmptyDB, "allow-empty-db", false, "start on a zero-byte <data-dir>/tunneld.db as a new, empty database (refused by default: a truncated file or failed copy would silently lose every tunnel)")
	fs.BoolVar(&cfg.SkipDBCheck, "skip-db-check", false, "skip the integrity check (PRAGMA quick_check) of <data-dir>/tunneld.db at start (measured 0.4 s for 100,000 tunnels, an 80 MB file: docs/storage.md); a damaged file then shows in /healthz and the log")
	cl := &cfg.Cluster
	fs.StringVar(&cl.NodeID, "node-id", "", "cluster mode: this node's name, unique and stable across restarts (needs --cluster-listen, --postgres and --mqtt-broker; see docs/cluster.md)")
	fs.StringVar(&cl.Listen, "cluster-listen", "", "cluster mode: address of the node-to-node link listener (never behind the load balancer)")
	fs.StringVar(&cl.Advertise, "cluster-advertise", "", "cluster mode: host:port other nodes dial for the link (default --cluster-listen)")
	fs.BoolVar(&cl.PlaintextLink, "cluster-plaintext", false, "cluster mode: no TLS on the node-to-node link (private networks only; logs a warning)")
	fs.DurationVar(&cl.LeaseTTL, "cluster-lease-ttl", 10*time.Second, "cluster mode: node lease on the database clock, renewed every third; a dead node's peers show DISCONNECTED within it")
	fs.DurationVar(&cl.LinkPing, "cluster-link-ping", time.Second, "cluster mode: link ping interval; a link silent for three is ended and its tunnel's peer gets STREAM_RESET")
	fs.DurationVar(&cl.DrainGrace, "drain-grace", 5*time.Second, "cluster mode: after SIGTERM, how long /healthz answers 503 (so the load balancer moves clients away) before WebSockets are dropped")
	m := &cfg.MQTT
	fs.StringVar(&m.Listen, "mqtt-listen", "127.0.0.1:1883", "embedded MQTT broker address for device notifications (\"off\" disables notifications)")
	fs.StringVar(&m.TLSListen, "mqtt-tls-listen", "", "add a TLS listener to the embedded broker (uses the server certificate unless --mqtt-tls-cert)")
	fs.StringVar(&m.TLSCertFile, "mqtt-tls-cert", "", "certificate for the broker's TLS listener")
	fs.StringVar(&m.TLSKeyFile, "mqtt-tls-key", "", "key for the broker's TLS listener")
	mqttALPN := fs.Bool("mqtt-alpn", true, "serve MQTT on the main TLS listener to clients offering ALPN x-amzn-mqtt-ca (the AWS IoT Device Client on port 443), with device certificates from <data-dir>/devices (tunneld device create) or --mqtt-client-ca; HTTPS clients are not affected")
	fs.StringVar(&m.ClientCAFile, "mqtt-client-ca", "", "PEM file of further CAs whose certificates identify devices (CommonName = thing name), trusted with the device CA on the main TLS listener and the broker's TLS listener")
	fs.StringVar(&m.UsersFile, "mqtt-users", "", "file of `name password [admin]` lines for the embedded broker")
	fs.BoolVar(&m.NoAnonymous, "mqtt-no-anonymous", false, "refuse anonymous MQTT clients even on loopback (by default, on the loopback listener, any local process may connect as any thing not authenticated by certificate or password and receive its notifications)")
	fs.IntVar(&m.MaxConns, "mqtt-max-conns", 0, "open MQTT connections at once on all the embedded broker's listeners, counted from accept (0 = what the file descriptor limit, RLIMIT_NOFILE, leaves after --mqtt-reserve-conns, at most 20000; -1 = unlimited)")
	fs.IntVar(&m.ReserveConns, "mqtt-reserve-conns", 0, "connection slots of --max-conns and file descriptors that MQTT can never take, kept for HTTPS, the API and /tunnel (0 = an eighth of --max-conns or of the descriptors, at least 16; -1 = none)")
	fs.IntVar(&m.MaxConnsPerAddr, "mqtt-max-conns-per-addr", broker.DefaultMaxConnsPerAddr, "MQTT connections per client address (IPv6: per /64; all of loopback is one) not authenticated by a certificate or password: in the TLS handshake, before CONNECT, or anonymous (0 = unlimited)")
	fs.IntVar(&m.MaxConnsPerIdentity, "mqtt-max-conns-per-identity", broker.DefaultMaxConnsPerIdentity, "MQTT connections per identity: a certificate, user or admin name; all anonymous clients of one address are one identity (0 = unlimited)")
	fs.IntVar(&m.MaxSessions, "mqtt-max-sessions", broker.DefaultMaxSessions, "MQTT sessions held: connected clients plus the sessions kept for an hour for disconnected persistent clients; only a new persistent session is refused, never a resumed or clean one (0 = unlimited)")
	fs.IntVar(&m.MaxSessionsPerIdentity, "mqtt-max-sessions-per-identity", broker.DefaultMaxSessionsPerIdentity, "MQTT sessions per identity (as --mqtt-max-conns-per-identity), e.g. of a client that changes its client ID at every connection (0 = unlimited)")
	fs.IntVar(&m.MaxQueuedPerSession, "mqtt-max-queued-per-session", broker.DefaultMaxQueuedPerSession, "QoS 1 messages (notifications) held per MQTT session, unacknowledged or queued while it is disconnected; more are dropped (0 = 64)")
	fs.IntVar(&m.MaxQueued, "mqtt-max-queued", broker.DefaultMaxQueued, "QoS 1 messages held for all MQTT sessions together; once reached, messages for disconnected sessions are dropped (0 = unlimited)")
	fs.StringVar(&m.TopicPrefix, "mqtt-topic-prefix", "$aws", "topic prefix of <prefix>/things/<thing>/tunnels/notify")
	fs.StringVar(&m.BrokerURL, "mqtt-broker", "", "external broker URL (tcp://, ssl://, ws://, wss://) instead of the embedded one")
	fs.StringVar(&m.ClientID, "mqtt-client-id", "", "client ID at the external broker (default tunneld-<random>)")
	fs.StringVar(&m.Username, "mqtt-username", "", "username at the external broker")
	fs.StringVar(&m.PasswordFile, "mqtt-password-file", "", "file holding the password for the external broker")
	fs.StringVar(&m.CAFile, "mqtt-ca", "", "CA file verifying the external broker")
	fs.StringVar(&m.CertFile, "mqtt-cert", "", "client certificate for the external broker")
	fs.StringVar(&m.KeyFile, "mqtt-key", "", "client key for the external broker")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	configFile := fs.String("config", "", "file of `name = value` lines using these option names")
	showVersion := fs.Bool("version", false, "print the version and exit")
	genDoc := clidoc.AddFlag(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: tunneld [options]\n       tunneld device create|ca [options]   (device identities; see tunneld device --help)\n       tunneld tunnels list|describe|close  (a running tunneld's tunnels; see tunneld tunnels --help)\n       tunneld version\n\nA self-hosted, AWS-compatible secure tunneling service.\n\nOptions:\n%s", fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *showVersion {
		fmt.Fprintln(stdout, "tunneld", version.String())
		return nil
	}
	if *genDoc != "" {
		return clidoc.Write(stdout, *genDoc, clidoc.For("tunneld", fs))
	}
	if *configFile != "" {
		if err := cliconf.ApplyFile(fs, *configFile); err != nil {
			return err
		}
	}
	if *selfSigned && (cfg.Plaintext || cfg.TLSCertFile != "") {
		return errors.New("--tls-self-signed cannot be combined with --plaintext or --tls-cert")
	}
	if fs.Changed("mqtt-alpn") && *mqttALPN {
		switch {
		case cfg.Plaintext:
			return errors.New("--mqtt-alpn needs TLS on the main listener: drop --plaintext")
		case m.BrokerURL != "" || m.Listen == "off":
			return errors.New("--mqtt-alpn serves the embedded broker: drop --mqtt-broker and --mqtt-listen off")
		}
	}
	m.NoALPN = !*mqttALPN
	if m.Listen == "off" {
		if m.BrokerURL == "" {
			m.Off = true
		}
		m.Listen = ""
	}
	cfg.HandshakeFailureLimit = failureLimit(*handshakeLimit, *exemptLoopback)
	cfg.APIFailureLimit = failureLimit(*apiLimit, *exemptLoopback)
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = -1
	}
	for _, v := range []*int{&m.MaxConnsPerAddr, &m.MaxConnsPerIdentity, &m.MaxSessions, &m.MaxSessionsPerIdentity, &m.MaxQueuedPerSession, &m.MaxQueued} {
		if *v <= 0 {
			*v = -1 // 0 is unlimited here, the default in server.MQTTConfig
		}
	}
	if cfg.MaxConnsPerIP <= 0 {
		cfg.MaxConnsPerIP = -1
	}
	if cfg.ReadHeaderTimeout <= 0 || cfg.RequestTimeout <= 0 {
		return errors.New("--read-header-timeout and --request-timeout must be positive durations (e.g. 10s)")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch *logFormat {
	case "text":
		cfg.Logger = slog.New(slog.NewTextHandler(stderr, opts))
	case "json":
		cfg.Logger = slog.New(slog.NewJSONHandler(stderr, opts))
	default:
		return fmt.Errorf("--log-format %q: want text or json", *logFormat)
	}
	cfg.Banner = stdout
	srv, err := server.New(ctx, cfg)
	if err != nil {
		return withFlags(err)
	}
	return srv.Run(ctx)
}

// flagOf names the flag that sets each server.Config field a
// *server.ConfigError can name.
var flagOf = map[string]string{
	"Listen":            "--listen",
	"Plaintext":         "--plaintext",
	"NoAuth":            "--no-auth",
	"AllowInsecure":     "--allow-insecure",
	"TLSCertFile":       "--tls-cert",
	"TLSKeyFile":        "--tls-key",
	"SkipDBCheck":       "--skip-db-check",
	"MQTT.ClientCAFile": "--mqtt-client-ca",
	"MQTT.TLSListen":    "--mqtt-tls-listen",
}

// withFlags renders a *server.ConfigError with the flags of the Config
// fields it names (the error stays in the chain); other errors pass.
func withFlags(err error) error {
	var ce *server.ConfigError
	if !errors.As(err, &ce) {
		return err
	}
	return flagError{ce.Render(func(field string) string {
		if f, ok := flagOf[field]; ok {
			return f
		}
		return field
	}), err}
}

// flagError is an error whose message names flags.
type flagError struct {
	msg string
	err error
}

func (e flagError) Error() string { return e.msg }
func (e flagError) Unwrap() error { return e.err }

// failureLimit maps a --*-failure-limit value (failures per minute, 0 or
// less: none) to the limiter's configuration.
func failureLimit(perMinute int, exemptLoopback bool) ratelimit.Config {
	if perMinute <= 0 {
		return ratelimit.Config{PerMinute: -1}
	}
	return ratelimit.Config{PerMinute: float64(perMinute), ExemptLoopback: exemptLoopback}
}
