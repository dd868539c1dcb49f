package broker

import (
	"bytes"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// takeoverHook delivers messages that mochi v2.7.9 queues on a session's
// old holder while a new connection takes the session over.
//
// mochi's takeover (inheritClientSession) copies the old holder's
// inflight messages, then clears them, and only afterwards registers the
// new connection under the client ID. A QoS 1 or 2 message published in
// between is routed to the old holder (a connection being closed, or the
// object of an offline session): it is lost without a trace, whether it
// came from NotifyTunnel or from a network client, which mochi has already
// acknowledged. With a device reconnecting just as its tunnel is opened,
// that is a lost notification.
//
// mochi marks the old holder as taken over before copying, and calls
// OnQosPublish after queueing each message: a message queued on a
// taken-over holder is kept here as a stray, and handed to the new
// connection once its session is established (OnSessionEstablished, on
// its goroutine, after mochi resent the copied messages), or after it
// next processes a packet if the stray came later still. A stray that
// was queued before the copy was also copied: it is recognised in the new
// session (same packet ID, topic, payload and creation time) and skipped.
// A stray gets a packet ID of the new connection's. A new connection with
// a clean session drops those there are when it is established, as mochi
// drops the old session; later ones go only to a session subscribed to
// their topic.
//
// Strays are bounded per client ID (Capabilities.MaximumInflight); those
// of a session that expires before a new connection establishes it go
// with it.
type takeoverHook struct {
	mqtt.HookBase
	b   *Broker
	max int // strays kept per client ID

	n      atomic.Int64 // strays held: the fast path
	mu     sync.Mutex
	strays map[string][]packets.Packet // client ID -> messages
}

func newTakeoverHook(b *Broker, max int) *takeoverHook {
	return &takeoverHook{b: b, max: max, strays: map[string][]packets.Packet{}}
}

func (h *takeoverHook) ID() string { return "sectun-takeover" }

func (h *takeoverHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnQosPublish, mqtt.OnSessionEstablished, mqtt.OnPacketProcessed, mqtt.OnClientExpired:
		return true
	}
	return false
}

// OnQosPublish keeps a message queued on a taken-over holder.
func (h *takeoverHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if cl.IsTakenOver() && pk.FixedHeader.Type == packets.Publish {
		h.keep(cl.ID, pk)
	}
}

// keep holds pk for the next connection of client ID id.
func (h *takeoverHook) keep(id string, pk packets.Packet) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.strays[id]) >= h.max {
		h.b.log.Warn("broker: message published during a session takeover dropped: too many", "client_id", id, "topic", pk.TopicName)
		return
	}
	h.strays[id] = append(h.strays[id], pk)
	h.n.Add(1)
}

// OnSessionEstablished hands the strays to the new connection.
func (h *takeoverHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if h.n.Load() > 0 {
		h.deliver(cl, pk.Connect.Clean)
	}
}

// OnPacketProcessed hands over strays that came after OnSessionEstablished.
func (h *takeoverHook) OnPacketProcessed(cl *mqtt.Client, _ packets.Packet, _ error) {
	if h.n.Load() > 0 && !cl.Net.Inline {
		h.deliver(cl, false)
	}
}

// OnClientExpired drops the strays of an expired session.
func (h *takeoverHook) OnClientExpired(cl *mqtt.Client) {
	if h.n.Load() > 0 {
		h.take(cl.ID)
	}
}

func (h *takeoverHook) take(id string) []packets.Packet {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.strays[id]
	delete(h.strays, id)
	h.n.Add(-int64(len(s)))
	return s
}

// deliver queues cl's strays in its session and sends them, on cl's
// goroutine (as mochi resends a session's messages).
func (h *takeoverHook) deliver(cl *mqtt.Client, drop bool) {
	if cl.IsTakenOver() {
		return
	}
	strays := h.take(cl.ID)
	if len(strays) == 0 || drop {
		return
	}
	send := true
	for _, pk := range strays {
		if _, ok := h.b.srv.Topics.Subscribers(pk.TopicName).Subscriptions[cl.ID]; !ok {
			continue // the new session is not subscribed (a clean one)
		}
		if in, ok := cl.State.Inflight.Get(pk.PacketID); ok && in.FixedHeader.Type == packets.Publish &&
			in.Created == pk.Created && in.TopicName == pk.TopicName && bytes.Equal(in.Payload, pk.Payload) {
			continue // copied with the session
		}
		id, err := cl.NextPacketID()
		if err != nil {
			h.b.log.Warn("broker: message published during a session takeover dropped: no free packet ID", "client_id", cl.ID, "topic", pk.TopicName)
			continue
		}
		pk.PacketID = uint16(id)
		pk.FixedHeader.Dup = false
		if cl.State.Inflight.Set(pk) {
			atomic.AddInt64(&h.b.srv.Info.Inflight, 1)
		}
		h.b.log.Debug("broker: message published during a session takeover handed to the new connection", "client_id", cl.ID, "topic", pk.TopicName, "packet_id", id)
		if send && cl.WritePacket(pk) != nil {
			send = false // queued all the same: resent on the next connection
		}
	}
}
