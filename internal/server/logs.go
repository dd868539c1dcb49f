package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// logLimiter passes at most burst records of each kind per period and
// counts the rest; the next record of that kind let through says how many
// were suppressed. A flood of bad connections must not flood the log.
type logLimiter struct {
	log    *slog.Logger
	burst  int
	period time.Duration
	now    func() time.Time

	mu    sync.Mutex
	kinds map[string]*logWindow
}

type logWindow struct {
	start      time.Time
	n          int
	suppressed int
}

func newLogLimiter(l *slog.Logger, burst int, period time.Duration) *logLimiter {
	return &logLimiter{log: l, burst: burst, period: period, now: time.Now, kinds: make(map[string]*logWindow)}
}

// Log logs msg at level unless kind already had its burst this period.
func (l *logLimiter) Log(level slog.Level, kind, msg string, args ...any) {
	if !l.log.Enabled(context.Background(), level) {
		return
	}
	now := l.now()
	l.mu.Lock()
	w := l.kinds[kind]
	if w == nil {
		w = &logWindow{start: now}
		l.kinds[kind] = w
	}
	if now.Sub(w.start) >= l.period {
		w.start, w.n = now, 0
	}
	if w.n >= l.burst {
		w.suppressed++
		l.mu.Unlock()
		return
	}
	w.n++
	suppressed := w.suppressed
	w.suppressed = 0
	l.mu.Unlock()
	if suppressed > 0 {
		args = append(args, "suppressed_before", suppressed)
	}
	l.log.Log(context.Background(), level, msg, args...)
}

// Log limits of the connection-level messages: per kind, 10 a minute.
const (
	connLogBurst  = 10
	connLogPeriod = time.Minute
)

// plainHTTPAnswer is what a client speaking plain HTTP to the TLS port
// gets (net/http sends the same, without the hint).
const plainHTTPAnswer = "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server: use https:// (wss:// for tunnels).\n"

// looksLikeHTTP reports whether the first bytes of a TLS record are the
// start of an HTTP request instead.
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO", "DELET", "CONNE", "PATCH":
		return true
	}
	return false
}

// handshakeFailed is the TLS listener's hook for failed handshakes: a
// plain HTTP request gets a 400 saying to use https://, and both cases
// are logged (rate-limited) with the client's address.
func (s *Server) handshakeFailed(raw net.Conn, proto string, err error) {
	remote := raw.RemoteAddr().String()
	var re tls.RecordHeaderError
	if errors.As(err, &re) && looksLikeHTTP(re.RecordHeader) {
		raw.SetWriteDeadline(time.Now().Add(time.Second))
		io.WriteString(raw, plainHTTPAnswer)
		s.connLog.Log(slog.LevelWarn, "plain-http", "refused plain HTTP on the TLS port: the client must use https:// (wss:// for tunnels)", "remote_addr", remote)
		return
	}
	args := []any{"remote_addr", remote, "err", err}
	if proto != "" {
		args = append(args, "alpn", proto)
	}
	level := slog.LevelInfo
	if errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) {
		// Port probes and health checks that only connect.
		level = slog.LevelDebug
	}
	s.connLog.Log(level, "tls-handshake", "TLS handshake failed", args...)
}

// httpErrorLog is net/http's ErrorLog, as rate-limited slog records:
// "TLS handshake error" lines go the way of handshakeFailed's logs,
// others (accept errors, panics in handlers, bad responses) are warnings.
func (s *Server) httpErrorLog() *log.Logger {
	return log.New(httpLogWriter{s}, "", 0)
}

type httpLogWriter struct{ s *Server }

func (w httpLogWriter) Write(p []byte) (int, error) {
	msg := string(bytes.TrimSpace(p))
	if rest, ok := strings.CutPrefix(msg, "http: TLS handshake error from "); ok {
		remote, detail, _ := strings.Cut(rest, ": ")
		level := slog.LevelInfo
		if detail == "EOF" || strings.Contains(detail, "i/o timeout") {
			level = slog.LevelDebug
		}
		w.s.connLog.Log(level, "tls-handshake", "TLS handshake failed", "remote_addr", remote, "err", detail)
		return len(p), nil
	}
	w.s.connLog.Log(slog.LevelWarn, "http-server", "HTTP server error", "err", msg)
	return len(p), nil
}
