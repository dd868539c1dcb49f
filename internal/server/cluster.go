package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/sectun/sectun/internal/cluster"
	"github.com/sectun/sectun/internal/notify"
	"github.com/sectun/sectun/internal/server/api"
	"github.com/sectun/sectun/internal/store"
)

// ClusterConfig switches on cluster mode (docs/cluster.md): several
// tunneld nodes behind one load balancer, sharing one PostgreSQL. The zero
// value is single-node mode.
type ClusterConfig struct {
	// NodeID names this node (stable across restarts). Setting it, or
	// Listen, selects cluster mode.
	NodeID string
	// Listen is the node-to-node link listener (never behind the load
	// balancer).
	Listen string
	// Advertise is the host:port other nodes dial; default Listen.
	Advertise string
	// PlaintextLink turns TLS off on the link (private networks only; a
	// warning is logged).
	PlaintextLink bool
	// LeaseTTL is the node lease (default 10 s); a crashed node's peers
	// show DISCONNECTED within it.
	LeaseTTL time.Duration
	// LinkPing is the link's ping interval (default 1 s); a link silent
	// for three intervals is ended.
	LinkPing time.Duration
	// DrainGrace is how long a node keeps serving after SIGTERM with
	// /healthz answering 503, so the load balancer moves new clients
	// away, before it drops its WebSockets (default 5 s).
	DrainGrace time.Duration
}

func (c ClusterConfig) enabled() bool { return c.NodeID != "" || c.Listen != "" }

func (c ClusterConfig) drainGrace() time.Duration {
	if c.DrainGrace <= 0 {
		return 5 * time.Second
	}
	return c.DrainGrace
}

// validateCluster refuses a cluster configuration that cannot work, saying
// what to add.
func validateCluster(cfg Config) error {
	c := cfg.Cluster
	if !c.enabled() {
		return nil
	}
	switch {
	case c.NodeID == "":
		return errors.New("tunneld: cluster mode (--cluster-listen) needs a node identity: add --node-id NAME (unique and stable per node)")
	case c.Listen == "":
		return errors.New("tunneld: cluster mode (--node-id) needs the node-to-node link listener: add --cluster-listen HOST:PORT (and --cluster-advertise HOST:PORT if other nodes reach it under another address)")
	case cfg.PostgresDSN == "":
		return errors.New("tunneld: cluster mode needs a database all nodes share: add --postgres DSN (SQLite is single-node only)")
	case !cfg.MQTT.Off && cfg.MQTT.BrokerURL == "":
		return errors.New("tunneld: cluster mode needs an external MQTT broker (the embedded one has no clustering: a device subscribed on one node would miss a publish made on another): add --mqtt-broker URL, or --mqtt-listen off to send no notifications")
	}
	if c.Advertise != "" {
		if _, _, err := net.SplitHostPort(c.Advertise); err != nil {
			return fmt.Errorf("tunneld: --cluster-advertise %q: want HOST:PORT: %w", c.Advertise, err)
		}
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("tunneld: --cluster-listen %q: want HOST:PORT: %w", c.Listen, err)
	}
	return nil
}

// startCluster registers the node and binds its link listener (cluster
// mode only).
func (s *Server) startCluster(ctx context.Context) error {
	c := s.cfg.Cluster
	if !c.enabled() {
		return nil
	}
	cs, ok := s.health.st.(store.ClusterStore) // the store itself, not the health wrapper
	if !ok {
		return errors.New("tunneld: cluster mode needs --postgres")
	}
	var publish func(context.Context, []byte) error
	if s.notifier != nil && s.notifier.client != nil {
		client := s.notifier.client
		publish = func(ctx context.Context, payload []byte) error {
			var n notify.Notification
			if err := json.Unmarshal(payload, &n); err != nil {
				s.logger.Error("dropping a corrupt outbox message", "err", err)
				return nil
			}
			return client.NotifyTunnel(ctx, n)
		}
	}
	node, err := cluster.New(ctx, cluster.Config{
		Store: cs, NodeID: c.NodeID, Listen: c.Listen, Advertise: c.Advertise, Plaintext: c.PlaintextLink,
		LeaseTTL: c.LeaseTTL, PingInterval: c.LinkPing, Publish: publish, Logger: s.logger,
	})
	if err != nil {
		return fmt.Errorf("tunneld: %w", err)
	}
	s.node = node
	if publish != nil {
		s.outbox = &outboxNotifier{store: cs, publish: publish, region: s.cfg.Region, log: s.logger}
	}
	return nil
}

// LinkAddr is the cluster link listener's address (nil in single-node
// mode).
func (s *Server) LinkAddr() net.Addr {
	if s.node == nil {
		return nil
	}
	return s.node.LinkAddr()
}

// outboxNotifier is the cluster's api.Notifier: a notification is in the
// outbox before it is published, so a node dying before its publish only
// delays it (another node's drainer publishes it).
type outboxNotifier struct {
	store   store.ClusterStore
	publish func(context.Context, []byte) error
	region  string
	log     interface {
		Warn(msg string, args ...any)
	}
}

var _ api.TunnelCreator = (*outboxNotifier)(nil)

func encodeNotification(n api.Notification) ([]byte, error) {
	return json.Marshal(notify.Notification{ThingName: n.ThingName, Token: n.Token, Region: n.Region, Services: n.Services, TunnelID: n.TunnelID})
}

// CreateTunnel implements api.TunnelCreator.
func (o *outboxNotifier) CreateTunnel(ctx context.Context, t *store.Tunnel, n api.Notification) error {
	n.TunnelID = t.ID
	payload, err := encodeNotification(n)
	if err != nil {
		return err
	}
	id, err := o.store.CreateWithOutbox(ctx, t, payload)
	if err != nil {
		return err
	}
	go o.send(id, payload)
	return nil
}

// NotifyTunnel implements api.Notifier (a rotated destination token): the
// message is written to the outbox first, then published.
func (o *outboxNotifier) NotifyTunnel(ctx context.Context, n api.Notification) {
	payload, err := encodeNotification(n)
	if err != nil {
		return
	}
	id, err := o.store.AddOutbox(ctx, payload)
	if err != nil {
		o.log.Warn("writing a notification to the outbox failed: publishing it directly", "tunnel_id", n.TunnelID, "err", err)
		id = 0
	}
	go o.send(id, payload)
}

func (o *outboxNotifier) send(id int64, payload []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := o.publish(ctx, payload); err != nil {
		o.log.Warn("publishing a notification failed: the outbox drainer retries it", "err", err)
		return
	}
	if id != 0 {
		if err := o.store.DeleteOutbox(ctx, id); err != nil {
			o.log.Warn("removing a published notification from the outbox", "err", err)
		}
	}
}
