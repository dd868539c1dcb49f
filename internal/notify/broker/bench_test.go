package broker

import (
	"context"
	"sync/atomic"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// BenchmarkNotifyTunnel measures NotifyTunnel into the embedded broker,
// with nobody subscribed and with one subscribed device (paho, QoS 1).
// The broker does not wait for the device, so the second case measures
// the enqueueing, and reports how many notifications the device received
// (a device's outbound queue holds 64: bursts beyond that are dropped).
func BenchmarkNotifyTunnel(b *testing.B) {
	br, err := New(Config{Addr: "127.0.0.1:0"})
	if err != nil {
		b.Fatal(err)
	}
	if err := br.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	n := note("dev-1")

	b.Run("no-subscriber", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := br.NotifyTunnel(context.Background(), n); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("one-subscriber", func(b *testing.B) {
		var got atomic.Int64
		c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + br.Addr().String()).SetClientID("dev-1").
			SetDefaultPublishHandler(func(paho.Client, paho.Message) { got.Add(1) }))
		if tok := c.Connect(); !tok.WaitTimeout(wait) || tok.Error() != nil {
			b.Fatal(tok.Error())
		}
		defer c.Disconnect(100)
		if tok := c.Subscribe("$aws/things/dev-1/tunnels/notify", 1, nil); !tok.WaitTimeout(wait) || tok.Error() != nil {
			b.Fatal(tok.Error())
		}
		b.ReportAllocs()
		for b.Loop() {
			if err := br.NotifyTunnel(context.Background(), n); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(got.Load())/float64(b.N), "received/op")
	})
}
