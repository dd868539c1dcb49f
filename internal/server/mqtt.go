package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/sectun/sectun/internal/notify"
	"github.com/sectun/sectun/internal/notify/broker"
	"github.com/sectun/sectun/internal/server/api"
)

// MQTTConfig selects how tunnel notifications reach devices: an embedded
// broker (the default) or an external one.
type MQTTConfig struct {
	// Off disables notifications entirely.
	Off bool
	// Listen is the embedded broker's plain TCP address; default
	// 127.0.0.1:1883. Anonymous clients are accepted only on loopback.
	Listen string
	// TLSListen, when set, adds a TLS listener to the embedded broker using
	// TLSCertFile/TLSKeyFile (default: the server's own certificate).
	TLSListen               string
	TLSCertFile, TLSKeyFile string
	// ClientCAFile is a PEM bundle of further CAs (an existing device PKI)
	// whose certificates identify devices, trusted beside the device CA in
	// DataDir/devices, on the main TLS listener (ALPN x-amzn-mqtt-ca) and
	// on the broker's TLS listener. The certificate's CommonName is the
	// thing name.
	ClientCAFile string
	// NoALPN turns off MQTT on the main TLS listener. By default, when the
	// server uses TLS and the embedded broker, a client that offers the
	// ALPN protocol x-amzn-mqtt-ca there (the AWS IoT Device Client and
	// the AWS device SDKs on port 443) is served by the broker; it must
	// present a certificate from the device CA (tunneld device create) or
	// from ClientCAFile, whose CommonName names its thing. HTTPS clients
	// are never asked for a certificate.
	NoALPN bool
	// UsersFile lists `name password [admin]` lines for the embedded broker.
	UsersFile string
	// NoAnonymous refuses anonymous clients even on loopback.
	NoAnonymous bool
	// TopicPrefix replaces "$aws" in $aws/things/<thing>/tunnels/notify.
	TopicPrefix string

	// Limits of the embedded broker (see broker.Config): 0 means the
	// default, negative means none. MaxConns (all MQTT connections, every
	// listener) defaults to what RLIMIT_NOFILE leaves after the reserve,
	// at most broker.DefaultMaxSessions; the others default to
	// broker.Default*.
	MaxConns, MaxConnsPerAddr, MaxConnsPerIdentity int
	MaxSessions, MaxSessionsPerIdentity            int
	MaxQueuedPerSession, MaxQueued                 int
	// ReserveConns are the connection slots of the main listener (of
	// Config.MaxConns) and the file descriptors that MQTT connections can
	// never take: kept for HTTPS, the API and /tunnel. Default an eighth
	// of Config.MaxConns (or of the descriptors, if fewer), at least 16;
	// negative means none.
	ReserveConns int
	// BrokerURL selects an external broker (tcp://, ssl://, ws://, wss://)
	// instead of the embedded one.
	BrokerURL string
	// ClientID, Username, PasswordFile, CAFile, CertFile and KeyFile
	// configure the connection to the external broker.
	ClientID, Username, PasswordFile string
	CAFile, CertFile, KeyFile        string
}

// notifier is what the server runs for notifications.
type notifier struct {
	retrying *notify.Retrying
	broker   *broker.Broker
	client   *notify.ClientPublisher
	url      string // external broker
}

// NotifyTunnel implements api.Notifier: it queues the notification for
// delivery with retries and never blocks the API.
func (n *notifier) NotifyTunnel(ctx context.Context, a api.Notification) {
	n.retrying.NotifyTunnel(ctx, notify.Notification{
		ThingName: a.ThingName, Token: a.Token, Region: a.Region, Services: a.Services, TunnelID: a.TunnelID,
	})
}

func (n *notifier) close() {
	n.retrying.Close()
	if n.broker != nil {
		n.broker.Close()
	}
	if n.client != nil {
		n.client.Close()
	}
}

// describe says where devices connect, for the banner.
func (n *notifier) describe(prefix string) string {
	if prefix == "" {
		prefix = notify.DefaultTopicPrefix
	}
	topic := notify.NotifyTopic(prefix, "<thing>")
	if n.broker != nil {
		var addrs []string
		if a := n.broker.Addr(); a != nil {
			addrs = append(addrs, "mqtt://"+a.String())
		}
		if a := n.broker.TLSAddr(); a != nil {
			addrs = append(addrs, "mqtts://"+a.String())
		}
		return fmt.Sprintf("embedded MQTT broker on %s, notifications on %s", strings.Join(addrs, " and "), topic)
	}
	return fmt.Sprintf("notifications published to %s on %s", n.url, topic)
}

// anonymousWarning says, for the banner, that anonymous MQTT clients are
// accepted and what that means; "" when they are not.
func (n *notifier) anonymousWarning() string {
	if n.broker == nil {
		return ""
	}
	var addrs []string
	for _, a := range n.broker.AnonymousAddrs() {
		addrs = append(addrs, a.String())
	}
	if len(addrs) == 0 {
		return ""
	}
	return fmt.Sprintf("anonymous MQTT clients are accepted on %s (loopback): any local process can act as any thing that holds no session authenticated by certificate or password, and receive its notifications (destination tokens); --mqtt-no-anonymous turns this off", strings.Join(addrs, " and "))
}

// startNotifier starts the external broker client or the embedded broker.
// devices, when set, verifies device certificates on the embedded
// broker's TLS listener.
func startNotifier(ctx context.Context, cfg MQTTConfig, serverCert, serverKey string, devices *x509.CertPool, logger *slog.Logger) (*notifier, error) {
	n := &notifier{}
	var pub notify.Publisher
	if cfg.BrokerURL != "" {
		var password string
		if cfg.PasswordFile != "" {
			b, err := os.ReadFile(cfg.PasswordFile)
			if err != nil {
				return nil, fmt.Errorf("--mqtt-password-file: %w", err)
			}
			password = strings.TrimSpace(string(b))
		}
		c, err := notify.NewClientPublisher(notify.ClientConfig{
			URL: cfg.BrokerURL, ClientID: cfg.ClientID, Username: cfg.Username, Password: password,
			CAFile: cfg.CAFile, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile,
			TopicPrefix: cfg.TopicPrefix, Logger: logger,
		})
		if err != nil {
			return nil, fmt.Errorf("--mqtt-broker: %w", err)
		}
		n.client, pub, n.url = c, c, cfg.BrokerURL
	} else {
		bc := broker.Config{
			Addr:        cfg.Listen,
			TLSAddr:     cfg.TLSListen,
			NoAnonymous: cfg.NoAnonymous,
			TopicPrefix: cfg.TopicPrefix,
			Logger:      logger,

			MaxConns:               cfg.MaxConns,
			MaxConnsPerAddr:        cfg.MaxConnsPerAddr,
			MaxConnsPerIdentity:    cfg.MaxConnsPerIdentity,
			MaxSessions:            cfg.MaxSessions,
			MaxSessionsPerIdentity: cfg.MaxSessionsPerIdentity,
			MaxQueuedPerSession:    cfg.MaxQueuedPerSession,
			MaxQueued:              cfg.MaxQueued,
		}
		if bc.Addr == "" {
			bc.Addr = "127.0.0.1:1883"
		}
		if bc.TLSAddr != "" {
			certFile, keyFile := cfg.TLSCertFile, cfg.TLSKeyFile
			if certFile == "" {
				certFile, keyFile = serverCert, serverKey
			}
			if certFile == "" {
				return nil, errors.New("--mqtt-tls-listen needs a certificate: --mqtt-tls-cert/--mqtt-tls-key, or TLS on the main listener")
			}
			pair, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, fmt.Errorf("--mqtt-tls-listen: certificate: %w", err)
			}
			// A device certificate authenticates; clients without one may
			// still use a password.
			bc.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, CipherSuites: tlsCipherSuites, Certificates: []tls.Certificate{pair}}
			if devices != nil {
				bc.TLSConfig.ClientCAs = devices
				bc.TLSConfig.ClientAuth = tls.VerifyClientCertIfGiven
			}
		}
		if cfg.UsersFile != "" {
			users, err := broker.ReadUsersFile(cfg.UsersFile)
			if err != nil {
				return nil, fmt.Errorf("--mqtt-users: %w", err)
			}
			bc.Users = users
		}
		b, err := broker.New(bc)
		if err != nil {
			return nil, fmt.Errorf("mqtt broker: %w", err)
		}
		if err := b.Start(context.WithoutCancel(ctx)); err != nil {
			return nil, fmt.Errorf("mqtt broker: %w", err)
		}
		n.broker, pub = b, b
	}
	n.retrying = notify.NewRetrying(pub, notify.RetryConfig{Logger: logger})
	return n, nil
}
