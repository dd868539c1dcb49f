package localproxy

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"testing"
)

func TestVerbosityLevel(t *testing.T) {
	for _, tc := range []struct {
		v     int
		level slog.Level
		ok    bool
	}{
		{0, 0, false},
		{1, LevelFatal, true},
		{2, slog.LevelError, true},
		{3, slog.LevelWarn, true},
		{4, slog.LevelInfo, true},
		{5, slog.LevelDebug, true},
		{6, LevelTrace, true},
		{255, LevelTrace, true},
	} {
		level, ok := VerbosityLevel(tc.v)
		if level != tc.level || ok != tc.ok {
			t.Errorf("VerbosityLevel(%d) = %v, %v; want %v, %v", tc.v, level, ok, tc.level, tc.ok)
		}
	}
}

func TestLoggerFormat(t *testing.T) {
	var b bytes.Buffer
	log := NewLogger(&b, 6)
	log.Info("Listening for SSH on 127.0.0.1:5555", "service_id", "SSH")
	log.With("mode", "source").WithGroup("g").Warn("two\nlines", "err", errors.New("a b"), "empty", "", "n", 3)
	log.Log(t.Context(), LevelTrace, "trace")
	log.Log(t.Context(), LevelFatal, "fatal")
	log.Debug("debug", slog.Group("grp", "k", "v"))
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	pid := fmt.Sprint(os.Getpid())
	prefix := `^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\]\{` + pid + `\}`
	want := []string{
		prefix + `\[info\]    Listening for SSH on 127\.0\.0\.1:5555 service_id=SSH$`,
		prefix + `\[warning\] two\\nlines mode=source g\.err="a b" g\.empty="" g\.n=3$`,
		prefix + `\[trace\]   trace$`,
		prefix + `\[fatal\]   fatal$`,
		prefix + `\[debug\]   debug grp\.k=v$`,
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines:\n%s", len(lines), b.String())
	}
	for i, re := range want {
		if !regexp.MustCompile(re).MatchString(lines[i]) {
			t.Errorf("line %d = %q\nwant match %s", i, lines[i], re)
		}
	}
}

func TestLoggerLevels(t *testing.T) {
	for v, want := range []int{0, 1, 2, 3, 4, 5, 6} {
		var b bytes.Buffer
		log := NewLogger(&b, v)
		log.Log(t.Context(), LevelFatal, "f")
		log.Error("e")
		log.Warn("w")
		log.Info("i")
		log.Debug("d")
		log.Log(t.Context(), LevelTrace, "t")
		if got := strings.Count(b.String(), "\n"); got != want {
			t.Errorf("-v %d: %d lines, want %d:\n%s", v, got, want, b.String())
		}
	}
}

func BenchmarkLogger(b *testing.B) {
	log := NewLogger(discard{}, 4)
	b.ReportAllocs()
	for b.Loop() {
		log.Info("connection closed by the peer", "service_id", "SSH", "stream_id", 3, "sent", 1234)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
