package agent

import (
	"context"
	"testing"

	"github.com/sectun/sectun/internal/notify"
	"github.com/sectun/sectun/internal/token"
)

// BenchmarkHandleMessage measures the agent's work per notification that
// starts nothing: a duplicate delivery (parse, map, dedupe) and a
// malformed document.
func BenchmarkHandleMessage(b *testing.B) {
	a, err := New(Config{ThingName: thing, BrokerURL: "tcp://127.0.0.1:1", TunnelEndpoint: "ws://127.0.0.1:1"})
	if err != nil {
		b.Fatal(err)
	}
	a.sessCtx = context.Background()
	dup := notification(thing, "token-already-running", "SSH")
	a.seen.add(string(token.Hash("token-already-running")))
	bad := []byte(`{"clientAccessToken":"x","clientMode":"source","region":"us-east-1"}`)
	topic := notify.NotifyTopic("", thing)
	b.Run("duplicate", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			a.handleMessage(topic, dup)
		}
	})
	b.Run("malformed", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			a.handleMessage(topic, bad)
		}
	})
}
