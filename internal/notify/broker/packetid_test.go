package broker

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pahopk "github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/sectun/sectun/internal/notify"
)

// rawClient is an MQTT 3.1.1 client driven packet by packet (with paho's
// codec, not mochi's), for exact control of packet identifiers.
type rawClient struct {
	t *testing.T
	c net.Conn
}

// rawDial connects and sends CONNECT; it returns the CONNACK's session
// present flag.
func rawDial(t *testing.T, b *Broker, id string, clean bool) (*rawClient, bool) {
	t.Helper()
	c, err := net.DialTimeout("tcp", b.Addr().String(), wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := &rawClient{t: t, c: c}
	cp := pahopk.NewControlPacket(pahopk.Connect).(*pahopk.ConnectPacket)
	cp.ProtocolName, cp.ProtocolVersion = "MQTT", 4
	cp.ClientIdentifier, cp.CleanSession, cp.Keepalive = id, clean, 60
	r.send(cp)
	ack, ok := r.read().(*pahopk.ConnackPacket)
	if !ok || ack.ReturnCode != pahopk.Accepted {
		t.Fatalf("CONNACK: %v", ack)
	}
	return r, ack.SessionPresent
}

func (r *rawClient) send(p pahopk.ControlPacket) {
	r.t.Helper()
	r.c.SetWriteDeadline(time.Now().Add(wait))
	if err := p.Write(r.c); err != nil {
		r.t.Fatalf("send %v: %v", p, err)
	}
}

func (r *rawClient) read() pahopk.ControlPacket {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(wait))
	p, err := pahopk.ReadPacket(r.c)
	if err != nil {
		r.t.Fatalf("read: %v", err)
	}
	return p
}

// expect reads the next packet, which must be a T.
func expect[T pahopk.ControlPacket](r *rawClient) T {
	r.t.Helper()
	p := r.read()
	v, ok := p.(T)
	if !ok {
		var want T
		r.t.Fatalf("received %v, want a %T", p, want)
	}
	return v
}

func (r *rawClient) subscribe(id uint16, filter string) []byte {
	r.t.Helper()
	p := pahopk.NewControlPacket(pahopk.Subscribe).(*pahopk.SubscribePacket)
	p.MessageID, p.Topics, p.Qoss = id, []string{filter}, []byte{1}
	r.send(p)
	ack := expect[*pahopk.SubackPacket](r)
	if ack.MessageID != id {
		r.t.Fatalf("SUBACK for packet %d, want %d", ack.MessageID, id)
	}
	return ack.ReturnCodes
}

func (r *rawClient) puback(id uint16) {
	r.t.Helper()
	p := pahopk.NewControlPacket(pahopk.Puback).(*pahopk.PubackPacket)
	p.MessageID = id
	r.send(p)
}

func (r *rawClient) publish(id uint16, qos byte, topic, payload string) {
	r.t.Helper()
	p := pahopk.NewControlPacket(pahopk.Publish).(*pahopk.PublishPacket)
	p.Qos, p.MessageID, p.TopicName, p.Payload = qos, id, topic, []byte(payload)
	r.send(p)
}

func (r *rawClient) pubrel(id uint16) {
	r.t.Helper()
	p := pahopk.NewControlPacket(pahopk.Pubrel).(*pahopk.PubrelPacket)
	p.MessageID = id
	r.send(p)
}

// receiveNotes reads until it has received a QoS 1 notification for each
// token in want (completing QoS 2 flows the broker resends on the way),
// and returns the packet ID each came with, without acknowledging them.
// Anything else, or a token twice, fails the test.
func (r *rawClient) receiveNotes(want ...string) map[string]uint16 {
	r.t.Helper()
	got := map[string]uint16{}
	for len(got) < len(want) {
		switch p := r.read().(type) {
		case *pahopk.PublishPacket:
			tok := noteToken(string(p.Payload))
			if p.Qos != 1 || !slices.Contains(want, tok) {
				r.t.Fatalf("received %v %s, want QoS 1 notifications for %q", p, p.Payload, want)
			}
			if _, dup := got[tok]; dup {
				r.t.Fatalf("notification %s received twice in one session", tok)
			}
			got[tok] = p.MessageID
		case *pahopk.PubrecPacket: // the broker resends its PUBREC of an unfinished QoS 2 publish
			r.pubrel(p.MessageID)
		case *pahopk.PubcompPacket:
		case *pahopk.PubackPacket:
			// mochi resends a PUBACK it had not yet dropped from the
			// session when the next connection took it (harmless).
		default:
			r.t.Fatalf("received %v while waiting for notifications %q", p, want)
		}
	}
	return got
}

// noteToken returns the clientAccessToken of a notification payload.
func noteToken(payload string) string {
	_, rest, _ := strings.Cut(payload, `"clientAccessToken":"`)
	tok, _, _ := strings.Cut(rest, `"`)
	return tok
}

// noteN is note(thing) with token "tok-<i>".
func noteN(thing string, i int) notify.Notification {
	n := note(thing)
	n.Token = fmt.Sprintf("tok-%d", i)
	return n
}

// TestClientPacketIDCollision: a device with a persistent session comes
// back while notifications wait for it under server-chosen packet IDs 1
// and 2, and uses packet ID 1 for its own SUBSCRIBE, UNSUBSCRIBE or
// PUBLISH before acknowledging them. MQTT keeps the two directions' IDs
// apart, so each must succeed, and no queued notification may be lost.
// (mochi v2.7.9 answered SUBSCRIBE with 0x91 to an MQTT 3.1.1 client and
// did not subscribe, ignored UNSUBSCRIBE, and forgot the notification
// that had the ID of the device's PUBLISH.)
func TestClientPacketIDCollision(t *testing.T) {
	const (
		thing  = "dev-1"
		topic  = "$aws/things/dev-1/tunnels/notify"
		status = "$aws/things/dev-1/status"
	)
	tests := []struct {
		name string
		// takeover: the next connection takes the session over from the
		// current one, still open, instead of following its end.
		takeover bool
		// collide uses packet ID 1 on dev's side while the broker's
		// notification 1 is unacknowledged; it returns the tokens still
		// unacknowledged.
		collide func(t *testing.T, b *Broker, dev *rawClient, ids map[string]uint16) []string
	}{
		{"subscribe", false, func(t *testing.T, b *Broker, dev *rawClient, _ map[string]uint16) []string {
			if codes := dev.subscribe(1, topic); !slices.Equal(codes, []byte{1}) {
				t.Fatalf("SUBACK return codes %#x, want [0x1] (QoS 1 granted)", codes)
			}
			return []string{"tok-1", "tok-2"}
		}},
		{"unsubscribe", false, func(t *testing.T, b *Broker, dev *rawClient, _ map[string]uint16) []string {
			p := pahopk.NewControlPacket(pahopk.Unsubscribe).(*pahopk.UnsubscribePacket)
			p.MessageID, p.Topics = 1, []string{topic}
			dev.send(p)
			if ack := expect[*pahopk.UnsubackPacket](dev); ack.MessageID != 1 {
				t.Fatalf("UNSUBACK for packet %d", ack.MessageID)
			}
			if _, ok := b.srv.Topics.Subscribers(topic).Subscriptions[thing]; ok {
				t.Fatal("still subscribed after UNSUBACK")
			}
			if codes := dev.subscribe(3, topic); !slices.Equal(codes, []byte{1}) {
				t.Fatalf("SUBACK return codes %#x", codes)
			}
			return []string{"tok-1", "tok-2"}
		}},
		{"publish QoS 1", false, func(t *testing.T, b *Broker, dev *rawClient, _ map[string]uint16) []string {
			dev.publish(1, 1, status, "up")
			if ack := expect[*pahopk.PubackPacket](dev); ack.MessageID != 1 {
				t.Fatalf("PUBACK for packet %d", ack.MessageID)
			}
			return []string{"tok-1", "tok-2"}
		}},
		{"publish QoS 2", false, func(t *testing.T, b *Broker, dev *rawClient, _ map[string]uint16) []string {
			dev.publish(1, 2, status, "up")
			if ack := expect[*pahopk.PubrecPacket](dev); ack.MessageID != 1 {
				t.Fatalf("PUBREC for packet %d", ack.MessageID)
			}
			dev.pubrel(1)
			if ack := expect[*pahopk.PubcompPacket](dev); ack.MessageID != 1 {
				t.Fatalf("PUBCOMP for packet %d", ack.MessageID)
			}
			return []string{"tok-1", "tok-2"}
		}},
		{"publish QoS 2, notification acknowledged meanwhile", false, func(t *testing.T, b *Broker, dev *rawClient, ids map[string]uint16) []string {
			dev.publish(1, 2, status, "up")
			if ack := expect[*pahopk.PubrecPacket](dev); ack.MessageID != 1 {
				t.Fatalf("PUBREC for packet %d", ack.MessageID)
			}
			dev.puback(1) // the notification's acknowledgement
			dev.pubrel(1)
			if ack := expect[*pahopk.PubcompPacket](dev); ack.MessageID != 1 {
				t.Fatalf("PUBCOMP for packet %d", ack.MessageID)
			}
			if ids["tok-1"] == 1 {
				return []string{"tok-2"}
			}
			return []string{"tok-1"}
		}},
		{"publish QoS 2, disconnected before PUBREL", false, pubrecOnly},
		{"publish QoS 2, session taken over before PUBREL", true, pubrecOnly},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := startBroker(t, Config{})
			dev, _ := rawDial(t, b, thing, false)
			if codes := dev.subscribe(1, topic); !slices.Equal(codes, []byte{1}) {
				t.Fatalf("first SUBACK %#x", codes)
			}
			dev.send(pahopk.NewControlPacket(pahopk.Disconnect))
			dev.c.Close()
			// Queued for the offline device under packet IDs 1 and 2.
			mustNotify(t, b, noteN(thing, 1))
			mustNotify(t, b, noteN(thing, 2))

			dev, present := rawDial(t, b, thing, false)
			if !present {
				t.Fatal("session not present")
			}
			ids := dev.receiveNotes("tok-1", "tok-2")
			if got := slices.Sorted(maps.Values(ids)); !slices.Equal(got, []uint16{1, 2}) {
				t.Fatalf("queued notifications came with packet IDs %v, want 1 and 2 (the test needs the collision)", got)
			}
			pending := tt.collide(t, b, dev, ids)

			// Drop the connection without acknowledging: whatever is still
			// unacknowledged must come again in the next session.
			old := dev
			if !tt.takeover {
				old.c.Close()
			}
			dev, present = rawDial(t, b, thing, false)
			old.c.Close()
			if !present {
				t.Fatal("session not present after the collision")
			}
			for _, id := range dev.receiveNotes(pending...) {
				dev.puback(id)
			}
			// Still subscribed, and new notifications flow.
			mustNotify(t, b, noteN(thing, 3))
			for _, id := range dev.receiveNotes("tok-3") {
				dev.puback(id)
			}
			dev.sync()
			checkNothingInflight(t, b, thing)
		})
	}
}

// pubrecOnly starts a QoS 2 PUBLISH with packet ID 1 and stops after the
// PUBREC.
func pubrecOnly(t *testing.T, b *Broker, dev *rawClient, _ map[string]uint16) []string {
	dev.publish(1, 2, "$aws/things/dev-1/status", "up")
	if ack := expect[*pahopk.PubrecPacket](dev); ack.MessageID != 1 {
		t.Fatalf("PUBREC for packet %d", ack.MessageID)
	}
	return []string{"tok-1", "tok-2"}
}

// sync waits until the broker has processed everything r sent: a PINGREQ
// is answered in order. A resent PUBREC on the way is answered (and then
// waited for in turn); PUBCOMPs are skipped.
func (r *rawClient) sync() {
	r.t.Helper()
	for more := true; more; {
		more = false
		r.send(pahopk.NewControlPacket(pahopk.Pingreq))
	read:
		for {
			switch p := r.read().(type) {
			case *pahopk.PingrespPacket:
				break read
			case *pahopk.PubrecPacket:
				r.pubrel(p.MessageID)
				more = true
			case *pahopk.PubcompPacket:
			default:
				r.t.Fatalf("received %v while waiting for PINGRESP", p)
			}
		}
	}
}

// checkNothingInflight checks that the session of client id holds no
// message, and that the packet ID hook holds nothing for anyone.
func checkNothingInflight(t *testing.T, b *Broker, id string) {
	t.Helper()
	cl, ok := b.srv.Clients.Get(id)
	if !ok {
		t.Fatalf("no session for %s", id)
	}
	if msgs := cl.State.Inflight.GetAll(false); len(msgs) > 0 {
		t.Errorf("%d messages still inflight: %v", len(msgs), msgs)
	}
	if n := b.pids.nparked.Load(); n != 0 {
		t.Errorf("packet ID hook still holds %d parked messages", n)
	}
	if st := b.pids.existing(cl); st != nil {
		st.mu.Lock()
		defer st.mu.Unlock()
		if len(st.parked) != 0 || st.suback != 0 {
			t.Errorf("packet ID hook state for %s: parked %v, SUBACK ID %d", id, st.parked, st.suback)
		}
	}
}

// TestSubackCodesV3: a genuine clash (the client's SUBSCRIBE reuses the
// ID of its own unfinished QoS 2 PUBLISH) is still refused, with the MQTT
// 3.1.1 failure code 0x80 instead of mochi's 0x91.
func TestSubackCodesV3(t *testing.T) {
	b, _ := startBroker(t, Config{})
	dev, _ := rawDial(t, b, "dev-1", true)
	dev.publish(7, 2, "$aws/things/dev-1/status", "up")
	expect[*pahopk.PubrecPacket](dev)
	if codes := dev.subscribe(7, "$aws/things/dev-1/tunnels/notify"); !slices.Equal(codes, []byte{0x80}) {
		t.Fatalf("SUBACK %#x, want [0x80]", codes)
	}
	dev.pubrel(7)
	expect[*pahopk.PubcompPacket](dev)
	if codes := dev.subscribe(7, "$aws/things/dev-1/tunnels/notify"); !slices.Equal(codes, []byte{1}) {
		t.Fatalf("SUBACK %#x, want [0x1]", codes)
	}
}

// TestParkedDroppedWithSession: a notification held aside during the
// client's QoS 2 flow goes with a clean session when the client leaves.
func TestParkedDroppedWithSession(t *testing.T) {
	b, _ := startBroker(t, Config{})
	topic := "$aws/things/dev-1/tunnels/notify"
	dev, _ := rawDial(t, b, "dev-1", true)
	if codes := dev.subscribe(1, topic); !slices.Equal(codes, []byte{1}) {
		t.Fatalf("SUBACK %#x", codes)
	}
	mustNotify(t, b, noteN("dev-1", 1))
	if id := dev.receiveNotes("tok-1")["tok-1"]; id != 1 {
		t.Fatalf("notification under packet ID %d, want 1", id)
	}
	dev.publish(1, 2, "$aws/things/dev-1/status", "up")
	expect[*pahopk.PubrecPacket](dev)
	dev.sync()
	if n := b.pids.nparked.Load(); n != 1 {
		t.Fatalf("%d messages parked, want 1", n)
	}
	dev.c.Close()
	b.Close() // waits for the client's goroutines, so for OnDisconnect
	if n := b.pids.nparked.Load(); n != 0 {
		t.Fatalf("%d messages still parked after the clean session ended", n)
	}
	b.pids.clients.Range(func(k, _ any) bool {
		t.Errorf("packet ID hook still holds state for %v", k)
		return true
	})
}

// TestResubscribeWithQueuedNotificationsPaho is the Device Client's
// reconnection with paho (MQTT 3.1.1, clean session false), which numbers
// its packets from 1 again in a new session: its SUBSCRIBE reuses the
// packet ID of the first queued notification, which it has not
// acknowledged yet.
func TestResubscribeWithQueuedNotificationsPaho(t *testing.T) {
	b, _ := startBroker(t, Config{})
	topic := "$aws/things/dev-1/tunnels/notify"
	first := mustDial(t, clientOpts{url: tcpURL(b), id: "dev-1", persistent: true})
	if code := first.subscribe(t, topic); code != 1 {
		t.Fatalf("first SUBACK %#x", code)
	}
	first.Disconnect(100)
	mustNotify(t, b, noteN("dev-1", 1))
	mustNotify(t, b, noteN("dev-1", 2))

	dev := mustDial(t, clientOpts{url: tcpURL(b), id: "dev-1", persistent: true, manualAck: true})
	if code := dev.subscribe(t, topic); code != 1 {
		t.Fatalf("SUBACK %#x on resubscription with queued notifications, want 1 (QoS 1 granted)", code)
	}
	got := map[string]bool{}
	for len(got) < 2 {
		m := dev.next(t)
		got[noteToken(string(m.Payload()))] = true
		m.Ack()
	}
	if !got["tok-1"] || !got["tok-2"] {
		t.Fatalf("queued notifications received: %v", got)
	}
	mustNotify(t, b, noteN("dev-1", 3))
	m := dev.next(t)
	m.Ack()
	if tok := noteToken(string(m.Payload())); tok != "tok-3" {
		t.Fatalf("received %s, want tok-3", tok)
	}
}

// onLog is a slog.Handler that runs fn (once) when a record with message
// msg is logged, in the logging goroutine: a way to act at a precise
// point inside mochi.
type onLog struct {
	slog.Handler
	msg  string
	once *sync.Once
	fn   func()
}

func (h onLog) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.once.Do(h.fn)
	}
	return h.Handler.Handle(ctx, r)
}

func (h onLog) WithAttrs(a []slog.Attr) slog.Handler {
	h.Handler = h.Handler.WithAttrs(a)
	return h
}

func (h onLog) WithGroup(g string) slog.Handler {
	h.Handler = h.Handler.WithGroup(g)
	return h
}

// TestNotifyDuringTakeover publishes a notification at the moment a
// device's new connection takes its persistent session over (after mochi
// has copied the old session, before the new connection is registered).
func TestNotifyDuringTakeover(t *testing.T) {
	for _, online := range []bool{false, true} {
		t.Run(fmt.Sprintf("old connection open %v", online), func(t *testing.T) {
			var b *Broker
			notified := make(chan error, 1)
			logs := &logBuffer{}
			h := onLog{
				Handler: slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}),
				msg:     "session taken over",
				once:    &sync.Once{},
				fn:      func() { notified <- b.NotifyTunnel(context.Background(), noteN("dev-1", 1)) },
			}
			b, err := New(Config{Addr: "127.0.0.1:0", Logger: slog.New(h)})
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Start(t.Context()); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			dev, _ := rawDial(t, b, "dev-1", false)
			if codes := dev.subscribe(1, "$aws/things/dev-1/tunnels/notify"); !slices.Equal(codes, []byte{1}) {
				t.Fatalf("SUBACK %#x", codes)
			}
			if !online {
				dev.send(pahopk.NewControlPacket(pahopk.Disconnect))
				dev.c.Close()
			}
			dev2, present := rawDial(t, b, "dev-1", false)
			if !present {
				t.Fatal("session not present")
			}
			select {
			case err := <-notified:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(wait):
				t.Fatal("no takeover logged")
			}
			for _, id := range dev2.receiveNotes("tok-1") {
				dev2.puback(id)
			}
			dev2.sync()
			checkNothingInflight(t, b, "dev-1")
		})
	}
}

// TestTakeoverStrays: of the messages queued on a taken-over session
// holder, the one copied with the session is not sent twice, the other is
// sent to the new connection.
func TestTakeoverStrays(t *testing.T) {
	b, _ := startBroker(t, Config{})
	topic := "$aws/things/dev-1/tunnels/notify"
	dev, _ := rawDial(t, b, "dev-1", false)
	if codes := dev.subscribe(1, topic); !slices.Equal(codes, []byte{1}) {
		t.Fatalf("SUBACK %#x", codes)
	}
	dev.send(pahopk.NewControlPacket(pahopk.Disconnect))
	dev.c.Close()
	mustNotify(t, b, noteN("dev-1", 1))
	old, ok := b.srv.Clients.Get("dev-1")
	if !ok {
		t.Fatal("no session")
	}

	dev, _ = rawDial(t, b, "dev-1", false)
	ids := dev.receiveNotes("tok-1")
	dev.sync() // the new session is established (OnSessionEstablished ran)
	cur, _ := b.srv.Clients.Get("dev-1")
	if cur == old || !old.IsTakenOver() {
		t.Fatal("session not taken over")
	}
	copied, ok := cur.State.Inflight.Get(ids["tok-1"])
	if !ok {
		t.Fatal("notification not in the new session")
	}
	other := copied.Copy(false)
	other.PacketID, other.Payload = 9, []byte(`{"clientAccessToken":"tok-2"}`)
	b.takeovers.OnQosPublish(old, copied, copied.Created, 0)
	b.takeovers.OnQosPublish(old, other, other.Created, 0)

	// The strays are handed over after the next packet dev sends (or the
	// one whose processing is just ending).
	dev.send(pahopk.NewControlPacket(pahopk.Pingreq))
	var pong bool
	got := uint16(0)
	for !pong || got == 0 {
		switch p := dev.read().(type) {
		case *pahopk.PingrespPacket:
			pong = true
		case *pahopk.PublishPacket:
			if tok := noteToken(string(p.Payload)); tok != "tok-2" || got != 0 {
				t.Fatalf("received %s (packet %d), want tok-2 once", tok, p.MessageID)
			}
			got = p.MessageID
		default:
			t.Fatalf("received %v", p)
		}
	}
	dev.puback(got)
	dev.puback(ids["tok-1"])
	dev.sync() // fails on any further PUBLISH (a second tok-1)
	checkNothingInflight(t, b, "dev-1")
	if n := b.takeovers.n.Load(); n != 0 {
		t.Fatalf("%d strays left", n)
	}
}
