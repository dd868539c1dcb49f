// Command tunnel-agent runs on a device: it subscribes to the thing's
// tunnel notifications on an MQTT broker (AWS IoT Core, Mosquitto,
// tunneld's embedded broker) and opens the destination end of every tunnel
// it is told about, connecting the tunnel's services to local ports.
// With --token it runs a single destination session instead, without MQTT.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/sectun/sectun/internal/agent"
	"github.com/sectun/sectun/internal/clidoc"
	"github.com/sectun/sectun/internal/localproxy/metrics"
	"github.com/sectun/sectun/internal/version"
	"github.com/sectun/sectun/tunnel"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, pflag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "tunnel-agent:", err)
		os.Exit(1)
	}
}

// tokenEnv is the reference local proxy's environment variable for -t.
const tokenEnv = "AWSIOT_TUNNEL_ACCESS_TOKEN"

const usageHead = `Usage:
  tunnel-agent --config /etc/sectun/agent.json
  tunnel-agent --thing THING --broker URL [options]
  tunnel-agent --token TOKEN --tunnel-endpoint URL [--map SERVICE=ADDR ...]

Runs on a device: waits for tunnel notifications on
<prefix>/things/<thing>/tunnels/notify and opens the destination end of
each tunnel, connecting its services to local addresses (SSH -> localhost:22
and VNC -> localhost:5900 unless mapped otherwise). With --token (or %s
and no broker) it runs that one tunnel and exits when it closes.

The configuration file is JSON:
  {"thingName": "dev-1", "broker": "ssl://xxxx-ats.iot.us-east-1.amazonaws.com:8883",
   "ca": "/etc/sectun/AmazonRootCA1.pem", "cert": "/etc/sectun/device.pem.crt",
   "key": "/etc/sectun/private.pem.key", "services": {"SSH": "localhost:22"}}
(keys: thingName clientId broker ca cert key alpn username passwordFile topicPrefix
tunnelEndpoint tunnelCa tunnelInsecure services v1Service maxTunnels logLevel
metricsListen metricsAllowRemote;
the AWS IoT Device Client's endpoint, cert, key, root-ca and thing-name too).
Options given on the command line override the file; --map entries are
added to the file's services, replacing those of the same service.

Options:
`

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o, err := parse(args, getenv, stdout, stderr)
	if err != nil || o == nil {
		return err
	}
	if o.metricsListen != "" {
		srv, err := serveMetrics(o)
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	if o.token != "" {
		return agent.RunToken(ctx, o.cfg, o.token)
	}
	a, err := agent.New(o.cfg)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// options is what the command line and the configuration file ask for.
type options struct {
	cfg   agent.Config
	token string // single-session mode when set
	// metricsListen is the metrics listener's address ("" = none).
	metricsListen string
	metricsRemote bool
}

// serveMetrics starts the metrics listener (see package metrics) and hooks
// its registry into o.cfg's events: the tunnel metrics of every session,
// plus the running sessions and whether the broker subscription is up.
func serveMetrics(o *options) (*metrics.Server, error) {
	ln, err := metrics.Listen(o.metricsListen, o.metricsRemote)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen: %w", err)
	}
	reg := metrics.New()
	var sessions, subscribed atomic.Int64
	reg.AddGauge("sectun_agent_sessions", "Destination sessions running.", func() float64 { return float64(sessions.Load()) })
	reg.AddGauge("sectun_agent_broker_subscribed", "1 while the agent is connected to its MQTT broker and subscribed.", func() float64 { return float64(subscribed.Load()) })
	next := o.cfg.OnEvent
	o.cfg.OnEvent = func(ev agent.Event) {
		switch e := ev.(type) {
		case agent.SessionStarted:
			sessions.Add(1)
		case agent.SessionEnded:
			if e.Started {
				sessions.Add(-1)
			}
		case agent.Subscribed:
			subscribed.Store(1)
		case agent.BrokerLost:
			subscribed.Store(0)
		}
		if next != nil {
			next(ev)
		}
	}
	o.cfg.OnTunnelEvent = reg.Observe
	return metrics.Serve(ln, reg, o.cfg.Logger), nil
}

// parse reads the flags and the configuration file. It returns nil
// options (and no error) when there is nothing to run (--version).
func parse(args []string, getenv func(string) string, stdout, stderr io.Writer) (*options, error) {
	fs := pflag.NewFlagSet("tunnel-agent", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", "", "JSON configuration `file`")
	thing := fs.String("thing", "", "`thing` name: selects the notify topic and is the default MQTT client ID")
	clientID := fs.String("client-id", "", "MQTT client ID (default the thing name; <thing>@<suffix> is accepted by AWS IoT policies and tunneld)")
	brokerURL := fs.String("broker", "", "MQTT broker `URL`: ssl://host:8883 (AWS IoT Core), tcp://127.0.0.1:1883 (tunneld's embedded broker), mqtts://, ws://, wss://")
	caFile := fs.String("ca", "", "PEM `file` of CAs trusted for the broker (default: system roots)")
	certFile := fs.String("cert", "", "device certificate `file` (PEM) for the broker")
	keyFile := fs.String("key", "", "device private key `file` (PEM) for the broker")
	username := fs.String("username", "", "MQTT `username`")
	passwordFile := fs.String("password-file", "", "`file` holding the MQTT password")
	alpn := fs.StringArray("alpn", nil, "ALPN `protocol` offered to a TLS broker (repeatable; default x-amzn-mqtt-ca on port 443, as AWS IoT Core needs)")
	topicPrefix := fs.String("topic-prefix", "", "first level of the notify topic (default \"$aws\")")
	endpoint := fs.String("tunnel-endpoint", "", "tunneling service `URL` (wss://host:8443, ws://127.0.0.1:8443 or host[:port]); default: the AWS endpoint of the notification's region")
	tunnelCA := fs.String("tunnel-ca", "", "PEM `file` or directory of CAs trusted for the tunneling service, added to the system roots")
	tunnelInsecure := fs.Bool("tunnel-insecure", false, "do not verify the tunneling service's certificate (testing only)")
	maps := fs.StringArray("map", nil, "map a service to a local address: `SERVICE=HOST:PORT` or SERVICE=PORT (repeatable)")
	v1Service := fs.String("v1-service", "", "service whose address serves tunnels without service IDs (default SSH)")
	maxTunnels := fs.Int("max-tunnels", agent.DefaultMaxTunnels, "tunnels served at once; further notifications are refused")
	dialRetries := fs.Int("dial-retries", agent.DefaultDialRetries, "further attempts to connect to a local service before a tunnel connection is refused (negative: none)")
	tok := fs.String("token", "", "run one destination session with this access `token`, without MQTT (env "+tokenEnv+")")
	region := fs.String("region", "", "with --token and no --tunnel-endpoint: use the AWS endpoint of this `region`")
	logLevel := fs.String("log-level", "", "debug, info, warn or error (default info)")
	logFormat := fs.String("log-format", "text", "text or json")
	metricsListen := fs.String("metrics-listen", "", "serve Prometheus metrics (goroutines, sessions, tunnel connected, reconnects, connections per service) on http://`ADDRESS`/metrics, e.g. 127.0.0.1:9090 (port 0: any free port; the bound address is logged); loopback only unless --metrics-allow-remote; off by default")
	metricsRemote := fs.Bool("metrics-allow-remote", false, "allow a non-loopback --metrics-listen address (the metrics hold no secret but tell service IDs and activity)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	genDoc := clidoc.AddFlag(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, usageHead, tokenEnv)
		fmt.Fprint(stderr, fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (see --help)", fs.Arg(0))
	}
	if *showVersion {
		fmt.Fprintln(stdout, "tunnel-agent", version.String())
		return nil, nil
	}
	if *genDoc != "" {
		return nil, clidoc.Write(stdout, *genDoc, clidoc.For("tunnel-agent", fs))
	}

	file := &agent.File{}
	if *configFile != "" {
		var err error
		if file, err = agent.LoadFile(*configFile); err != nil {
			return nil, err
		}
	}
	// set returns the flag's value if it was given, else the file's.
	set := func(name string, flagVal, fileVal string) string {
		if fs.Changed(name) {
			return flagVal
		}
		return fileVal
	}
	level := set("log-level", *logLevel, file.LogLevel)
	if level == "" {
		level = "info"
	}
	logger, err := newLogger(stderr, level, *logFormat)
	if err != nil {
		return nil, err
	}

	cfg := agent.Config{
		ThingName:      set("thing", *thing, file.ThingName),
		ClientID:       set("client-id", *clientID, file.ClientID),
		BrokerURL:      set("broker", *brokerURL, file.Broker),
		CAFile:         set("ca", *caFile, file.CA),
		CertFile:       set("cert", *certFile, file.Cert),
		KeyFile:        set("key", *keyFile, file.Key),
		Username:       set("username", *username, file.Username),
		TopicPrefix:    set("topic-prefix", *topicPrefix, file.TopicPrefix),
		TunnelEndpoint: set("tunnel-endpoint", *endpoint, file.TunnelEndpoint),
		TunnelRegion:   *region,
		V1Service:      set("v1-service", *v1Service, file.V1Service),
		MaxTunnels:     file.MaxTunnels,
		DialRetries:    *dialRetries,
		Services:       map[string]string{},
		Logger:         logger,
	}
	if fs.Changed("max-tunnels") || cfg.MaxTunnels == 0 {
		cfg.MaxTunnels = *maxTunnels
	}
	if cfg.MaxTunnels <= 0 {
		return nil, fmt.Errorf("--max-tunnels must be at least 1")
	}
	if cfg.DialRetries == 0 {
		cfg.DialRetries = -1 // the flag's 0 means none; Config's 0 means the default
	}
	cfg.BrokerALPN = file.ALPN
	if fs.Changed("alpn") {
		cfg.BrokerALPN = *alpn
	}
	for id, addr := range file.Services {
		cfg.Services[id] = addr
	}
	for _, m := range *maps {
		id, addr, err := agent.ParseMapping(m)
		if err != nil {
			return nil, fmt.Errorf("--map: %w", err)
		}
		cfg.Services[id] = addr
	}
	if pf := set("password-file", *passwordFile, file.PasswordFile); pf != "" {
		if cfg.Password, err = agent.ReadPasswordFile(pf); err != nil {
			return nil, err
		}
	}
	tca := set("tunnel-ca", *tunnelCA, file.TunnelCA)
	insecure := *tunnelInsecure || (!fs.Changed("tunnel-insecure") && file.TunnelInsecure)
	if tca != "" || insecure {
		if cfg.TunnelTLS, err = tunnel.TLSConfig(tca, insecure); err != nil {
			return nil, fmt.Errorf("--tunnel-ca: %w", err)
		}
		if insecure {
			logger.Warn("the tunneling service's certificate is not verified (--tunnel-insecure)")
		}
	}

	ml := set("metrics-listen", *metricsListen, file.MetricsListen)
	mr := *metricsRemote || (!fs.Changed("metrics-allow-remote") && file.MetricsAllowRemote)
	if ml != "" {
		if _, _, err := net.SplitHostPort(ml); err != nil {
			return nil, fmt.Errorf("--metrics-listen %q: want HOST:PORT, e.g. 127.0.0.1:9090", ml)
		}
	}
	withMetrics := func(o *options) *options {
		o.metricsListen, o.metricsRemote = ml, mr
		return o
	}

	accessToken := *tok
	if accessToken == "" && cfg.BrokerURL == "" {
		accessToken = getenv(tokenEnv)
	}
	if accessToken != "" {
		if cfg.BrokerURL != "" {
			logger.Info("--token given: running one session, not subscribing to the broker")
		}
		return withMetrics(&options{cfg: cfg, token: accessToken}), nil
	}
	if cfg.ThingName == "" || cfg.BrokerURL == "" {
		return nil, errors.New("set --thing and --broker (or thingName and broker in --config), or --token for a single tunnel; see --help")
	}
	return withMetrics(&options{cfg: cfg}), nil
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}
