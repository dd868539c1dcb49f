package notify_test

import (
	"testing"

	"github.com/sectun/sectun/internal/notify"
)

var benchNote = notify.Notification{
	ThingName: "dev-1",
	Token:     "AQGAAXiGwVDTWz0rG0gX3QSPZzDm3z4_2u4KY0sZMqZdR2w4AAEAAQ",
	Region:    "us-east-1",
	Services:  []string{"SSH1", "HTTP1", "VNC"},
}

func BenchmarkMarshal(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := benchNote.Marshal(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseDocument(b *testing.B) {
	doc, _ := benchNote.Marshal()
	b.ReportAllocs()
	b.SetBytes(int64(len(doc)))
	for b.Loop() {
		if _, err := notify.ParseDocument(doc); err != nil {
			b.Fatal(err)
		}
	}
}
