package notify

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// ClientConfig configures a ClientPublisher. The zero value is not usable:
// URL is required; every other field has a default.
type ClientConfig struct {
	// URL is the broker: tcp:// or mqtt:// (plain), ssl://, tls:// or
	// mqtts:// (TLS), ws:// or wss:// (MQTT over WebSocket; give the path,
	// e.g. ws://host:8080/mqtt). A missing port means 1883, 8883, 80 or 443
	// by scheme. User information in the URL is refused: use Username.
	URL string
	// ClientID is the MQTT client identifier (default "tunneld-" and 16
	// random hex digits). Two clients with one ID disconnect each other:
	// give each tunneld node its own.
	ClientID string
	// Username and Password authenticate to the broker (MQTT 3.1.1
	// CONNECT); both optional.
	Username, Password string
	// CAFile is a PEM bundle of CAs trusted for the broker's certificate
	// (default: the system roots). TLS schemes only.
	CAFile string
	// CertFile and KeyFile are a PEM client certificate and key for mutual
	// TLS (AWS IoT Core requires one). TLS schemes only.
	CertFile, KeyFile string
	// TLSConfig, when set, is used (cloned) instead of CAFile, CertFile
	// and KeyFile.
	TLSConfig *tls.Config
	// TopicPrefix replaces "$aws" in "$aws/things/<thing>/tunnels/notify",
	// for brokers that reserve '$' topics (default DefaultTopicPrefix).
	TopicPrefix string
	// ConnectTimeout bounds one connection attempt, CONNACK included
	// (default 10s).
	ConnectTimeout time.Duration
	// MaxReconnectInterval caps the backoff between connection attempts
	// (default 30s).
	MaxReconnectInterval time.Duration
	// KeepAlive is the MQTT keep-alive interval (default 30s).
	KeepAlive time.Duration
	// PublishTimeout bounds a NotifyTunnel whose ctx has no deadline,
	// and the hand-over of a publish to the connection (default 10s).
	PublishTimeout time.Duration
	// Logger receives connection events (nil = discard).
	Logger *slog.Logger
}

var defaultPorts = map[string]string{
	"tcp": "1883", "mqtt": "1883",
	"ssl": "8883", "tls": "8883", "mqtts": "8883",
	"ws": "80", "wss": "443",
}

func isTLSScheme(s string) bool {
	return s == "ssl" || s == "tls" || s == "mqtts" || s == "wss"
}

// ClientPublisher publishes notifications through an external MQTT broker
// (Mosquitto, EMQX, AWS IoT Core, ...) with paho over MQTT 3.1.1, clean
// session. It connects in the background and reconnects on its own (with
// backoff up to MaxReconnectInterval); while
// it is not connected NotifyTunnel fails at once with ErrNotConnected
// (wrap it in Retrying to queue and retry). Publishes are QoS 1 and
// NotifyTunnel returns when the broker's PUBACK arrives.
type ClientPublisher struct {
	c      mqtt.Client
	cfg    ClientConfig
	log    *slog.Logger
	broker string // URL without user information, for logs

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // connectLoop
	lost   chan struct{}  // capacity 1: the connection was lost

	mu        sync.Mutex
	up        chan struct{} // closed while connected; replaced when the connection is lost
	lastToken mqtt.Token    // connectLoop's current attempt
	closed    bool
}

// NewClientPublisher checks cfg, loads its TLS material and starts
// connecting in the background; it does not wait for the broker (see
// WaitConnected). Configuration errors are reported here.
func NewClientPublisher(cfg ClientConfig) (*ClientPublisher, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		// url.Error repeats the URL, which may hold a password.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("notify: broker URL: %w", err)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	port, ok := defaultPorts[u.Scheme]
	switch {
	case !ok:
		return nil, fmt.Errorf("notify: broker URL %q: scheme must be tcp, mqtt, ssl, tls, mqtts, ws or wss", u.Redacted())
	case u.Host == "":
		return nil, fmt.Errorf("notify: broker URL %q has no host", u.Redacted())
	case u.User != nil:
		return nil, fmt.Errorf("notify: broker URL %q: put credentials in the username and password settings, not in the URL", u.Redacted())
	}
	if u.Port() == "" {
		u.Host = net.JoinHostPort(u.Hostname(), port)
	}
	if cfg.TopicPrefix == "" {
		cfg.TopicPrefix = DefaultTopicPrefix
	}
	if !ValidTopicPrefix(cfg.TopicPrefix) {
		return nil, fmt.Errorf("notify: topic prefix %q: must be non-empty, without '+', '#' or a leading or trailing '/'", cfg.TopicPrefix)
	}
	if cfg.ClientID == "" {
		var b [8]byte
		rand.Read(b[:])
		cfg.ClientID = "tunneld-" + hex.EncodeToString(b[:])
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.MaxReconnectInterval <= 0 {
		cfg.MaxReconnectInterval = 30 * time.Second
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = 30 * time.Second
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}

	var tlsCfg *tls.Config
	if isTLSScheme(u.Scheme) {
		if tlsCfg, err = clientTLS(cfg); err != nil {
			return nil, err
		}
	} else if cfg.TLSConfig != nil || cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" {
		return nil, fmt.Errorf("notify: TLS settings given but broker URL %q is not TLS: use ssl://, tls://, mqtts:// or wss://", u.Redacted())
	}

	ctx, cancel := context.WithCancel(context.Background())
	p := &ClientPublisher{
		cfg:    cfg,
		log:    cfg.Logger.With("broker", u.Redacted()),
		broker: u.Redacted(),
		ctx:    ctx,
		cancel: cancel,
		up:     make(chan struct{}),
		lost:   make(chan struct{}, 1),
	}
	opts := mqtt.NewClientOptions().
		AddBroker(u.String()).
		SetClientID(cfg.ClientID).
		SetUsername(cfg.Username).
		SetPassword(cfg.Password).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false). // connectLoop reconnects
		SetConnectRetry(false).
		SetConnectTimeout(cfg.ConnectTimeout).
		SetKeepAlive(cfg.KeepAlive).
		SetPingTimeout(min(cfg.KeepAlive, 10*time.Second)).
		SetWriteTimeout(cfg.PublishTimeout).
		SetOnConnectHandler(func(mqtt.Client) { p.setUp(true) }).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			p.setUp(false)
			p.log.Warn("notify: lost the MQTT broker connection, reconnecting", "error", err)
			select {
			case p.lost <- struct{}{}:
			default:
			}
		}).
		SetConnectionNotificationHandler(func(_ mqtt.Client, n mqtt.ConnectionNotification) {
			switch n := n.(type) {
			case mqtt.ConnectionNotificationFailed:
				p.log.Warn("notify: cannot connect to the MQTT broker", "error", n.Reason)
			case mqtt.ConnectionNotificationConnecting:
				p.log.Debug("notify: connecting to the MQTT broker", "reconnect", n.IsReconnect, "attempt", n.Attempt)
			}
		})
	if tlsCfg != nil {
		opts.SetTLSConfig(tlsCfg)
	}
	p.c = mqtt.NewClient(opts)
	p.wg.Add(1)
	go p.connectLoop()
	return p, nil
}

func clientTLS(cfg ClientConfig) (*tls.Config, error) {
	if cfg.TLSConfig != nil {
		return cfg.TLSConfig.Clone(), nil
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("notify: broker CA file: %w", err)
		}
		t.RootCAs = x509.NewCertPool()
		if !t.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("notify: broker CA file %s holds no PEM certificate", cfg.CAFile)
		}
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("notify: a client certificate needs both a certificate file and a key file")
	}
	if cfg.CertFile != "" {
		c, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("notify: client certificate: %w", err)
		}
		t.Certificates = []tls.Certificate{c}
	}
	return t, nil
}

// connectLoop keeps the client connected until Close: it connects,
// waits for the connection to be lost, and connects again, with jittered
// exponential backoff between attempts (reset once a connection has held
// for a minute, so that a broker that keeps kicking the client, e.g. for a
// duplicate client ID, is not hammered). It replaces paho's auto-reconnect,
// whose backoff sleeps cannot be interrupted by Close.
func (p *ClientPublisher) connectLoop() {
	defer p.wg.Done()
	const minBackoff, stable = 500 * time.Millisecond, time.Minute
	backoff := minBackoff
	for {
		tok := p.c.Connect()
		p.mu.Lock()
		p.lastToken = tok
		p.mu.Unlock()
		select {
		case <-tok.Done():
		case <-p.ctx.Done():
			return
		}
		if tok.Error() == nil {
			upAt := time.Now()
			select {
			case <-p.lost:
			case <-p.ctx.Done():
				return
			}
			if time.Since(upAt) >= stable {
				backoff = minBackoff
			}
		}
		t := time.NewTimer(jitter(backoff))
		select {
		case <-t.C:
		case <-p.ctx.Done():
			t.Stop()
			return
		}
		backoff = min(2*backoff, p.cfg.MaxReconnectInterval)
	}
}

func (p *ClientPublisher) setUp(up bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.up:
		if !up {
			p.up = make(chan struct{})
		}
	default:
		if up {
			close(p.up)
			p.log.Info("notify: connected to the MQTT broker", "client_id", p.cfg.ClientID)
		}
	}
}

// WaitConnected waits until the publisher is connected to its broker, or
// ctx is done.
func (p *ClientPublisher) WaitConnected(ctx context.Context) error {
	for {
		p.mu.Lock()
		up, closed := p.up, p.closed
		p.mu.Unlock()
		if closed {
			return ErrClosed
		}
		select {
		case <-up:
			if p.c.IsConnectionOpen() {
				return nil
			}
			// The OnConnect callback ran but the connection is already gone
			// again; wait for the next one.
			t := time.NewTimer(50 * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Connected reports whether the publisher currently holds a connection.
func (p *ClientPublisher) Connected() bool { return p.c.IsConnectionOpen() }

// NotifyTunnel publishes n at QoS 1 and waits for the broker's PUBACK,
// until ctx is done (or PublishTimeout if ctx has no deadline). It fails at
// once with ErrNotConnected while there is no connection. When it returns
// a ctx error the message may still reach the broker later.
func (p *ClientPublisher) NotifyTunnel(ctx context.Context, n Notification) error {
	payload, err := n.Marshal()
	if err != nil {
		return err
	}
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if !p.c.IsConnectionOpen() {
		// paho would keep the message for after a reconnect; Retrying is a
		// better place for that (bounded, logged, ordered).
		return fmt.Errorf("%w (%s)", ErrNotConnected, p.broker)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.cfg.PublishTimeout)
		defer cancel()
	}
	topic := NotifyTopic(p.cfg.TopicPrefix, n.ThingName)
	tok := p.c.Publish(topic, 1, false, payload)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			if errors.Is(err, mqtt.ErrNotConnected) {
				return fmt.Errorf("%w (%s)", ErrNotConnected, p.broker)
			}
			return fmt.Errorf("notify: publish to %s: %w", topic, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("notify: no PUBACK for %s: %w", topic, ctx.Err())
	}
}

// Close disconnects from the broker (waiting up to 250ms for in-flight
// work) and waits for the publisher's goroutines; a connection attempt in
// progress is awaited (at most ConnectTimeout). Idempotent.
func (p *ClientPublisher) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
	p.c.Disconnect(250)
	p.mu.Lock()
	tok := p.lastToken
	p.mu.Unlock()
	if tok != nil {
		tok.WaitTimeout(p.cfg.ConnectTimeout)
	}
	return nil
}
