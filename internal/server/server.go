package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sectun/sectun/internal/alpnmux"
	"github.com/sectun/sectun/internal/certs"
	"github.com/sectun/sectun/internal/cluster"
	"github.com/sectun/sectun/internal/console"
	"github.com/sectun/sectun/internal/ratelimit"
	"github.com/sectun/sectun/internal/server/api"
	"github.com/sectun/sectun/internal/server/relay"
	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/store/postgres"
	"github.com/sectun/sectun/internal/store/sqlite"
)

// Config configures tunneld. The zero value, with a DataDir, is a working
// loopback development server.
type Config struct {
	// Listen is the address of the HTTPS (or HTTP) listener; default
	// 127.0.0.1:8443.
	Listen string
	// DataDir holds the SQLite database, generated TLS material and
	// generated credentials; default ./tunneld-data.
	DataDir string
	// TLSCertFile and TLSKeyFile are the server certificate and key (PEM).
	// When both are empty and Plaintext is false, a development CA and a
	// certificate for localhost and the listen host are made in
	// DataDir/tls.
	TLSCertFile, TLSKeyFile string
	// TLSHosts are extra names or addresses for the generated certificate.
	TLSHosts []string
	// Plaintext serves HTTP and ws:// without TLS.
	Plaintext bool
	// NoAuth accepts unsigned management API requests.
	NoAuth bool
	// AllowInsecure permits Plaintext or NoAuth on a non-loopback address.
	AllowInsecure bool
	// CredentialsFiles are AWS shared-credentials files whose access keys may
	// sign API requests. When empty (and NoAuth is false),
	// DataDir/aws-credentials is used, created with a fresh key if missing.
	CredentialsFiles []string
	// Region and AccountID appear in tunnel ARNs and notifications; defaults
	// us-east-1 and 123456789012.
	Region, AccountID string
	// MaxServicesPerTunnel (default 3, as AWS), MaxOpenTunnels (0 =
	// unlimited) and MaxLifetimeMinutes (default 720) limit OpenTunnel.
	MaxServicesPerTunnel, MaxOpenTunnels, MaxLifetimeMinutes int
	// Retention is how long closed tunnels stay listable; default 3 h.
	Retention time.Duration
	// BandwidthLimit caps each tunnel direction in bytes per second; 0 = off.
	BandwidthLimit int64
	// PostgresDSN selects PostgreSQL storage instead of SQLite.
	PostgresDSN string
	// AllowEmptyDB opens an existing zero-byte SQLite file as a new,
	// empty database; by default it is refused (a truncated file or a
	// failed copy would otherwise start tunneld with no tunnels).
	AllowEmptyDB bool
	// SkipDBCheck skips the integrity check (PRAGMA quick_check) of the
	// SQLite file at start, which reads the whole file (see
	// docs/storage.md for how long it takes).
	SkipDBCheck bool
	// MQTT configures device notifications.
	MQTT MQTTConfig
	// Cluster, when set, makes this process a node of a cluster
	// (cluster.go, docs/cluster.md).
	Cluster ClusterConfig
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// Banner, when set, receives a few lines saying how to use the server.
	Banner io.Writer
	// Now replaces the clock of tunnel lifetimes and handshakes (tests).
	Now func() time.Time

	// HandshakeFailureLimit limits failed /tunnel handshakes (HTTP 400,
	// 401, 431) per client address, and APIFailureLimit API requests
	// that failed authentication (HTTP 403); past the limit the address
	// gets 429 with Retry-After for a cool-down, before any token or
	// signature is checked. The zero value means 10 failures a minute in
	// bursts of 20, a one-minute cool-down, loopback included;
	// PerMinute < 0 turns a limit off.
	HandshakeFailureLimit, APIFailureLimit ratelimit.Config
	// MaxConns caps the listener's open connections, WebSockets
	// included; further clients wait in the kernel's accept queue.
	// Default 16384; negative means no cap.
	MaxConns int
	// MaxConnsPerIP caps, per client address (IPv6: per /64), the
	// connections that are not WebSockets or MQTT sessions (idle, slow or
	// in-flight HTTP connections and TLS handshakes); over it new
	// connections are closed at once. Default 64; negative means no cap.
	MaxConnsPerIP int
	// ReadHeaderTimeout bounds a connection's TLS handshake and each
	// request's headers; default 10 s.
	ReadHeaderTimeout time.Duration
	// RequestTimeout bounds reading a whole request and writing its
	// answer (not WebSockets, which have their own liveness checks);
	// default 30 s.
	RequestTimeout time.Duration
	// NoConsole turns the web console (/console) off. It is off anyway
	// with NoAuth: signing in takes an access key.
	NoConsole bool
}

// Server is a running tunneld.
type Server struct {
	cfg      Config
	logger   *slog.Logger
	store    store.Store
	api      *api.Server
	relay    *relay.Relay
	ln       net.Listener // the bound listener (TLS-wrapped unless mux is set)
	mux      *alpnmux.Mux // the TLS handshakes (and MQTT by ALPN when mqttALPN)
	mqttALPN bool         // MQTT is served on the TLS listener
	connLog  *logLimiter  // rate-limited connection-level logs
	inflight atomic.Int64 // HTTP requests being served
	httpLn   net.Listener // what http serves: ln, or mux's default listener
	http     *http.Server
	registry *prometheus.Registry
	scheme   string
	caPath   string
	credPath string
	notifier *notifier
	conns    *connLimiter
	apiLimit *ratelimit.Limiter
	console  *console.Console // nil when off
	// deviceCAPath is the device CA certificate, when device certificates
	// are verified (MQTT over TLS on the embedded broker).
	deviceCAPath string
	// node and outbox are set in cluster mode (cluster.go).
	node   *cluster.Node
	outbox *outboxNotifier

	health    *storeHealth
	lock      *os.File // the data directory's lock, held until Close
	closeOnce sync.Once

	// mqttBudget shares connections between the embedded broker and the
	// rest (mqttlimits.go); nil without the embedded broker.
	mqttBudget *mqttBudget
}

// ConfigError is a Config that New refuses. Its text names Config fields
// (e.g. "refusing NoAuth on non-loopback Listen ..."); Render names them
// otherwise, as cmd/tunneld does with its flags.
type ConfigError struct {
	// Field is the Config field at fault, e.g. "Listen" or
	// "MQTT.ClientCAFile".
	Field string
	// format has {Field} references for Render; args are fmt's (the
	// cause among them).
	format string
	args   []any
	// Err is the cause, if any.
	Err error
}

func configErrorf(field string, err error, format string, args ...any) *ConfigError {
	return &ConfigError{Field: field, format: format, args: args, Err: err}
}

// Error renders the message with Config field names.
func (e *ConfigError) Error() string { return e.Render(func(f string) string { return f }) }

// Unwrap returns the cause.
func (e *ConfigError) Unwrap() error { return e.Err }

// Render returns the message with name(field) in place of each Config
// field it names.
func (e *ConfigError) Render(name func(field string) string) string {
	var b strings.Builder
	f := e.format
	for {
		i := strings.IndexByte(f, '{')
		j := strings.IndexByte(f, '}')
		if i < 0 || j < i {
			b.WriteString(f)
			break
		}
		b.WriteString(f[:i])
		b.WriteString(name(f[i+1 : j]))
		f = f[j+1:]
	}
	return "tunneld: " + fmt.Sprintf(b.String(), e.args...)
}

// resolveDataDir returns the data directory dir, "tunneld-data" if empty, as an
// absolute path when it can be made one: printed paths must work from any
// directory. Config and DeviceRequest default their DataDir with it.
func resolveDataDir(dir string) string {
	if dir == "" {
		dir = "tunneld-data"
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	return dir
}

// withDefaults fills in the zero fields that have defaults.
func (c *Config) withDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8443"
	}
	c.DataDir = resolveDataDir(c.DataDir)
	if c.Region == "" {
		c.Region = "us-east-1"
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.MaxConns == 0 {
		c.MaxConns = defaultMaxConns
	}
	if c.MaxConnsPerIP == 0 {
		c.MaxConnsPerIP = defaultMaxConnsPerIP
	}
	if c.ReadHeaderTimeout <= 0 {
		c.ReadHeaderTimeout = defaultReadHeaderTimeout
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = defaultRequestTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// embeddedMQTT reports whether the embedded broker runs.
func (c *Config) embeddedMQTT() bool { return !c.MQTT.Off && c.MQTT.BrokerURL == "" }

// mqttALPN reports whether devices reach the embedded broker on the main
// TLS listener.
func (c *Config) mqttALPN() bool { return c.embeddedMQTT() && !c.Plaintext && !c.MQTT.NoALPN }

// validate checks a Config with its defaults; it touches nothing.
func (c *Config) validate() error {
	if err := validateCluster(*c); err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return configErrorf("Listen", err, "{Listen} %q: %v", c.Listen, err)
	}
	if !isLoopback(host) && !c.AllowInsecure {
		if c.Plaintext {
			return configErrorf("Plaintext", nil, "refusing plaintext on non-loopback address %s: give {TLSCertFile}/{TLSKeyFile} (or neither, for a self-signed certificate), or set {AllowInsecure}", c.Listen)
		}
		if c.NoAuth {
			return configErrorf("NoAuth", nil, "refusing {NoAuth} on non-loopback address %s: configure access keys, or set {AllowInsecure}", c.Listen)
		}
	}
	if c.MQTT.ClientCAFile != "" && !c.mqttALPN() && !(c.embeddedMQTT() && c.MQTT.TLSListen != "") {
		return configErrorf("MQTT.ClientCAFile", nil, "{MQTT.ClientCAFile} verifies devices on an MQTT TLS listener of the embedded broker: keep TLS and MQTT on the main listener (the default), or add {MQTT.TLSListen}")
	}
	return nil
}

// New opens storage, prepares TLS and credentials and binds the listener,
// in stages: defaults, validation (errors are *ConfigError, naming Config
// fields), then each building step in its own method. On failure it
// releases what the steps before acquired.
func New(ctx context.Context, cfg Config) (*Server, error) {
	cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("tunneld: data directory: %w", err)
	}
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	logger := cfg.Logger
	s := &Server{cfg: cfg, logger: logger, registry: prometheus.NewRegistry(), scheme: "https", lock: lock,
		connLog: newLogLimiter(logger, connLogBurst, connLogPeriod)}
	ok := false
	defer func() {
		if !ok {
			s.abandon()
		}
	}()

	host, _, _ := net.SplitHostPort(cfg.Listen) // validated
	var tlsConfig *tls.Config
	var certFile, keyFile string
	if !cfg.Plaintext {
		if tlsConfig, certFile, keyFile, err = s.setupTLS(host); err != nil {
			return nil, err
		}
	} else {
		s.scheme = "http"
	}
	creds, err := s.loadCredentials()
	if err != nil {
		return nil, err
	}
	if err := s.openStorage(ctx); err != nil {
		return nil, err
	}
	notifier, devices, err := s.startMQTT(ctx, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	if err := s.startCluster(ctx); err != nil {
		return nil, err
	}
	var authz relay.Authorizer = &storeAuthorizer{store: s.store, now: cfg.Now, logger: logger}
	if s.node != nil {
		authz = s.node
		if s.outbox != nil {
			notifier = s.outbox
		}
	}
	s.registerMetrics()
	if err := s.buildHandlers(authz, notifier, creds); err != nil {
		return nil, err
	}
	if err := s.listen(tlsConfig, devices); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

// abandon releases what a failed New acquired, in reverse order.
func (s *Server) abandon() {
	if s.ln != nil {
		s.ln.Close()
	}
	if s.node != nil {
		s.node.Close()
	}
	if s.notifier != nil {
		s.notifier.close()
	}
	if s.store != nil {
		s.store.Close()
	}
	s.lock.Close()
}

// loadCredentials returns the API's access keys (none with NoAuth),
// creating the data directory's credentials file when no file is given.
func (s *Server) loadCredentials() (map[string]string, error) {
	creds := map[string]string{}
	if s.cfg.NoAuth {
		return creds, nil
	}
	files := s.cfg.CredentialsFiles
	if len(files) == 0 {
		s.credPath = filepath.Join(s.cfg.DataDir, "aws-credentials")
		if _, err := ensureCredentialsFile(s.credPath); err != nil {
			return nil, fmt.Errorf("tunneld: credentials: %w", err)
		}
		files = []string{s.credPath}
	}
	creds, err := loadCredentialFiles(files)
	if err != nil {
		return nil, fmt.Errorf("tunneld: %w", err)
	}
	return creds, nil
}

// openStorage opens the store, checks an SQLite database (unless
// SkipDBCheck), puts it under the health wrapper and marks the ends a
// previous run left connected disconnected.
func (s *Server) openStorage(ctx context.Context) error {
	if err := s.openStore(ctx); err != nil {
		return err
	}
	if db, isSQLite := s.store.(*sqlite.Store); isSQLite && !s.cfg.SkipDBCheck {
		t0 := time.Now()
		if err := db.QuickCheck(ctx); err != nil {
			return configErrorf("SkipDBCheck", err, "storage: %v (to start anyway, for a look at what still works: {SkipDBCheck})", err)
		}
		s.logger.Info("database checked", "check", "PRAGMA quick_check", "duration", time.Since(t0).Round(time.Millisecond))
	}
	s.store = healthStore{Store: s.store, h: s.health}
	// No peer survives a restart: rows a killed tunneld left CONNECTED
	// would otherwise stay so forever. (The data directory's lock makes
	// this process the only one on an SQLite database.)
	if n, err := s.store.ResetConnections(ctx, s.cfg.Now()); err != nil {
		if s.health.damaged == nil || !s.health.damaged(err) {
			return fmt.Errorf("tunneld: storage: %w", err)
		}
		s.health.note(err) // started with --skip-db-check: carry on, unhealthy
	} else if n > 0 {
		s.logger.Info("tunnel ends left connected by the previous run marked disconnected", "ends", n)
	}
	return nil
}

// startMQTT prepares device verification, shares connections with the
// embedded broker and starts the notifier (nil with MQTT off).
func (s *Server) startMQTT(ctx context.Context, certFile, keyFile string) (api.Notifier, *x509.CertPool, error) {
	cfg := &s.cfg
	var devices *x509.CertPool
	if cfg.mqttALPN() || cfg.embeddedMQTT() && cfg.MQTT.TLSListen != "" {
		var err error
		if devices, s.deviceCAPath, err = devicePool(cfg.DataDir, cfg.MQTT.ClientCAFile); err != nil {
			return nil, nil, err
		}
	}
	if cfg.embeddedMQTT() {
		s.mqttBudget = sizeMQTT(&cfg.MQTT, cfg.MaxConns, fileLimit(), s.logger)
		cfg.MQTT.MaxConns = s.mqttBudget.mqttConns
	}
	if cfg.MQTT.Off {
		return nil, devices, nil
	}
	var err error
	if s.notifier, err = startNotifier(ctx, cfg.MQTT, certFile, keyFile, devices, s.logger); err != nil {
		return nil, nil, fmt.Errorf("tunneld: %w", err)
	}
	return s.notifier, devices, nil
}

// registerMetrics registers the process, MQTT and tunnel gauges.
func (s *Server) registerMetrics() {
	s.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if s.mqttBudget != nil {
		s.registry.MustRegister(newMQTTCollector(s))
	}
	s.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tunneld_tunnels_open", Help: "Tunnels in the OPEN state.",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		n, err := s.store.CountOpen(ctx)
		if err != nil {
			return -1
		}
		return float64(n)
	}))
}

// buildHandlers makes the API failure limiter, the relay, the API and the
// console.
func (s *Server) buildHandlers(authz relay.Authorizer, notifier api.Notifier, creds map[string]string) error {
	cfg := &s.cfg
	var err error
	if s.apiLimit, err = ratelimit.New(cfg.APIFailureLimit); err != nil {
		return fmt.Errorf("tunneld: API failure limit: %w", err)
	}
	s.relay, err = relay.New(relay.Config{
		Authorizer:            authz,
		Logger:                s.logger,
		BandwidthLimit:        cfg.BandwidthLimit,
		Registerer:            s.registry,
		HandshakeFailureLimit: cfg.HandshakeFailureLimit,
	})
	if err != nil {
		return fmt.Errorf("tunneld: relay: %w", err)
	}
	var peers api.Peers = s.relay
	if s.node != nil {
		s.node.SetRelay(s.relay)
		peers = s.node
	}
	s.api, err = api.New(api.Config{
		Store:                s.store,
		Region:               cfg.Region,
		AccountID:            cfg.AccountID,
		MaxServicesPerTunnel: cfg.MaxServicesPerTunnel,
		MaxOpenTunnels:       cfg.MaxOpenTunnels,
		MaxLifetimeMinutes:   cfg.MaxLifetimeMinutes,
		Retention:            cfg.Retention,
		Credentials:          creds,
		NoAuth:               cfg.NoAuth,
		Peers:                peers,
		Notifier:             notifier,
		Logger:               s.logger,
		Now:                  cfg.Now,
	})
	if err != nil {
		return fmt.Errorf("tunneld: api: %w", err)
	}
	if !cfg.NoAuth && !cfg.NoConsole {
		if s.console, err = s.newConsole(creds); err != nil {
			return fmt.Errorf("tunneld: %w", err)
		}
	}
	return nil
}

// listen binds the listener under the connection limits and, with TLS, the
// ALPN mux (HTTPS, and MQTT for devices when mqttALPN), and makes the HTTP
// server.
func (s *Server) listen(tlsConfig *tls.Config, devices *x509.CertPool) error {
	cfg := &s.cfg
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("tunneld: %w", err)
	}
	s.conns = newConnLimiter(ln, cfg.MaxConns, cfg.MaxConnsPerIP, s.logger)
	s.ln = s.conns
	s.registerLimitMetrics()
	if tlsConfig != nil {
		// The handshakes are the mux's, with or without MQTT routes, so
		// that failed ones (plain HTTP on this port among them) are
		// answered and logged in one place.
		var routes []alpnmux.Route
		if cfg.mqttALPN() {
			// Devices (AWS IoT Device Client) reach MQTT on this port by
			// ALPN, with a verified certificate; everything else is HTTPS.
			deviceTLS := tlsConfig.Clone()
			deviceTLS.ClientAuth = tls.RequireAndVerifyClientCert
			deviceTLS.ClientCAs = devices
			routes = []alpnmux.Route{{
				Proto: MQTTALPN,
				TLS:   deviceTLS,
				Serve: s.serveMQTT, // mqttlimits.go
				Admit: s.admitMQTT,
			}}
			s.mqttALPN = true
		}
		s.mux, err = alpnmux.New(s.ln, alpnmux.Config{
			TLS:              tlsConfig,
			Routes:           routes,
			HandshakeTimeout: cfg.ReadHeaderTimeout,
			Logger:           s.logger,
			OnHandshakeError: s.handshakeFailed,
		})
		if err != nil {
			return fmt.Errorf("tunneld: %w", err)
		}
		s.httpLn = s.mux.Listener()
	} else {
		s.httpLn = s.ln
	}
	s.http = &http.Server{
		Handler:           s.countRequests(requestDeadlines(s.routes(), cfg.RequestTimeout)),
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          s.httpErrorLog(),
		ConnState:         s.conns.connState,
	}
	return nil
}

// openStore opens the configured store and prepares its health record.
func (s *Server) openStore(ctx context.Context) error {
	cfg := s.cfg
	s.health = &storeHealth{log: s.logger, now: time.Now}
	if cfg.PostgresDSN != "" {
		st, err := postgres.Open(ctx, cfg.PostgresDSN)
		if err != nil {
			return fmt.Errorf("tunneld: storage: %w", err)
		}
		s.store, s.health.st = st, st
		return nil
	}
	path := filepath.Join(cfg.DataDir, "tunneld.db")
	s.health.damaged, s.health.advice = sqlite.Damaged, sqlite.RepairAdvice(path)
	st, err := sqlite.OpenWith(ctx, path, sqlite.Options{AllowEmptyFile: cfg.AllowEmptyDB})
	if err != nil {
		if sqlite.Damaged(err) {
			return fmt.Errorf("tunneld: storage: %w: %s", err, s.health.advice)
		}
		return fmt.Errorf("tunneld: storage: %w", err)
	}
	s.store, s.health.st = st, st
	return nil
}

func (s *Server) setupTLS(listenHost string) (cfg *tls.Config, certFile, keyFile string, err error) {
	certFile, keyFile = s.cfg.TLSCertFile, s.cfg.TLSKeyFile
	if (certFile == "") != (keyFile == "") {
		return nil, "", "", errors.New("tunneld: --tls-cert and --tls-key go together")
	}
	if certFile == "" {
		hosts := append([]string{"localhost", "127.0.0.1", "::1"}, s.cfg.TLSHosts...)
		if listenHost != "" && !isLoopback(listenHost) && net.ParseIP(listenHost) != nil && !net.ParseIP(listenHost).IsUnspecified() {
			hosts = append(hosts, listenHost)
		}
		s.caPath, certFile, keyFile, err = certs.DevServer(filepath.Join(s.cfg.DataDir, "tls"), hosts)
		if err != nil {
			return nil, "", "", fmt.Errorf("tunneld: self-signed certificate: %w", err)
		}
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, "", "", fmt.Errorf("tunneld: TLS certificate: %w", err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		MinVersion:   tls.VersionTLS12,
		CipherSuites: tlsCipherSuites,
		NextProtos:   []string{"http/1.1"},
	}, certFile, keyFile, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/tunnel", s.relay)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if s.node != nil && s.node.Draining() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		if err := s.health.status(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{}))
	mux.Handle("/", limitAPIFailures(s.api, s.apiLimit, s.logger))
	if s.console != nil {
		mux.Handle(console.Path, s.console)
		mux.Handle(console.Path+"/", s.console)
	}
	return mux
}

// countRequests keeps s.inflight, for the shutdown's log.
func (s *Server) countRequests(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.inflight.Add(1)
		defer s.inflight.Add(-1)
		h.ServeHTTP(w, r)
	})
}

// registerLimitMetrics exports the connection and API failure limits.
func (s *Server) registerLimitMetrics() {
	s.registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tunneld_conns_refused_total", Help: "Connections closed because their address had too many non-WebSocket connections open.",
		}, func() float64 { return float64(s.conns.refused.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tunneld_conns_pending", Help: "Open connections that are not WebSockets or MQTT sessions.",
		}, func() float64 { return float64(s.conns.pendingCount()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tunneld_api_rate_limited_total", Help: "API requests refused (429) because their address failed authentication too often.",
		}, func() float64 { return float64(s.apiLimit.Stats().Refused) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tunneld_api_addresses_blocked_total", Help: "Times an address was blocked for failing API authentication too often.",
		}, func() float64 { return float64(s.apiLimit.Stats().Blocks) }),
	)
}

// Addr returns the listener's address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL returns the base URL of the API (https://host:port or http://...).
func (s *Server) URL() string { return s.scheme + "://" + s.ln.Addr().String() }

// CAPath returns the generated development CA's path, or "".
func (s *Server) CAPath() string { return s.caPath }

// DeviceCAPath returns the device CA certificate's path when device
// certificates are verified (MQTT over TLS on the embedded broker), or "".
func (s *Server) DeviceCAPath() string { return s.deviceCAPath }

// MQTTOnTLSPort reports whether MQTT (ALPN x-amzn-mqtt-ca) is served on
// the main TLS listener.
func (s *Server) MQTTOnTLSPort() bool { return s.mqttALPN }

// CredentialsPath returns the generated credentials file, or "".
func (s *Server) CredentialsPath() string { return s.credPath }

// Run serves until ctx ends, then shuts down: the listener closes, API
// requests in flight finish, and the relay drops every WebSocket without a
// close frame once what it relayed has gone out (tunnels outlive a restart;
// clients reconnect as after a crash, see relay.Shutdown).
func (s *Server) Run(ctx context.Context) error {
	s.printBanner()
	errc := make(chan error, 3)
	sweepCtx, stopSweep := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.api.Run(sweepCtx)
	}()
	if s.mux != nil {
		go func() { errc <- s.mux.Serve() }()
	}
	go func() { errc <- s.http.Serve(s.httpLn) }()
	if s.node != nil {
		wg.Add(1)
		go func() { defer wg.Done(); s.node.Run(sweepCtx) }()
	}
	s.logger.Info("tunneld listening", "addr", s.ln.Addr().String(), "tls", s.scheme == "https")
	var err error
	reason := "asked to stop"
	select {
	case <-ctx.Done():
		if c := context.Cause(ctx); c != nil && c != context.Canceled {
			reason = c.Error()
		}
	case err = <-errc:
		reason = "listener failed: " + err.Error()
	}
	if s.node != nil && err == nil {
		s.node.Drain(context.Background(), s.cfg.Cluster.drainGrace())
	}
	t0 := time.Now()
	peers := s.relay.Stats().Peers
	s.logger.Info("tunneld shutting down", "reason", reason, "api_requests_in_flight", s.inflight.Load(), "peers", peers)
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if s.mux != nil {
		s.mux.Close() // stop accepting first, as Shutdown does for its own listener
	}
	if serr := s.http.Shutdown(shutCtx); serr != nil {
		s.logger.Warn("shutdown: API requests still running at the deadline were cut", "api_requests_in_flight", s.inflight.Load(), "err", serr)
	} else {
		s.logger.Info("shutdown: API requests finished", "waited", time.Since(t0).Round(time.Millisecond))
	}
	if serr := s.relay.Shutdown(shutCtx); serr != nil {
		s.logger.Warn("shutdown: tunnel connections not all closed by the deadline", "err", serr)
	} else {
		s.logger.Info("shutdown: tunnel connections dropped; their clients reconnect when tunneld is back", "peers", peers)
	}
	if s.node != nil {
		s.node.Close()
	}
	stopSweep()
	if s.notifier != nil {
		s.notifier.close()
	}
	wg.Wait()
	s.Close()
	s.logger.Info("tunneld stopped", "took", time.Since(t0).Round(time.Millisecond))
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// Close releases storage. Run calls it; it is idempotent.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		if s.mux != nil {
			s.mux.Close()
		}
		s.ln.Close()
		err = s.store.Close()
		s.lock.Close()
	})
	return err
}

func (s *Server) printBanner() {
	w := s.cfg.Banner
	if w == nil {
		return
	}
	base := s.URL()
	wsBase := strings.Replace(base, "http", "ws", 1)
	fmt.Fprintf(w, "tunneld is listening on %s\n", base)
	var env []string
	if s.caPath != "" {
		fmt.Fprintf(w, "  TLS: self-signed; trust the CA at %s\n", s.caPath)
		env = append(env, "AWS_CA_BUNDLE="+s.caPath)
	}
	if s.credPath != "" {
		fmt.Fprintf(w, "  API access key: %s\n", s.credPath)
		env = append(env, "AWS_SHARED_CREDENTIALS_FILE="+s.credPath)
	}
	env = append(env, "AWS_REGION="+s.cfg.Region, "AWS_DEFAULT_REGION="+s.cfg.Region)
	if s.notifier != nil {
		fmt.Fprintf(w, "  Devices: %s\n", s.notifier.describe(s.cfg.MQTT.TopicPrefix))
		if warn := s.notifier.anonymousWarning(); warn != "" {
			fmt.Fprintf(w, "    %s\n", warn)
		}
	}
	if s.mqttALPN {
		fmt.Fprintf(w, "  AWS IoT Device Client: MQTT on this port (ALPN %s) with a device certificate from the CA at %s\n", MQTTALPN, s.deviceCAPath)
		fmt.Fprintf(w, "    issue one: tunneld device create --data-dir %s --thing <thing> --endpoint <host> --out <dir>\n", s.cfg.DataDir)
	}
	fmt.Fprintf(w, "Open a tunnel:\n  export %s\n", strings.Join(env, " "))
	fmt.Fprintf(w, "  aws iotsecuretunneling open-tunnel --endpoint-url %s --destination-config services=SSH\n", base)
	caFlag := ""
	if s.caPath != "" {
		caFlag = " -c " + s.caPath
	}
	fmt.Fprintf(w, "Connect its ends (tokens from the open-tunnel output):\n")
	fmt.Fprintf(w, "  localproxy -m dst -e %s%s -d SSH=localhost:22 -t <destinationAccessToken>\n", wsBase, caFlag)
	fmt.Fprintf(w, "  localproxy -m src -e %s%s -s SSH=5555 -t <sourceAccessToken>\n", wsBase, caFlag)
	fmt.Fprintf(w, "  ssh -p 5555 user@localhost\n")
}
