package agent

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sectun/sectun/internal/notify"
	"github.com/sectun/sectun/tunnel"
)

// DefaultServices are the local addresses of the services a configuration
// does not map, as the AWS IoT Device Client does: SSH on port 22 and VNC
// on port 5900.
var DefaultServices = map[string]string{
	"SSH": "localhost:22",
	"VNC": "localhost:5900",
}

// Defaults of Config fields.
const (
	DefaultMaxTunnels           = 16
	DefaultKeepAlive            = 30 * time.Second
	DefaultConnectTimeout       = 10 * time.Second
	DefaultMaxReconnectInterval = time.Minute
	DefaultTunnelConnectTimeout = 2 * time.Minute
	DefaultDialRetries          = 2
)

// Config configures an Agent (New) or a single session (RunToken). The zero
// value of every field means its default; ThingName and BrokerURL are
// required by New only.
type Config struct {
	// ThingName is the device's thing name: it selects the notify topic
	// and is the default MQTT client ID.
	ThingName string
	// ClientID is the MQTT client identifier (default ThingName). AWS IoT
	// policies and tunneld's embedded broker accept "<thing>" or
	// "<thing>@<suffix>". Two clients with one ID disconnect each other.
	ClientID string
	// BrokerURL is the MQTT broker: tcp:// or mqtt:// (plain), ssl://,
	// tls:// or mqtts:// (TLS), ws:// or wss:// (MQTT over WebSocket, with
	// the path). A missing port means 1883, 8883, 80 or 443 by scheme. TLS
	// on port 443 offers the ALPN protocol x-amzn-mqtt-ca, which AWS IoT
	// Core needs for MQTT with client certificates on that port.
	BrokerURL string
	// Username and Password authenticate to the broker (MQTT CONNECT);
	// both optional. The password is never logged.
	Username, Password string
	// CAFile is a PEM bundle of CAs trusted for the broker's certificate
	// (default: the system roots), e.g. AmazonRootCA1.pem.
	CAFile string
	// CertFile and KeyFile are the device's PEM certificate and key for
	// mutual TLS (AWS IoT Core requires them).
	CertFile, KeyFile string
	// BrokerTLS, when set, is used (cloned) instead of CAFile, CertFile and
	// KeyFile.
	BrokerTLS *tls.Config
	// BrokerALPN are the ALPN protocols offered to a TLS broker. nil means
	// "x-amzn-mqtt-ca" on port 443 (AWS IoT Core's MQTT with client
	// certificates there; tunneld's shared TLS port selects MQTT the same
	// way) and none elsewhere.
	BrokerALPN []string
	// TopicPrefix replaces "$aws" in "$aws/things/<thing>/tunnels/notify"
	// (default notify.DefaultTopicPrefix).
	TopicPrefix string
	// KeepAlive is the MQTT keep-alive interval (default 30 s).
	KeepAlive time.Duration
	// ConnectTimeout bounds one MQTT connection attempt, CONNACK and
	// SUBACK included (default 10 s).
	ConnectTimeout time.Duration
	// MaxReconnectInterval caps the jittered exponential backoff between
	// MQTT connection attempts (default 1 min; the first retry comes after
	// about half a second).
	MaxReconnectInterval time.Duration

	// TunnelEndpoint is the tunneling service every session connects to
	// ("wss://host:port", "ws://host:port" or "host[:port]", see
	// tunnel.Config.Endpoint). "" means the AWS endpoint of the region in
	// the notification (data.tunneling.iot.<region>.amazonaws.com).
	TunnelEndpoint string
	// TunnelRegion is used by RunToken when TunnelEndpoint is "".
	TunnelRegion string
	// TunnelTLS configures wss:// sessions (nil: the system roots); see
	// tunnel.TLSConfig.
	TunnelTLS *tls.Config
	// TunnelConnectTimeout bounds a new session's first connection to the
	// tunneling service, retries included (default 2 min). After that
	// the session reconnects by itself until its tunnel closes.
	TunnelConnectTimeout time.Duration

	// Services maps service IDs to local addresses ("host:port"). Service
	// IDs it lacks fall back to DefaultServices. A notification naming a
	// service with no address is ignored.
	Services map[string]string
	// V1Service names the service whose address serves tunnels without
	// service IDs (V1 tunnels); default "SSH".
	V1Service string
	// MaxTunnels bounds the sessions running at once (default 16).
	// Notifications beyond it are refused with a log.
	MaxTunnels int
	// DialRetries is the number of further attempts after a failed
	// connection to a local service before the tunnel connection is
	// rejected (default 2; negative: none).
	DialRetries int
	// DialRetryDelay is the pause between those attempts (default 1 s).
	DialRetryDelay time.Duration
	// MaxConnsPerTunnel bounds the simultaneous connections of one session
	// (default: the tunnel package's, 128).
	MaxConnsPerTunnel int

	// Logger receives the agent's logs; nil discards them.
	Logger *slog.Logger
	// OnEvent, if set, is called with every Event. It is called from
	// several goroutines, never with a lock held; it must be quick.
	OnEvent func(Event)
	// OnTunnelEvent, if set, receives every tunnel.Event of every session,
	// with the session's id (token.Short of its access token). A session's
	// events come in order from one goroutine (tunnel.Config.OnEvent);
	// different sessions call it concurrently. It must be quick.
	OnTunnelEvent func(session string, ev tunnel.Event)
}

// brokerDefaultPorts are the ports implied by the broker URL's scheme.
var brokerDefaultPorts = map[string]string{
	"tcp": "1883", "mqtt": "1883",
	"ssl": "8883", "tls": "8883", "mqtts": "8883",
	"ws": "80", "wss": "443",
}

func tlsScheme(s string) bool { return s == "ssl" || s == "tls" || s == "mqtts" || s == "wss" }

// brokerURL parses and normalizes a broker URL: known scheme, a host, an
// explicit port, no user information (credentials go in Username and
// Password, so that URLs can be logged).
func brokerURL(raw string) (*url.URL, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, fmt.Errorf("%w: no MQTT broker URL (e.g. ssl://xxxx-ats.iot.us-east-1.amazonaws.com:8883 or tcp://127.0.0.1:1883)", ErrInvalidConfig)
	}
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the URL, which may hold a password
		}
		return nil, fmt.Errorf("%w: broker URL: %v", ErrInvalidConfig, err)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	port, ok := brokerDefaultPorts[u.Scheme]
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: broker URL %q: scheme must be tcp, mqtt, ssl, tls, mqtts, ws or wss", ErrInvalidConfig, u.Redacted())
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("%w: broker URL %q has no host", ErrInvalidConfig, u.Redacted())
	case u.User != nil:
		return nil, fmt.Errorf("%w: broker URL %q: put credentials in the username and password settings, not in the URL", ErrInvalidConfig, u.Redacted())
	}
	if u.Port() == "" {
		u.Host = net.JoinHostPort(u.Hostname(), port)
	} else if n, err := strconv.Atoi(u.Port()); err != nil || n < 1 || n > 65535 {
		return nil, fmt.Errorf("%w: broker URL %q: bad port", ErrInvalidConfig, u.Redacted())
	}
	return u, nil
}

// brokerTLS builds the MQTT client's TLS configuration.
func (c *Config) brokerTLS(u *url.URL) (*tls.Config, error) {
	if !tlsScheme(u.Scheme) {
		if c.BrokerTLS != nil || c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" {
			return nil, fmt.Errorf("%w: TLS files given but broker URL %q is not TLS: use ssl://, mqtts:// or wss://", ErrInvalidConfig, u.Redacted())
		}
		return nil, nil
	}
	var t *tls.Config
	if c.BrokerTLS != nil {
		t = c.BrokerTLS.Clone()
	} else {
		t = &tls.Config{MinVersion: tls.VersionTLS12}
		if c.CAFile != "" {
			pem, err := os.ReadFile(c.CAFile)
			if err != nil {
				return nil, fmt.Errorf("%w: broker CA file: %v", ErrInvalidConfig, err)
			}
			t.RootCAs = x509.NewCertPool()
			if !t.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%w: broker CA file %s holds no PEM certificate", ErrInvalidConfig, c.CAFile)
			}
		}
		if (c.CertFile == "") != (c.KeyFile == "") {
			return nil, fmt.Errorf("%w: a device certificate needs both a certificate file and a key file", ErrInvalidConfig)
		}
		if c.CertFile != "" {
			pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("%w: device certificate: %v", ErrInvalidConfig, err)
			}
			t.Certificates = []tls.Certificate{pair}
		}
	}
	switch {
	case c.BrokerALPN != nil:
		t.NextProtos = slices.Clone(c.BrokerALPN)
	case u.Scheme != "wss" && u.Port() == "443" && len(t.NextProtos) == 0:
		// AWS IoT Core serves MQTT with client certificates on 443 only
		// to clients that ask for it by ALPN.
		t.NextProtos = []string{"x-amzn-mqtt-ca"}
	}
	return t, nil
}

// serviceAddr returns the local address of a service ID: Services, then
// DefaultServices.
func (c *Config) serviceAddr(id string) (string, bool) {
	if a, ok := c.Services[id]; ok {
		return a, true
	}
	a, ok := DefaultServices[id]
	return a, ok
}

// mapping returns the local address of every service of a tunnel, keyed
// by service ID ("" for a V1 tunnel without service IDs), or an error
// naming the first service without one.
func (c *Config) mapping(services []string) (map[string]string, error) {
	if len(services) == 0 {
		v1 := c.V1Service
		if v1 == "" {
			v1 = "SSH"
		}
		a, ok := c.serviceAddr(v1)
		if !ok {
			return nil, fmt.Errorf("%w: the tunnel has no service IDs and service %q (used for such tunnels) has no address", ErrUnmappedService, v1)
		}
		return map[string]string{"": a}, nil
	}
	m := make(map[string]string, len(services))
	for _, s := range services {
		a, ok := c.serviceAddr(s)
		if !ok {
			return nil, fmt.Errorf("%w: service %q has no local address: add it to the services setting (e.g. --map %s=localhost:PORT)", ErrUnmappedService, s, s)
		}
		m[s] = a
	}
	return m, nil
}

// normalize checks the settings every mode needs and fills in defaults.
func (c *Config) normalize() error {
	for id, addr := range c.Services {
		if !notify.ValidServiceID(id) {
			return fmt.Errorf("%w: service ID %q is not 1-128 letters, digits, ':', '_' or '-'", ErrInvalidConfig, id)
		}
		if err := checkAddr(addr); err != nil {
			return fmt.Errorf("%w: service %s: %v", ErrInvalidConfig, id, err)
		}
	}
	if c.V1Service == "" {
		c.V1Service = "SSH"
	}
	if c.MaxTunnels == 0 {
		c.MaxTunnels = DefaultMaxTunnels
	}
	if c.MaxTunnels < 0 || c.MaxConnsPerTunnel < 0 {
		return fmt.Errorf("%w: negative MaxTunnels or MaxConnsPerTunnel", ErrInvalidConfig)
	}
	if c.DialRetries == 0 {
		c.DialRetries = DefaultDialRetries
	}
	if c.DialRetryDelay <= 0 {
		c.DialRetryDelay = time.Second
	}
	if c.TunnelConnectTimeout <= 0 {
		c.TunnelConnectTimeout = DefaultTunnelConnectTimeout
	}
	if c.KeepAlive <= 0 {
		c.KeepAlive = DefaultKeepAlive
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.MaxReconnectInterval <= 0 {
		c.MaxReconnectInterval = DefaultMaxReconnectInterval
	}
	if c.TopicPrefix == "" {
		c.TopicPrefix = notify.DefaultTopicPrefix
	}
	if !notify.ValidTopicPrefix(c.TopicPrefix) {
		return fmt.Errorf("%w: topic prefix %q: must be non-empty, without '+', '#' or a leading or trailing '/'", ErrInvalidConfig, c.TopicPrefix)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// checkAddr accepts "host:port" with a numeric port 1-65535.
func checkAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: want host:port", addr)
	}
	if host == "" {
		return fmt.Errorf("address %q has no host", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("address %q: port must be 1-65535", addr)
	}
	return nil
}

// ParseMapping parses "SERVICE=ADDRESS" as given to --map: ADDRESS is
// host:port, or a bare port meaning localhost:port. "SSH=22",
// "SSH=localhost:22" and "HTTP=[::1]:8080" are valid.
func ParseMapping(s string) (service, addr string, err error) {
	service, addr, ok := strings.Cut(s, "=")
	service, addr = strings.TrimSpace(service), strings.TrimSpace(addr)
	if !ok || service == "" || addr == "" {
		return "", "", fmt.Errorf("mapping %q: want SERVICE=HOST:PORT or SERVICE=PORT (e.g. SSH=localhost:22)", s)
	}
	if !notify.ValidServiceID(service) {
		return "", "", fmt.Errorf("mapping %q: service ID %q is not 1-128 letters, digits, ':', '_' or '-'", s, service)
	}
	if _, err := strconv.Atoi(addr); err == nil {
		addr = "localhost:" + addr
	}
	if err := checkAddr(addr); err != nil {
		return "", "", fmt.Errorf("mapping %q: %v", s, err)
	}
	return service, addr, nil
}

// File is the JSON configuration file of tunnel-agent. Paths are used as
// given (relative ones relative to the working directory). The five
// connection keys of an AWS IoT Device Client configuration ("endpoint",
// "cert", "key", "root-ca", "thing-name") are accepted too, so that the
// same file can serve both; any other unknown key is an error.
type File struct {
	// ThingName is Config.ThingName.
	ThingName string `json:"thingName,omitempty"`
	// ClientID is Config.ClientID.
	ClientID string `json:"clientId,omitempty"`
	// Broker is Config.BrokerURL.
	Broker string `json:"broker,omitempty"`
	// CA, Cert and Key are Config.CAFile, CertFile and KeyFile.
	CA   string `json:"ca,omitempty"`
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
	// Username is Config.Username.
	Username string `json:"username,omitempty"`
	// PasswordFile holds Config.Password (surrounding white space trimmed).
	PasswordFile string `json:"passwordFile,omitempty"`
	// TopicPrefix is Config.TopicPrefix.
	TopicPrefix string `json:"topicPrefix,omitempty"`
	// ALPN is Config.BrokerALPN.
	ALPN []string `json:"alpn,omitempty"`
	// TunnelEndpoint is Config.TunnelEndpoint.
	TunnelEndpoint string `json:"tunnelEndpoint,omitempty"`
	// TunnelCA and TunnelInsecure build Config.TunnelTLS (tunnel.TLSConfig).
	TunnelCA       string `json:"tunnelCa,omitempty"`
	TunnelInsecure bool   `json:"tunnelInsecure,omitempty"`
	// Services is Config.Services: service ID -> "host:port" (or a port).
	Services map[string]string `json:"services,omitempty"`
	// V1Service is Config.V1Service.
	V1Service string `json:"v1Service,omitempty"`
	// MaxTunnels is Config.MaxTunnels.
	MaxTunnels int `json:"maxTunnels,omitempty"`
	// LogLevel is debug, info, warn or error (for the command).
	LogLevel string `json:"logLevel,omitempty"`
	// MetricsListen and MetricsAllowRemote are the command's
	// --metrics-listen and --metrics-allow-remote.
	MetricsListen      string `json:"metricsListen,omitempty"`
	MetricsAllowRemote bool   `json:"metricsAllowRemote,omitempty"`

	// AWS IoT Device Client spellings.
	DCEndpoint  string `json:"endpoint,omitempty"`
	DCRootCA    string `json:"root-ca,omitempty"`
	DCThingName string `json:"thing-name,omitempty"`

	// Comment is the value of a "//" key, ignored: JSON has no comments,
	// so the sample /etc/sectun/agent.json explains itself there.
	Comment json.RawMessage `json:"//,omitempty"`
}

// MaxFileSize bounds a configuration file.
const MaxFileSize = 1 << 20

// ParseFile decodes a JSON configuration. It refuses unknown keys (a typo
// must not go unnoticed), trailing data and invalid mappings, and resolves
// the Device Client spellings: "endpoint" (an AWS IoT host name) becomes
// the broker ssl://<endpoint>:8883, "root-ca" the CA and "thing-name" the
// thing name, unless the native keys are also set.
func ParseFile(r io.Reader) (*File, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("agent: config file: %w", err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("agent: config file larger than %d bytes", MaxFileSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f File
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("agent: config file: %w", err)
	}
	if dec.More() {
		return nil, errors.New("agent: config file: data after the JSON object")
	}
	if f.ThingName == "" {
		f.ThingName = f.DCThingName
	}
	if f.CA == "" {
		f.CA = f.DCRootCA
	}
	if f.Broker == "" && f.DCEndpoint != "" {
		ep := f.DCEndpoint
		if !strings.Contains(ep, "://") {
			if _, _, err := net.SplitHostPort(ep); err != nil {
				ep = net.JoinHostPort(ep, "8883")
			}
			ep = "ssl://" + ep
		}
		f.Broker = ep
	}
	for _, id := range slices.Sorted(maps.Keys(f.Services)) {
		_, addr, err := ParseMapping(id + "=" + f.Services[id])
		if err != nil {
			return nil, fmt.Errorf("agent: config file: services: %w", err)
		}
		f.Services[id] = addr
	}
	if f.MaxTunnels < 0 {
		return nil, errors.New("agent: config file: maxTunnels must not be negative")
	}
	return &f, nil
}

// LoadFile reads and parses a JSON configuration file.
func LoadFile(path string) (*File, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("agent: config file: %w", err)
	}
	defer fh.Close()
	f, err := ParseFile(fh)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// ReadPasswordFile returns the content of a password file with surrounding
// white space trimmed. The error never contains the content.
func ReadPasswordFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("password file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
