package server

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sectun/sectun/internal/ratelimit"
)

// tlsCipherSuites are the TLS 1.2 suites served: ECDHE key exchange
// (forward secrecy) with AEAD ciphers only, no CBC. TLS 1.3 suites are all
// AEAD and not configurable in Go.
var tlsCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// Defaults of the connection limits.
const (
	defaultMaxConns          = 16384
	defaultMaxConnsPerIP     = 64
	defaultReadHeaderTimeout = 10 * time.Second
	defaultRequestTimeout    = 30 * time.Second
)

// connLimiter caps the listener's connections: all of them (Accept waits
// while maxConns are open, so further clients queue in the kernel), and,
// per client address (ratelimit.Key), those that are not yet WebSockets or
// MQTT sessions: idle, slow or in-flight HTTP connections and TLS
// handshakes. Over the per-address cap a new connection is closed at once.
// Connections leave the per-address count when markLong is called for
// them (hijacked by the relay, taken by the MQTT route), so a fleet behind
// one NAT address can hold any number of tunnels.
type connLimiter struct {
	net.Listener
	sem   chan struct{} // nil: no total cap
	perIP int           // 0: no per-address cap
	log   *slog.Logger

	done      chan struct{}
	closeOnce sync.Once

	mu      sync.Mutex
	pending map[string]int          // per address key: connections not yet long-lived
	byAddr  map[string]*limitedConn // pending connections by local|remote address

	refused atomic.Int64 // connections closed for the per-address cap
}

func newConnLimiter(ln net.Listener, maxConns, perIP int, log *slog.Logger) *connLimiter {
	l := &connLimiter{
		Listener: ln,
		perIP:    max(perIP, 0),
		log:      log,
		done:     make(chan struct{}),
		pending:  make(map[string]int),
		byAddr:   make(map[string]*limitedConn),
	}
	if maxConns > 0 {
		l.sem = make(chan struct{}, maxConns)
	}
	return l
}

// limitedConn is an accepted connection holding its slots.
type limitedConn struct {
	net.Conn
	l         *connLimiter
	key, addr string
	pending   bool // guarded by l.mu
	closeOnce sync.Once
}

func connAddr(c net.Conn) string {
	return c.LocalAddr().String() + "|" + c.RemoteAddr().String()
}

func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		if l.sem != nil {
			select {
			case l.sem <- struct{}{}:
			case <-l.done:
				return nil, net.ErrClosed
			}
		}
		c, err := l.Listener.Accept()
		if err != nil {
			l.release()
			return nil, err
		}
		key, _ := ratelimit.Key(c.RemoteAddr().String())
		lc := &limitedConn{Conn: c, l: l, key: key, addr: connAddr(c), pending: true}
		l.mu.Lock()
		if l.perIP > 0 && l.pending[key] >= l.perIP {
			l.mu.Unlock()
			if l.refused.Add(1)%100 == 1 { // a flood must not flood the log
				l.log.Warn("too many open connections from one address: closing new ones", "remote_addr", key, "max_conns_per_ip", l.perIP, "refused_total", l.refused.Load())
			}
			c.Close()
			l.release()
			continue
		}
		l.pending[key]++
		l.byAddr[lc.addr] = lc
		l.mu.Unlock()
		return lc, nil
	}
}

func (l *connLimiter) release() {
	if l.sem != nil {
		<-l.sem
	}
}

// Close stops Accept (also one waiting for a slot) and closes the listener.
func (l *connLimiter) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// markLong takes a connection (or a *tls.Conn over one) out of its
// address's count: it became a WebSocket or an MQTT session.
func (l *connLimiter) markLong(c net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if lc := l.byAddr[connAddr(c)]; lc != nil {
		l.unpend(lc)
	}
}

// unpend removes lc from the pending counts. l.mu is held.
func (l *connLimiter) unpend(lc *limitedConn) {
	if !lc.pending {
		return
	}
	lc.pending = false
	delete(l.byAddr, lc.addr)
	if n := l.pending[lc.key] - 1; n > 0 {
		l.pending[lc.key] = n
	} else {
		delete(l.pending, lc.key)
	}
}

// pendingCount returns the connections counted for addresses (tests,
// metrics).
func (l *connLimiter) pendingCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.byAddr)
}

// NetConn returns the accepted connection, so that code tuning the TCP
// socket under a WebSocket (wsconn's short queues, the relay's read-ahead)
// can reach it through this wrapper as it does through TLS.
func (c *limitedConn) NetConn() net.Conn { return c.Conn }

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() {
		c.l.mu.Lock()
		c.l.unpend(c)
		c.l.mu.Unlock()
		c.l.release()
	})
	return err
}

// connState is the http.Server hook: a hijacked connection (a WebSocket)
// no longer counts for its address.
func (l *connLimiter) connState(c net.Conn, st http.ConnState) {
	if st == http.StateHijacked {
		l.markLong(c)
	}
}

// requestDeadlines bounds how long one request may take to arrive (body
// included) and to be answered, so slow clients cannot hold connections.
// The relay's hijack clears them (net/http does), so WebSockets are not
// cut; ReadHeaderTimeout covers the TLS handshake and the headers.
func requestDeadlines(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		rc.SetReadDeadline(time.Now().Add(d))
		rc.SetWriteDeadline(time.Now().Add(d))
		h.ServeHTTP(w, r)
	})
}

// statusRecorder remembers the status an API handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// limitAPIFailures refuses API requests from an address that failed
// authentication (403: missing, unknown or wrong signature) too often,
// with 429 ThrottlingException and Retry-After, before the signature is
// even checked.
func limitAPIFailures(h http.Handler, lim *ratelimit.Limiter, log *slog.Logger) http.Handler {
	if lim == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ok, wait := lim.Allow(r.RemoteAddr); !ok {
			retry := ratelimit.RetryAfter(wait)
			b, _ := json.Marshal(struct {
				Type    string `json:"__type"`
				Message string `json:"message"`
			}{"ThrottlingException", fmt.Sprintf("Rate exceeded: too many requests with failed authentication from your address; retry in %s seconds", retry)})
			hdr := w.Header()
			hdr.Set("Retry-After", retry)
			hdr.Set("Content-Type", "application/x-amz-json-1.1")
			hdr.Set("X-Amzn-ErrorType", "ThrottlingException")
			hdr.Set("Content-Length", strconv.Itoa(len(b)))
			w.WriteHeader(http.StatusTooManyRequests)
			w.Write(b)
			log.Debug("api request refused: address blocked", "remote_addr", r.RemoteAddr)
			return
		}
		rec := &statusRecorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		if rec.status == http.StatusForbidden && lim.Fail(r.RemoteAddr) {
			key, _ := ratelimit.Key(r.RemoteAddr)
			log.Warn("too many api requests with failed authentication: refusing the address for a while", "remote_addr", r.RemoteAddr, "key", key, "cooldown", lim.Cooldown())
		}
	})
}
