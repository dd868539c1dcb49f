package server

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestDataDirLocked: a second server on a data directory in use refuses
// to start, naming the holder; once the first closes, it starts.
func TestDataDirLocked(t *testing.T) {
	cfg := Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Plaintext: true, NoAuth: true, MQTT: MQTTConfig{Off: true}}
	first, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(context.Background(), cfg)
	if !errors.Is(err, ErrDataDirInUse) || !strings.Contains(err.Error(), "process "+strconv.Itoa(os.Getpid())) || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("second New: %v; want ErrDataDirInUse naming this process", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	second, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New after the first closed: %v", err)
	}
	second.Close()
}
