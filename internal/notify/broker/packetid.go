package broker

import (
	"slices"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// packetIDHook keeps the client's packet identifiers apart from the
// broker's, as MQTT requires (MQTT 3.1.1 section 2.3.1, MQTT 5 section
// 2.2.1: each direction has its own set of identifiers in use).
//
// mochi v2.7.9 keeps one inflight map per session for both directions and
// looks a client's identifier up in it as if it were its own:
//   - SUBSCRIBE and UNSUBSCRIBE whose identifier equals that of a message
//     the broker sent (or queued) and the client has not acknowledged yet
//     are refused with 0x91 "packet identifier in use" (processSubscribe,
//     processUnsubscribe). The refusal skips the conversion to MQTT 3.1.1
//     codes, so a 3.1.1 client gets SUBACK 0x91, which 3.1.1 does not
//     define, and is not subscribed; an UNSUBACK has no codes in 3.1.1, so
//     the client believes it unsubscribed and keeps receiving.
//   - A QoS 1 or 2 PUBLISH from the client deletes the broker's message
//     with the same identifier (processPublish): that message is no longer
//     retransmitted, so it is lost if the connection drops first.
//
// This is the usual case, not a corner one: a device with a persistent
// session (the AWS IoT Device Client) comes back while notifications wait
// for it under identifiers 1, 2, ... (mochi numbers from 1 per session),
// mochi resends them right after CONNACK, and the device, which numbers
// its own packets from 1 again, resubscribes before it acknowledges them.
//
// The fix, without forking mochi, leaves the broker's identifiers alone
// (renumbering a message the client may already hold would turn its
// acknowledgement into a duplicate delivery) and hides the broker's
// message from the lookups that must not see it:
//   - SUBSCRIBE: OnSubscribe, which mochi calls just before its lookup,
//     gives the packet identifier 0, which no inflight message ever has
//     (0 is invalid in MQTT and mochi never allocates it); OnPacketEncode
//     puts the client's identifier back into the SUBACK. The inflight map
//     is not touched.
//   - UNSUBSCRIBE and QoS 1 PUBLISH: OnPacketRead takes the broker's
//     message out of the map ("parks" it) and OnPacketProcessed, right
//     after mochi has handled the packet on the same goroutine, puts it
//     back under its identifier.
//   - QoS 2 PUBLISH: the client's PUBREC keeps the identifier until the
//     client's PUBREL, so a parked QoS 1 notification waits until then,
//     and the client's PUBACK for it in the meantime acknowledges it.
//     (A QoS 2 message of the broker's on that identifier is left to
//     mochi: tunneld's notifications are QoS 1, and two QoS 2 flows in
//     opposite directions on one identifier cannot both live in mochi's
//     map.)
//
// A parked message that cannot go back under its identifier when it must
// (the connection ended with the client's QoS 2 flow unfinished) is
// queued again under a new identifier, to be resent on the next
// connection. When a new connection takes the session over,
// OnSessionEstablish puts parked messages back before mochi copies the
// session (a PUBLISH under a new identifier: the old connection may still
// be processing the client's packet with the old one, which would
// overwrite it); a PUBLISH parked by the old connection after that hook,
// so missing from the copy, goes to the new connection through
// takeoverHook.
//
// MQTT 3.1.1 SUBACK codes other than 0, 1, 2 and 0x80 are turned into
// 0x80 (mochi sends 0x91 for a genuine clash: a SUBSCRIBE reusing the ID
// of the client's own unfinished QoS 2 PUBLISH).
//
// Concurrency: the state is per client (clientIDs), used by the client's
// own goroutine and, on a takeover, by the new connection's; no lock is
// shared between clients.
type packetIDHook struct {
	mqtt.HookBase
	b *Broker

	nparked atomic.Int64 // messages parked over all clients: the fast path
	clients sync.Map     // *mqtt.Client -> *clientIDs, for clients with state
}

// clientIDs is the hook's state for one client.
type clientIDs struct {
	mu     sync.Mutex
	parked []parkedMsg
	suback uint16 // the client's ID for the SUBSCRIBE given ID 0; 0 = none
}

// parkedMsg is one of the broker's inflight messages taken out of its
// client's inflight map while the client uses its packet identifier.
type parkedMsg struct {
	pk packets.Packet
	// wait: until its identifier is free again (the client's QoS 2 flow
	// holds it); otherwise it goes back once the packet is processed.
	wait bool
}

func newPacketIDHook(b *Broker) *packetIDHook { return &packetIDHook{b: b} }

func (h *packetIDHook) state(cl *mqtt.Client) *clientIDs {
	if st, ok := h.clients.Load(cl); ok {
		return st.(*clientIDs)
	}
	st, _ := h.clients.LoadOrStore(cl, &clientIDs{})
	return st.(*clientIDs)
}

// existing returns cl's state if it has any.
func (h *packetIDHook) existing(cl *mqtt.Client) *clientIDs {
	st, _ := h.clients.Load(cl)
	v, _ := st.(*clientIDs)
	return v
}

func (h *packetIDHook) ID() string { return "sectun-packet-ids" }

func (h *packetIDHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnSubscribe, mqtt.OnPacketEncode, mqtt.OnPacketRead, mqtt.OnPacketProcessed,
		mqtt.OnDisconnect, mqtt.OnSessionEstablish:
		return true
	}
	return false
}

// brokerSide reports whether an inflight entry belongs to the broker's
// direction: a PUBLISH it sent, or its PUBREL. (mochi stores the client's
// direction as the acknowledgements it owes: PUBACK, PUBREC, PUBCOMP.)
func brokerSide(pk packets.Packet) bool {
	return pk.FixedHeader.Type == packets.Publish || pk.FixedHeader.Type == packets.Pubrel
}

// OnSubscribe hides a SUBSCRIBE's identifier from mochi's in-use check
// when it is the broker's (see the type doc).
func (h *packetIDHook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.Net.Inline || pk.PacketID == 0 {
		return pk
	}
	if e, ok := cl.State.Inflight.Get(pk.PacketID); ok && brokerSide(e) {
		st := h.state(cl)
		st.mu.Lock()
		st.suback = pk.PacketID
		st.mu.Unlock()
		h.b.log.Debug("broker: SUBSCRIBE reuses the packet ID of an unacknowledged message to the client; accepted", "client_id", cl.ID, "packet_id", pk.PacketID)
		pk.PacketID = 0
	}
	return pk
}

// OnPacketEncode gives a SUBACK back the client's identifier, and keeps
// MQTT 3.1.1 SUBACK codes within 3.1.1.
func (h *packetIDHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Suback {
		return pk
	}
	if st := h.existing(cl); st != nil && pk.PacketID == 0 {
		st.mu.Lock()
		pk.PacketID, st.suback = st.suback, 0
		st.mu.Unlock()
	}
	if pk.ProtocolVersion < 5 && slices.ContainsFunc(pk.ReasonCodes, notV3Suback) {
		codes := slices.Clone(pk.ReasonCodes)
		for i, c := range codes {
			if notV3Suback(c) {
				codes[i] = packets.ErrUnspecifiedError.Code // 0x80, "Failure" in 3.1.1
			}
		}
		pk.ReasonCodes = codes
	}
	return pk
}

func notV3Suback(c byte) bool { return c > 2 && c != 0x80 }

// OnPacketRead parks the broker's message whose identifier an incoming
// UNSUBSCRIBE or PUBLISH uses, and applies a PUBACK for a parked one.
func (h *packetIDHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	switch t := pk.FixedHeader.Type; {
	case pk.PacketID == 0:
	case t == packets.Unsubscribe || t == packets.Publish && pk.FixedHeader.Qos > 0:
		e, ok := cl.State.Inflight.Get(pk.PacketID)
		if !ok || !brokerSide(e) {
			break
		}
		wait := t == packets.Publish && pk.FixedHeader.Qos == 2
		if wait && (e.FixedHeader.Type != packets.Publish || e.FixedHeader.Qos != 1) {
			h.b.log.Warn("broker: the client's QoS 2 PUBLISH reuses the packet ID of a QoS 2 message to it: that message will not be retransmitted", "client_id", cl.ID, "packet_id", pk.PacketID)
			break
		}
		st := h.state(cl)
		// Under st.mu against a takeover's restore (OnSessionEstablish).
		// Delete is false if the message expired meanwhile.
		st.mu.Lock()
		if cl.State.Inflight.Delete(pk.PacketID) {
			st.parked = append(st.parked, parkedMsg{pk: e, wait: wait})
			h.nparked.Add(1)
		}
		st.mu.Unlock()
		h.b.log.Debug("broker: the client reuses the packet ID of an unacknowledged message to it; kept apart", "client_id", cl.ID, "packet_id", pk.PacketID, "packet", packets.PacketNames[t])
	case t == packets.Puback && h.nparked.Load() > 0:
		st := h.existing(cl)
		if st == nil {
			break
		}
		st.mu.Lock()
		i := slices.IndexFunc(st.parked, func(p parkedMsg) bool { return p.pk.PacketID == pk.PacketID })
		if i >= 0 {
			h.unpark(st, i)
		}
		st.mu.Unlock()
		if i >= 0 {
			atomic.AddInt64(&h.b.srv.Info.Inflight, -1)
			cl.State.Inflight.IncreaseSendQuota()
			// The identifier is also in the client's QoS 2 flow, which
			// mochi would end on this PUBACK: 0 matches nothing.
			pk.PacketID = 0
		}
	}
	return pk, nil
}

// unpark removes st.parked[i]; st.mu is held.
func (h *packetIDHook) unpark(st *clientIDs, i int) {
	st.parked = slices.Delete(st.parked, i, i+1)
	h.nparked.Add(-1)
}

// OnPacketProcessed puts parked messages back once mochi has handled the
// client's packet.
func (h *packetIDHook) OnPacketProcessed(cl *mqtt.Client, _ packets.Packet, _ error) {
	if h.nparked.Load() > 0 {
		h.restore(cl, afterPacket)
	}
}

// OnSessionEstablish puts the parked messages of the session's current
// holder back before a new connection takes the session over (mochi
// copies the inflight map right after this hook).
func (h *packetIDHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	if h.nparked.Load() == 0 {
		return
	}
	if old, ok := h.b.srv.Clients.Get(cl.ID); ok && old != cl {
		h.restore(old, takenOver)
	}
}

// OnDisconnect puts parked messages back for the next connection, or
// drops them with the session, and forgets the connection.
func (h *packetIDHook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	st := h.existing(cl)
	if st == nil {
		return
	}
	if !expire {
		h.restore(cl, connEnded)
	}
	st.mu.Lock()
	n := len(st.parked)
	st.parked, st.suback = nil, 0
	h.clients.Delete(cl)
	st.mu.Unlock()
	h.nparked.Add(-int64(n))
	atomic.AddInt64(&h.b.srv.Info.Inflight, -int64(n))
}

// When restore runs.
const (
	afterPacket = iota // the client's packet was processed
	connEnded          // the connection ended (its goroutine, nothing in flight)
	takenOver          // a new connection takes the session over
)

// restore puts cl's parked messages back into its inflight map, under
// their identifiers when these are free. One whose identifier is taken
// waits if it was parked to wait (until the connection ends); otherwise a
// PUBLISH is queued again under a new identifier (resent on the next
// connection) and anything else is dropped. On a takeover a PUBLISH always
// gets a new identifier: the old connection may still be processing a
// packet of the client's with the old one, which would overwrite it.
func (h *packetIDHook) restore(cl *mqtt.Client, when int) {
	st := h.existing(cl)
	if st == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for i := len(st.parked) - 1; i >= 0; i-- {
		p := st.parked[i]
		isPub := p.pk.FixedHeader.Type == packets.Publish
		if isPub && when != takenOver && cl.IsTakenOver() {
			// Parked after OnSessionEstablish, so not copied with the
			// session: the new connection gets it (takeoverHook).
			h.b.takeovers.keep(cl.ID, p.pk)
			h.unpark(st, i)
			continue
		}
		_, taken := cl.State.Inflight.Get(p.pk.PacketID)
		if taken && p.wait && when == afterPacket {
			continue
		}
		if taken && !isPub {
			h.b.log.Warn("broker: a message to the client lost its packet ID and cannot be requeued: dropped", "client_id", cl.ID, "packet_id", p.pk.PacketID)
			atomic.AddInt64(&h.b.srv.Info.Inflight, -1)
			h.unpark(st, i)
			continue
		}
		if isPub && (taken || when == takenOver) {
			id, err := cl.NextPacketID()
			if err != nil {
				h.b.log.Warn("broker: no free packet ID to requeue a message to the client: dropped", "client_id", cl.ID, "packet_id", p.pk.PacketID)
				atomic.AddInt64(&h.b.srv.Info.Inflight, -1)
				h.unpark(st, i)
				continue
			}
			h.b.log.Debug("broker: message to the client requeued under a new packet ID", "client_id", cl.ID, "packet_id", p.pk.PacketID, "new_packet_id", id)
			p.pk.PacketID = uint16(id)
		}
		cl.State.Inflight.Set(p.pk)
		h.unpark(st, i)
	}
}
