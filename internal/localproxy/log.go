package localproxy

import (
	"context"
	"encoding"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// Log levels of the reference's verbosity scale that slog lacks.
const (
	// LevelTrace is verbosity 6 (trace).
	LevelTrace = slog.LevelDebug - 4
	// LevelFatal is verbosity 1 (fatal): the line explaining an exit.
	LevelFatal = slog.LevelError + 4
)

// VerbosityLevel maps the reference's -v value to the lowest slog level
// shown: 0 off, 1 fatal, 2 error, 3 warning, 4 info, 5 debug, 6 and above
// trace. ok is false for 0 (nothing is logged).
func VerbosityLevel(v int) (level slog.Level, ok bool) {
	switch {
	case v <= 0:
		return 0, false
	case v == 1:
		return LevelFatal, true
	case v == 2:
		return slog.LevelError, true
	case v == 3:
		return slog.LevelWarn, true
	case v == 4:
		return slog.LevelInfo, true
	case v == 5:
		return slog.LevelDebug, true
	}
	return LevelTrace, true
}

// NewLogger returns a logger writing lines in the reference local proxy's
// format to w, filtered by verbosity (see VerbosityLevel):
//
//	[2019-01-17T21:37:15.528290]{632}[info]    message key=value ...
//
// (local time, process ID, severity). Attributes follow the message in
// slog's text form.
func NewLogger(w io.Writer, verbosity int) *slog.Logger {
	level, ok := VerbosityLevel(verbosity)
	if !ok {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(&lineHandler{out: &lockedWriter{w: w}, level: level, pid: os.Getpid()})
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

// lineHandler formats records as the reference does.
type lineHandler struct {
	out    *lockedWriter
	level  slog.Level
	pid    int
	pre    string // preformatted attributes from WithAttrs
	prefix string // group prefix from WithGroup, "g1.g2."
}

func (h *lineHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func levelName(l slog.Level) string {
	switch {
	case l >= LevelFatal:
		return "fatal"
	case l >= slog.LevelError:
		return "error"
	case l >= slog.LevelWarn:
		return "warning"
	case l >= slog.LevelInfo:
		return "info"
	case l >= slog.LevelDebug:
		return "debug"
	}
	return "trace"
}

func (h *lineHandler) Handle(_ context.Context, r slog.Record) error {
	t := r.Time
	if t.IsZero() {
		t = time.Now()
	}
	var b strings.Builder
	b.Grow(128)
	b.WriteByte('[')
	b.WriteString(t.Format("2006-01-02T15:04:05.000000"))
	b.WriteString("]{")
	b.WriteString(strconv.Itoa(h.pid))
	b.WriteByte('}')
	// The reference pads "[severity]" to 9 characters, then a space.
	fmt.Fprintf(&b, "%-9s ", "["+levelName(r.Level)+"]")
	b.WriteString(oneLine(r.Message))
	b.WriteString(h.pre)
	r.Attrs(func(a slog.Attr) bool {
		appendAttr(&b, h.prefix, a)
		return true
	})
	b.WriteByte('\n')
	h.out.mu.Lock()
	defer h.out.mu.Unlock()
	_, err := io.WriteString(h.out.w, b.String())
	return err
}

func (h *lineHandler) WithAttrs(as []slog.Attr) slog.Handler {
	var b strings.Builder
	b.WriteString(h.pre)
	for _, a := range as {
		appendAttr(&b, h.prefix, a)
	}
	h2 := *h
	h2.pre = b.String()
	return &h2
}

func (h *lineHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.prefix = h.prefix + name + "."
	return &h2
}

// appendAttr writes " key=value", flattening groups into dotted keys.
func appendAttr(b *strings.Builder, prefix string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return
	}
	if a.Value.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range a.Value.Group() {
			appendAttr(b, p, g)
		}
		return
	}
	b.WriteByte(' ')
	b.WriteString(quote(prefix + a.Key))
	b.WriteByte('=')
	b.WriteString(quote(valueText(a.Value)))
}

func valueText(v slog.Value) string {
	switch v.Kind() {
	case slog.KindString:
		return v.String()
	case slog.KindTime:
		return v.Time().Format(time.RFC3339Nano)
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			return x.Error()
		case encoding.TextMarshaler:
			if t, err := x.MarshalText(); err == nil {
				return string(t)
			}
		case []byte:
			return strconv.Quote(string(x))
		}
		return fmt.Sprint(v.Any())
	}
	return v.String()
}

// quote quotes s when it is empty or holds spaces, '=', '"' or characters
// that are not printable, as slog's text handler does.
func quote(s string) string {
	if s == "" {
		return `""`
	}
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError || r == '=' || r == '"' || unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
		i += size
	}
	return s
}

// oneLine keeps a message on its line.
func oneLine(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	return strings.NewReplacer("\r", `\r`, "\n", `\n`).Replace(s)
}
