package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// subackFailure is the SUBACK return code of a refused subscription.
const subackFailure = 0x80

// mqttLoop keeps the agent connected and subscribed until ctx ends, then
// disconnects. It connects, subscribes (again after every reconnect: a
// broker that lost its state, or a new clean session, has no subscription
// for us), waits for the connection to be lost, and starts over after a
// jittered exponential backoff (reset once a connection has held for a
// minute). The loop replaces paho's auto-reconnect, whose sleeps Close
// cannot interrupt and which would not resubscribe by itself.
func (a *Agent) mqttLoop(ctx context.Context) {
	lost := make(chan error, 1)
	opts := mqtt.NewClientOptions().
		AddBroker(a.broker.String()).
		SetClientID(a.cfg.ClientID).
		SetUsername(a.cfg.Username).
		SetPassword(a.cfg.Password).
		SetProtocolVersion(4).
		// A persistent session: the broker queues QoS 1 notifications
		// while the device is offline and delivers them when it is back.
		SetCleanSession(false).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(a.cfg.ConnectTimeout).
		SetKeepAlive(a.cfg.KeepAlive).
		SetPingTimeout(min(a.cfg.KeepAlive, 10*time.Second)).
		SetWriteTimeout(a.cfg.ConnectTimeout).
		// Queued notifications may arrive before our SUBSCRIBE is
		// acknowledged: the default handler takes every message.
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			a.handleMessage(m.Topic(), m.Payload())
		}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	if a.tls != nil {
		opts.SetTLSConfig(a.tls)
	}
	c := mqtt.NewClient(opts)
	defer func() {
		if c.IsConnected() {
			c.Disconnect(250)
			a.log.Info("disconnected from the MQTT broker")
		}
	}()

	const minBackoff, stable = 500 * time.Millisecond, time.Minute
	backoff := minBackoff
	subscribedOnce := false
	for {
		select {
		case <-lost: // stale, from the previous connection
		default:
		}
		upAt := time.Now()
		err := a.connectAndSubscribe(ctx, c, subscribedOnce)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			subscribedOnce = true
			select {
			case err = <-lost:
				err = fmt.Errorf("agent: lost the MQTT broker connection: %w", err)
			case <-ctx.Done():
				return
			}
			if time.Since(upAt) >= stable {
				backoff = minBackoff
			}
		}
		delay := backoff/2 + rand.N(backoff/2+1)
		a.log.Warn("MQTT broker unavailable; retrying", "err", err, "retry_in", delay.Round(time.Millisecond))
		a.emit(BrokerLost{Err: err})
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
		backoff = min(2*backoff, a.cfg.MaxReconnectInterval)
	}
}

// connectAndSubscribe makes one connection attempt and subscribes to the
// notify topic at QoS 1. On failure it leaves the client disconnected.
func (a *Agent) connectAndSubscribe(ctx context.Context, c mqtt.Client, reconnect bool) error {
	tok := c.Connect()
	if err := waitToken(ctx, tok, a.cfg.ConnectTimeout+time.Second); err != nil {
		if ctx.Err() != nil {
			// The attempt may still complete; wait for it so that the
			// deferred Disconnect sees the real state.
			tok.WaitTimeout(a.cfg.ConnectTimeout)
			return err
		}
		return fmt.Errorf("agent: cannot connect to the MQTT broker %s: %w", a.broker.Redacted(), explainConnect(err))
	}
	a.log.Debug("connected to the MQTT broker", "session_present", tok.(*mqtt.ConnectToken).SessionPresent())
	sub := c.Subscribe(a.topic, 1, nil)
	err := waitToken(ctx, sub, a.cfg.ConnectTimeout)
	if err == nil {
		if code, ok := sub.(*mqtt.SubscribeToken).Result()[a.topic]; !ok || code == subackFailure {
			err = fmt.Errorf("the broker refused the subscription to %s: allow this client to subscribe to it and receive from it (AWS IoT policy: iot:Subscribe on topicfilter/%s and iot:Receive on topic/%s)", a.topic, a.topic, a.topic)
		}
	}
	if err != nil {
		c.Disconnect(0)
		if ctx.Err() != nil {
			return err
		}
		return fmt.Errorf("agent: subscribing: %w", err)
	}
	a.log.Info("subscribed to tunnel notifications", "topic", a.topic, "broker", a.broker.Redacted(), "client_id", a.cfg.ClientID, "reconnect", reconnect)
	a.emit(Subscribed{Topic: a.topic, Reconnect: reconnect})
	return nil
}

// waitToken waits for a paho token, ctx or timeout.
func waitToken(ctx context.Context, tok mqtt.Token, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("no answer from the broker within %v", timeout)
	}
}

// explainConnect adds what to do to paho's CONNACK refusals.
func explainConnect(err error) error {
	switch {
	case errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword), errors.Is(err, packets.ErrorRefusedNotAuthorised):
		return fmt.Errorf("%w: check the username and password, or the device certificate and the thing's policy", err)
	case errors.Is(err, packets.ErrorRefusedIDRejected):
		return fmt.Errorf("%w: the broker refuses this client ID; use the thing name or <thing>@<suffix>", err)
	}
	return err
}
