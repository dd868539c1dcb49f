package devicetest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// ALPN is the protocol the Device Client offers for MQTT on port 443.
const ALPN = "x-amzn-mqtt-ca"

// SDKUsername is the kind of username the AWS device SDKs send (metrics,
// not a credential).
const SDKUsername = "?SDK=CPP&Version=1.0"

// MQTTConfig says how the emulated Device Client reaches the broker.
type MQTTConfig struct {
	// Addr is host:port of tunneld's TLS listener (443 for the real one).
	Addr string
	// ServerName is the name verified in tunneld's certificate: the Device
	// Client's "endpoint". Default: Addr's host.
	ServerName string
	// RootCAFile ("root-ca"), CertFile ("cert") and KeyFile ("key") are the
	// Device Client's files.
	RootCAFile, CertFile, KeyFile string
	// Thing is "thing-name": the client ID.
	Thing string
	// TopicPrefix replaces "$aws" (default "$aws").
	TopicPrefix string
	// Timeout bounds the connection and each acknowledgement (default 10 s).
	Timeout time.Duration
}

// MQTTClient is a connected emulated Device Client.
type MQTTClient struct {
	cfg   MQTTConfig
	c     mqtt.Client
	notes chan []byte
}

// ConnectMQTT connects the way the Device Client does.
func ConnectMQTT(cfg MQTTConfig) (*MQTTClient, error) {
	if cfg.TopicPrefix == "" {
		cfg.TopicPrefix = "$aws"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	tlsCfg, err := DeviceTLS(cfg.RootCAFile, cfg.CertFile, cfg.KeyFile, cfg.ServerName)
	if err != nil {
		return nil, err
	}
	tlsCfg.NextProtos = []string{ALPN}
	m := &MQTTClient{cfg: cfg, notes: make(chan []byte, 16)}
	opts := mqtt.NewClientOptions().
		AddBroker("ssl://" + cfg.Addr).
		SetTLSConfig(tlsCfg).
		SetClientID(cfg.Thing).
		SetUsername(SDKUsername).
		SetCleanSession(false).
		SetKeepAlive(1200 * time.Second).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(cfg.Timeout).
		SetWriteTimeout(cfg.Timeout).
		SetOrderMatters(false)
	m.c = mqtt.NewClient(opts)
	tok := m.c.Connect()
	if !tok.WaitTimeout(cfg.Timeout) {
		m.c.Disconnect(0)
		return nil, errors.New("devicetest: MQTT connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("devicetest: MQTT connect: %w", err)
	}
	return m, nil
}

// DeviceTLS is the Device Client's TLS configuration: only rootCAFile is
// trusted, the certificate and key are presented.
func DeviceTLS(rootCAFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	b, err := os.ReadFile(rootCAFile)
	if err != nil {
		return nil, fmt.Errorf("devicetest: root CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("devicetest: root CA %s: no certificate", rootCAFile)
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("devicetest: device certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// NotifyTopic is the topic the Device Client subscribes to.
func (m *MQTTClient) NotifyTopic() string {
	return m.cfg.TopicPrefix + "/things/" + m.cfg.Thing + "/tunnels/notify"
}

// ErrRefused reports a subscription the broker refused (SUBACK 0x80).
var ErrRefused = errors.New("devicetest: subscription refused")

// Subscribe subscribes at QoS 1 to topic and returns the granted QoS;
// messages on it are returned by Next. A refusal wraps ErrRefused.
func (m *MQTTClient) Subscribe(topic string) (byte, error) {
	tok := m.c.Subscribe(topic, 1, func(_ mqtt.Client, msg mqtt.Message) {
		select {
		case m.notes <- msg.Payload():
		default: // a test that does not read: drop
		}
	})
	if !tok.WaitTimeout(m.cfg.Timeout) {
		return 0, errors.New("devicetest: SUBACK timed out")
	}
	if err := tok.Error(); err != nil {
		return 0, fmt.Errorf("devicetest: subscribe %s: %w", topic, err)
	}
	granted, ok := tok.(*mqtt.SubscribeToken).Result()[topic]
	if !ok {
		return 0, fmt.Errorf("devicetest: no SUBACK result for %s", topic)
	}
	if granted == 0x80 {
		return granted, fmt.Errorf("%w: %s", ErrRefused, topic)
	}
	return granted, nil
}

// SubscribeNotify subscribes to the thing's notify topic at QoS 1, as the
// Device Client does, and requires QoS 1 to be granted.
func (m *MQTTClient) SubscribeNotify() error {
	q, err := m.Subscribe(m.NotifyTopic())
	if err == nil && q != 1 {
		err = fmt.Errorf("devicetest: notify subscription granted QoS %d, want 1", q)
	}
	return err
}

// Next returns the next message received on a subscription.
func (m *MQTTClient) Next(ctx context.Context) (Notification, error) {
	select {
	case b := <-m.notes:
		var n Notification
		if err := json.Unmarshal(b, &n); err != nil {
			return Notification{Raw: b}, fmt.Errorf("devicetest: notification %q: %w", b, err)
		}
		n.Raw = b
		return n, nil
	case <-ctx.Done():
		return Notification{}, ctx.Err()
	}
}

// Connected reports whether the MQTT connection is up.
func (m *MQTTClient) Connected() bool { return m.c.IsConnectionOpen() }

// Close disconnects (the session persists on the broker: clean session
// false).
func (m *MQTTClient) Close() { m.c.Disconnect(250) }

// Notification is a tunnel notification as the Device Client reads it.
type Notification struct {
	ClientAccessToken string   `json:"clientAccessToken"`
	ClientMode        string   `json:"clientMode"`
	Region            string   `json:"region"`
	Services          []string `json:"services"`
	// Raw is the payload.
	Raw []byte `json:"-"`
}

// Check applies the Device Client's checks and returns the local port it
// would connect the tunnel to (SSH 22, VNC 5900).
func (n Notification) Check() (port int, err error) {
	switch {
	case n.ClientMode != "destination":
		return 0, fmt.Errorf("devicetest: clientMode %q: the Device Client wants \"destination\"", n.ClientMode)
	case len(n.Services) != 1:
		return 0, fmt.Errorf("devicetest: %d services: the Device Client takes exactly one", len(n.Services))
	case n.ClientAccessToken == "":
		return 0, errors.New("devicetest: empty access token")
	case n.Region == "":
		return 0, errors.New("devicetest: empty region")
	}
	switch n.Services[0] {
	case "SSH":
		return 22, nil
	case "VNC":
		return 5900, nil
	}
	return 0, fmt.Errorf("devicetest: service %q: the Device Client knows only SSH and VNC", n.Services[0])
}
