package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/sectun/sectun/internal/server/sigv4"
	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/token"
)

// Defaults and limits.
const (
	DefaultRegion               = "us-east-1"
	DefaultAccountID            = "123456789012"
	DefaultMaxServicesPerTunnel = 3 // AWS's quota
	// MaxLifetimeMinutes is AWS's maximum (and default) tunnel lifetime.
	MaxLifetimeMinutes   = 720
	DefaultRetention     = 3 * time.Hour // AWS keeps closed tunnels visible "for at least three hours"
	DefaultSweepInterval = 10 * time.Second
	DefaultMaxBodyBytes  = 64 << 10
)

// ErrConfig reports an invalid Config.
var ErrConfig = errors.New("api: invalid config")

// Peers lets the API act on connected WebSocket peers (the relay implements
// it). Calls must not block for long.
type Peers interface {
	// CloseTunnel disconnects both peers of a tunnel that was closed.
	CloseTunnel(tunnelID, reason string)
	// DisconnectPeer disconnects the peer of one end whose access token was
	// rotated.
	DisconnectPeer(tunnelID string, mode store.Mode, reason string)
}

// Notification is what a device needs to start its destination proxy: it
// is sent when a tunnel is opened for a thing and when the destination
// token of such a tunnel is rotated.
type Notification struct {
	TunnelID  string
	ThingName string
	// Token is the plaintext destination client access token. Never log it.
	Token    string
	Region   string
	Services []string
}

// LogValue keeps the token out of logs.
func (n Notification) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("tunnel_id", n.TunnelID),
		slog.String("thing_name", n.ThingName),
		slog.String("token", token.Short(n.Token)),
		slog.String("region", n.Region),
		slog.Any("services", n.Services),
	)
}

// Notifier delivers Notifications to devices (the MQTT publisher
// implements it). It is called synchronously after the tunnel is stored and
// before the API answers; it must not block for long (queue and return).
// Its ctx carries the request's values but is never canceled.
type Notifier interface {
	NotifyTunnel(ctx context.Context, n Notification)
}

// TunnelCreator is a Notifier that stores a new tunnel and its
// notification in one transaction (a cluster's outbox), then publishes it:
// OpenTunnel calls CreateTunnel instead of Store.Create and NotifyTunnel
// for tunnels with a thing name. n.TunnelID is t.ID.
type TunnelCreator interface {
	CreateTunnel(ctx context.Context, t *store.Tunnel, n Notification) error
}

// Config configures a Server. The zero value of every field but Store and
// Credentials/NoAuth means its default.
type Config struct {
	// Store keeps the tunnels. Required.
	Store store.Store
	// Region is used in tunnel ARNs and notifications; "" means
	// DefaultRegion.
	Region string
	// AccountID is used in tunnel ARNs; "" means DefaultAccountID.
	AccountID string
	// MaxServicesPerTunnel caps destinationConfig.services; 0 means
	// DefaultMaxServicesPerTunnel.
	MaxServicesPerTunnel int
	// MaxOpenTunnels caps the number of OPEN tunnels (OpenTunnel then fails
	// with LimitExceededException); 0 means unlimited.
	MaxOpenTunnels int
	// MaxLifetimeMinutes is the longest maxLifetimeTimeoutMinutes accepted
	// and the lifetime of tunnels opened without one; 0 means 720, the
	// AWS maximum, which is also the largest value allowed.
	MaxLifetimeMinutes int
	// Retention is how long a closed tunnel stays visible before the
	// sweeper deletes it; 0 means DefaultRetention.
	Retention time.Duration
	// SweepInterval is how often Run sweeps; 0 means DefaultSweepInterval.
	SweepInterval time.Duration
	// Credentials maps access key IDs to secrets for SigV4 verification.
	// It must not be modified while the Server runs. Unless NoAuth, it or
	// CredentialStore must be set.
	Credentials sigv4.Credentials
	// CredentialStore, when set, is used instead of Credentials (for
	// secrets that change at run time).
	CredentialStore sigv4.CredentialStore
	// NoAuth turns signature verification off: any request is accepted
	// and Credentials and CredentialStore are ignored.
	NoAuth bool
	// MaxBodyBytes caps request bodies (larger: 413); 0 means
	// DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// Peers, when set, is told to disconnect peers of closed tunnels and
	// of rotated tokens.
	Peers Peers
	// Notifier, when set, is told of tunnels opened for a thing and of
	// rotated destination tokens.
	Notifier Notifier
	// Logger receives request and sweep logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now. Tests inject it.
	Now func() time.Time
}

// Server serves the management API. Create it with New.
type Server struct {
	store       store.Store
	region      string
	account     string
	partition   string
	maxServices int
	maxOpen     int
	maxLifetime int
	retention   time.Duration
	interval    time.Duration
	maxBody     int64
	verifier    *sigv4.Verifier // nil when NoAuth
	peers       Peers
	notifier    Notifier
	log         *slog.Logger
	now         func() time.Time

	// openMu makes the open-tunnel count and the creation one step, so
	// MaxOpenTunnels holds against concurrent OpenTunnel calls of this
	// process.
	openMu sync.Mutex
}

var (
	regionRE  = regexp.MustCompile(`^[a-z0-9-]{1,64}$`)
	accountRE = regexp.MustCompile(`^[0-9A-Za-z-]{1,64}$`)
)

// New checks cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	s := &Server{
		store:       cfg.Store,
		region:      cfg.Region,
		account:     cfg.AccountID,
		maxServices: cfg.MaxServicesPerTunnel,
		maxOpen:     cfg.MaxOpenTunnels,
		maxLifetime: cfg.MaxLifetimeMinutes,
		retention:   cfg.Retention,
		interval:    cfg.SweepInterval,
		maxBody:     cfg.MaxBodyBytes,
		peers:       cfg.Peers,
		notifier:    cfg.Notifier,
		log:         cfg.Logger,
		now:         cfg.Now,
	}
	if s.store == nil {
		return nil, fmt.Errorf("%w: Store is required", ErrConfig)
	}
	if !cfg.NoAuth {
		var cs sigv4.CredentialStore = cfg.Credentials
		if cfg.CredentialStore != nil {
			cs = cfg.CredentialStore
		} else if len(cfg.Credentials) == 0 {
			return nil, fmt.Errorf("%w: no Credentials: give at least one access key (or set NoAuth)", ErrConfig)
		}
		s.verifier = &sigv4.Verifier{Credentials: cs}
	}
	if s.region == "" {
		s.region = DefaultRegion
	}
	if !regionRE.MatchString(s.region) {
		return nil, fmt.Errorf("%w: Region %q is not a region name", ErrConfig, s.region)
	}
	if s.account == "" {
		s.account = DefaultAccountID
	}
	if !accountRE.MatchString(s.account) {
		return nil, fmt.Errorf("%w: AccountID %q must be letters, digits and dashes", ErrConfig, s.account)
	}
	s.partition = partition(s.region)
	if s.maxServices == 0 {
		s.maxServices = DefaultMaxServicesPerTunnel
	}
	if s.maxServices < 0 {
		return nil, fmt.Errorf("%w: MaxServicesPerTunnel %d is negative", ErrConfig, s.maxServices)
	}
	if s.maxOpen < 0 {
		return nil, fmt.Errorf("%w: MaxOpenTunnels %d is negative", ErrConfig, s.maxOpen)
	}
	if s.maxLifetime == 0 {
		s.maxLifetime = MaxLifetimeMinutes
	}
	if s.maxLifetime < 1 || s.maxLifetime > MaxLifetimeMinutes {
		return nil, fmt.Errorf("%w: MaxLifetimeMinutes %d is outside 1..%d", ErrConfig, s.maxLifetime, MaxLifetimeMinutes)
	}
	if s.retention == 0 {
		s.retention = DefaultRetention
	}
	if s.retention < 0 {
		return nil, fmt.Errorf("%w: Retention %v is negative", ErrConfig, s.retention)
	}
	if s.interval == 0 {
		s.interval = DefaultSweepInterval
	}
	if s.interval < 0 {
		return nil, fmt.Errorf("%w: SweepInterval %v is negative", ErrConfig, s.interval)
	}
	if s.maxBody == 0 {
		s.maxBody = DefaultMaxBodyBytes
	}
	if s.maxBody < 0 {
		return nil, fmt.Errorf("%w: MaxBodyBytes %d is negative", ErrConfig, s.maxBody)
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// partition returns the ARN partition of a region.
func partition(region string) string {
	switch {
	case strings.HasPrefix(region, "cn-"):
		return "aws-cn"
	case strings.HasPrefix(region, "us-gov-"):
		return "aws-us-gov"
	}
	return "aws"
}

// TunnelARN returns the ARN of a tunnel ID, in AWS's form
// arn:aws:iot:<region>:<account>:tunnel/<id>.
func (s *Server) TunnelARN(id string) string {
	return "arn:" + s.partition + ":iot:" + s.region + ":" + s.account + ":tunnel/" + id
}

// clock returns the current time as stored: UTC, millisecond precision.
func (s *Server) clock() time.Time {
	return s.now().UTC().Truncate(time.Millisecond)
}
