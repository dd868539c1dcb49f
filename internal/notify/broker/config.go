package broker

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/sectun/sectun/internal/notify"
)

// DefaultAddr is the plain listener's default address: loopback only.
const DefaultAddr = "127.0.0.1:1883"

// Defaults of the limits (see Config).
const (
	DefaultMaxConns               = 10000
	DefaultMaxConnsPerAddr        = 64
	DefaultMaxConnsPerIdentity    = 8
	DefaultMaxSessions            = 20000
	DefaultMaxSessionsPerIdentity = 16
	DefaultMaxQueuedPerSession    = 16
	DefaultMaxQueued              = 20000
)

// Config configures a Broker. The zero value is a plain listener on
// 127.0.0.1:1883 that accepts anonymous devices.
type Config struct {
	// Addr is the plain MQTT (TCP) listener's address (default
	// DefaultAddr). Passwords cross it in clear: keep it on loopback or a
	// trusted network.
	Addr string
	// DisableTCP turns the plain listener off (TLS only, or ServeConn only).
	DisableTCP bool

	// TLSAddr, when set, adds an MQTT-over-TLS listener (e.g. ":8883").
	// It needs TLSConfig, or CertFile and KeyFile.
	TLSAddr string
	// CertFile and KeyFile are the PEM server certificate (chain) and key.
	CertFile, KeyFile string
	// ClientCAFile is a PEM bundle of CAs that sign device certificates.
	// When set, TLS clients may present a certificate, which must verify,
	// and authenticates them (see the package doc).
	ClientCAFile string
	// RequireClientCert refuses TLS clients without a valid certificate
	// (needs ClientCAFile). Otherwise they may still use a password.
	RequireClientCert bool
	// TLSConfig, when set, is used (cloned) for the TLS listener instead of
	// CertFile, KeyFile, ClientCAFile and RequireClientCert.
	TLSConfig *tls.Config

	// Users are the username/password accounts. A device user's name is
	// its thing name.
	Users []User
	// AdminCertNames are client-certificate identities (see the package
	// doc) that get admin rights.
	AdminCertNames []string
	// NoAnonymous refuses anonymous clients even on loopback listeners.
	// (Anonymous clients are always refused elsewhere.)
	NoAnonymous bool

	// TopicPrefix replaces "$aws" in "$aws/things/<thing>/..." (default
	// notify.DefaultTopicPrefix). It must match what devices subscribe to.
	TopicPrefix string

	// The limits below bound what clients can make the broker hold; each
	// has a default (0), and a negative value means no limit. A refused
	// connection is closed at once (before CONNECT) or gets a refusing
	// CONNACK ("server unavailable"; MQTT 5: "quota exceeded"); every
	// refusal is counted by reason (Stats) and logged (rate-limited).

	// MaxConns bounds open MQTT connections on all listeners together,
	// counted from accept, CONNECT sent or not (default
	// DefaultMaxConns). Each holds a file descriptor.
	MaxConns int
	// MaxConnsPerAddr bounds, per client address (IPv6: per /64), the
	// connections that have not authenticated with a certificate or a
	// password: those still in the TLS handshake or before CONNECT, and
	// anonymous ones (default DefaultMaxConnsPerAddr). Authenticated
	// devices behind one NAT address are bounded per identity instead.
	MaxConnsPerAddr int
	// MaxConnsPerIdentity bounds the connections of one identity: a
	// certificate, user or admin name, or, for anonymous clients, their
	// address (default DefaultMaxConnsPerIdentity). A device
	// reconnecting with its client ID replaces its old connection and is
	// not refused.
	MaxConnsPerIdentity int
	// MaxSessions bounds the sessions held: connected clients plus the
	// sessions kept for disconnected persistent clients (clean session
	// false) for SessionExpiry (default DefaultMaxSessions). Only a
	// CONNECT that makes a new persistent session is refused by it:
	// resuming one, or connecting with a clean session (bounded by the
	// connection limits), is not.
	MaxSessions int
	// MaxSessionsPerIdentity bounds the sessions of one identity (as for
	// MaxConnsPerIdentity; default DefaultMaxSessionsPerIdentity), refusing
	// new persistent ones as MaxSessions does: a
	// client that changes its client ID at every connection cannot fill
	// the broker with kept sessions.
	MaxSessionsPerIdentity int
	// MaxQueuedPerSession bounds the QoS 1 messages held for one session,
	// unacknowledged or queued while it is disconnected (default
	// DefaultMaxQueuedPerSession); more are dropped.
	MaxQueuedPerSession int
	// MaxQueued bounds the QoS 1 messages held for all sessions together:
	// once reached, messages for disconnected sessions are dropped
	// (default DefaultMaxQueued).
	MaxQueued int
	// ConnectTimeout is the time a new connection has to finish its TLS
	// handshake and send CONNECT (default 10s).
	ConnectTimeout time.Duration
	// SessionExpiry is how long the broker keeps the session of a
	// disconnected client that asked for a persistent one (clean session
	// false), queueing its QoS 1 notifications (default 1h).
	SessionExpiry time.Duration

	// Logger receives connection refusals and broker events (nil =
	// discard). It is also given to mochi.
	Logger *slog.Logger
}

// User is one username/password account.
type User struct {
	// Name is the MQTT username; for a device, its thing name.
	Name string
	// Password is compared in constant time.
	Password string
	// Admin may subscribe and publish anywhere.
	Admin bool
}

func (c *Config) setDefaults() {
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	if c.TopicPrefix == "" {
		c.TopicPrefix = notify.DefaultTopicPrefix
	}
	for _, d := range []struct {
		v   *int
		def int
	}{
		{&c.MaxConns, DefaultMaxConns},
		{&c.MaxConnsPerAddr, DefaultMaxConnsPerAddr},
		{&c.MaxConnsPerIdentity, DefaultMaxConnsPerIdentity},
		{&c.MaxSessions, DefaultMaxSessions},
		{&c.MaxSessionsPerIdentity, DefaultMaxSessionsPerIdentity},
		{&c.MaxQueuedPerSession, DefaultMaxQueuedPerSession},
		{&c.MaxQueued, DefaultMaxQueued},
	} {
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	if c.SessionExpiry <= 0 {
		c.SessionExpiry = time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func (c *Config) check() error {
	if !notify.ValidTopicPrefix(c.TopicPrefix) {
		return fmt.Errorf("broker: topic prefix %q: must be non-empty, without '+', '#' or a leading or trailing '/'", c.TopicPrefix)
	}
	seen := make(map[string]bool, len(c.Users))
	for _, u := range c.Users {
		if err := checkUser(u); err != nil {
			return err
		}
		if seen[u.Name] {
			return fmt.Errorf("broker: user %q is listed twice", u.Name)
		}
		seen[u.Name] = true
	}
	for _, n := range c.AdminCertNames {
		if n == "" {
			return errors.New("broker: empty admin certificate name")
		}
	}
	if c.TLSAddr == "" && (c.CertFile != "" || c.KeyFile != "" || c.ClientCAFile != "" || c.RequireClientCert) {
		return errors.New("broker: TLS settings given without a TLS listener address")
	}
	return nil
}

func checkUser(u User) error {
	switch {
	case u.Name == "":
		return errors.New("broker: user with an empty name")
	case u.Password == "":
		return fmt.Errorf("broker: user %q has an empty password", u.Name)
	case !u.Admin && !notify.ValidThingName(u.Name):
		return fmt.Errorf("broker: device user %q is not a valid thing name (1-128 letters, digits, ':', '_' or '-')", u.Name)
	case strings.ContainsAny(u.Name, "\x00"):
		return fmt.Errorf("broker: user name %q contains NUL", u.Name)
	}
	return nil
}

// serverTLS builds the TLS listener's configuration.
func (c *Config) serverTLS() (*tls.Config, error) {
	if c.TLSConfig != nil {
		return c.TLSConfig.Clone(), nil
	}
	if c.CertFile == "" || c.KeyFile == "" {
		return nil, errors.New("broker: the TLS listener needs a certificate file and a key file")
	}
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("broker: TLS certificate: %w", err)
	}
	t := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	switch {
	case c.ClientCAFile != "":
		pem, err := os.ReadFile(c.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("broker: client CA file: %w", err)
		}
		t.ClientCAs = x509.NewCertPool()
		if !t.ClientCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("broker: client CA file %s holds no PEM certificate", c.ClientCAFile)
		}
		t.ClientAuth = tls.VerifyClientCertIfGiven
		if c.RequireClientCert {
			t.ClientAuth = tls.RequireAndVerifyClientCert
		}
	case c.RequireClientCert:
		return nil, errors.New("broker: requiring client certificates needs a client CA file")
	}
	return t, nil
}

// MaxUsersFileSize bounds ParseUsers' input.
const MaxUsersFileSize = 4 << 20

// ParseUsers reads accounts, one per line: "<name> <password>" for a
// device (the name is its thing name) or "<name> <password> admin".
// Fields are separated by spaces or tabs, so passwords cannot contain
// them; blank lines and lines starting with '#' are skipped. Errors name
// the line (never a password).
func ParseUsers(r io.Reader) ([]User, error) {
	var users []User
	seen := map[string]bool{}
	sc := bufio.NewScanner(io.LimitReader(r, MaxUsersFileSize+1))
	sc.Buffer(make([]byte, 4096), 64<<10)
	total := 0
	for line := 1; sc.Scan(); line++ {
		total += len(sc.Bytes()) + 1
		if total > MaxUsersFileSize {
			return nil, fmt.Errorf("broker: users file larger than %d bytes", MaxUsersFileSize)
		}
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		f := strings.Fields(text)
		var u User
		switch {
		case len(f) == 2:
			u = User{Name: f[0], Password: f[1]}
		case len(f) == 3 && f[2] == "admin":
			u = User{Name: f[0], Password: f[1], Admin: true}
		case len(f) == 3:
			return nil, fmt.Errorf("broker: users line %d: third field must be \"admin\"", line)
		default:
			return nil, fmt.Errorf("broker: users line %d: want \"<name> <password> [admin]\", got %d fields", line, len(f))
		}
		if err := checkUser(u); err != nil {
			return nil, fmt.Errorf("users line %d: %w", line, err)
		}
		if seen[u.Name] {
			return nil, fmt.Errorf("broker: users line %d: user %q is listed twice", line, u.Name)
		}
		seen[u.Name] = true
		users = append(users, u)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("broker: users file: %w", err)
	}
	return users, nil
}

// ReadUsersFile is ParseUsers on a file. Keep the file readable by tunneld
// only: it holds passwords in clear.
func ReadUsersFile(path string) ([]User, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("broker: users file: %w", err)
	}
	defer f.Close()
	return ParseUsers(f)
}
