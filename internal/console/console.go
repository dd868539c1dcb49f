package console

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/sectun/sectun/internal/ratelimit"
	"github.com/sectun/sectun/internal/server/api"
	"github.com/sectun/sectun/internal/server/relay"
	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/version"
)

// Path is where the console is mounted.
const Path = "/console"

// Defaults of Config.
const (
	DefaultIdleTimeout = 30 * time.Minute
	DefaultMaxAge      = 12 * time.Hour
	DefaultMaxSessions = 1000
)

// ErrConfig reports an invalid Config.
var ErrConfig = errors.New("console: invalid config")

// API runs management API operations in process (api.Server.Invoke).
type API interface {
	Invoke(ctx context.Context, op string, body []byte, principal, via string) ([]byte, error)
}

// Relay gives the relay's live figures (relay.Relay).
type Relay interface {
	Stats() relay.Stats
	TunnelStats(tunnelID string) (source, destination relay.EndStats, ok bool)
}

// Device is a thing the MQTT broker knows.
type Device struct {
	Thing     string    `json:"thing"`
	Connected bool      `json:"connected"`
	LastSeen  time.Time `json:"lastSeen"`
}

// Config configures a Console.
type Config struct {
	// API runs the operations (required).
	API API
	// Store is read for the tunnel list and the devices page (required).
	Store store.Store
	// Relay gives live figures (required).
	Relay Relay
	// Credentials maps access key IDs to secrets: the keys that may sign
	// in (required, at least one).
	Credentials map[string]string
	// FailureLimit counts failed sign-ins per address (tunneld passes the
	// API's failure limiter, so both count together); nil: no limit.
	FailureLimit *ratelimit.Limiter
	// TunnelURL is the tunnel endpoint printed in commands
	// (wss://host:port); "" derives it from each request's Host.
	TunnelURL string
	// CAPath, when set, is the CA file printed in commands (-c, --ca).
	CAPath string
	// Region is the region printed in commands; default us-east-1.
	Region string
	// Devices, when set, lists the things connected to the MQTT broker.
	Devices func() []Device
	// IdleTimeout ends a session without requests; default 30 minutes.
	IdleTimeout time.Duration
	// MaxAge ends a session after sign-in, whatever it does; default 12 h.
	MaxAge time.Duration
	// MaxSessions caps live sessions; past it the oldest is ended.
	// Default 1000.
	MaxSessions int
	// Logger receives sign-in and sign-out logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Console serves the web console. Create it with New; it is an
// http.Handler for Path and everything under it.
type Console struct {
	cfg     Config
	log     *slog.Logger
	assets  fs.FS
	static  http.Handler
	started time.Time

	mu       sync.Mutex
	sessions map[string]*session // by sha256 of the cookie value
}

//go:generate sh scripts/build-wasm.sh

//go:embed assets
var assetFS embed.FS

// New checks cfg and returns a Console.
func New(cfg Config) (*Console, error) {
	switch {
	case cfg.API == nil || cfg.Store == nil || cfg.Relay == nil:
		return nil, fmt.Errorf("%w: API, Store and Relay are required", ErrConfig)
	case len(cfg.Credentials) == 0:
		return nil, fmt.Errorf("%w: no access keys to sign in with", ErrConfig)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Console{cfg: cfg, log: cfg.Logger, sessions: map[string]*session{}}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.started = cfg.Now()
	sub, err := fs.Sub(assetFS, "assets")
	if err != nil {
		return nil, err
	}
	c.assets = sub
	c.static = http.StripPrefix(Path+"/static/", http.FileServerFS(sub))
	return c, nil
}

// csp is the Content-Security-Policy of every page but the terminal.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// cspTerminal adds what the terminal needs: compiling the WebAssembly SSH
// client, and inline style elements (xterm.js sizes its rows with a style
// element it writes).
const cspTerminal = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// ServeHTTP serves the console.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin") // no-referrer makes form posts send Origin: null
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	if r.TLS == nil && !loopbackClient(r.RemoteAddr) {
		h.Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, "The console is served over HTTPS only (or to loopback clients, such as a reverse proxy on this host).\n")
		return
	}
	p := r.URL.Path
	switch {
	case p == Path:
		http.Redirect(w, r, Path+"/", http.StatusFound)
	case strings.HasPrefix(p, Path+"/static/"):
		if strings.HasSuffix(p, ".wasm") || strings.HasSuffix(p, ".js") || strings.HasSuffix(p, ".css") {
			h.Set("Cache-Control", "no-cache")
		}
		c.static.ServeHTTP(w, r)
	case p == Path+"/signin":
		c.signIn(w, r)
	case p == Path+"/signout":
		c.withSession(w, r, true, c.signOut)
	case p == Path+"/" || p == Path+"/terminal":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			methodNotAllowed(w, "GET")
			return
		}
		h.Set("Cache-Control", "no-store")
		s := c.session(r)
		if s == nil {
			c.page(w, "signin.html", "", "")
			return
		}
		if p == Path+"/terminal" {
			h.Set("Content-Security-Policy", cspTerminal)
			c.page(w, "terminal.html", s.csrf, s.principal)
			return
		}
		c.page(w, "index.html", s.csrf, s.principal)
	case strings.HasPrefix(p, Path+"/api/"):
		h.Set("Cache-Control", "no-store")
		c.serveAPI(w, r, strings.TrimPrefix(p, Path+"/api/"))
	default:
		jsonError(w, http.StatusNotFound, "NotFound", "No console page at "+shorten(p))
	}
}

// page writes an HTML page from the assets, with the CSRF token and the
// principal in its meta tags.
func (c *Console) page(w http.ResponseWriter, name, csrf, principal string) {
	b, err := fs.ReadFile(c.assets, name)
	if err != nil {
		http.Error(w, "console asset missing", http.StatusInternalServerError)
		return
	}
	s := strings.NewReplacer("{{csrf}}", csrf, "{{principal}}", htmlEscape(principal), "{{version}}", htmlEscape(version.String())).Replace(string(b))
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	io.WriteString(w, s)
}

func htmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&#39;").Replace(s)
}

func loopbackClient(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	jsonError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "Use "+allow)
}

func jsonError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"__type": code, "message": msg})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func shorten(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// sameOrigin reports whether a state-changing request comes from this
// origin: its Origin header (when present) names the request's host, and
// Sec-Fetch-Site (when present) is same-origin.
func sameOrigin(r *http.Request) bool {
	if sfs := r.Header.Get("Sec-Fetch-Site"); sfs != "" && sfs != "same-origin" {
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

// secretMatches compares in constant time (for the secret's length).
func secretMatches(want, got string) bool {
	a, b := sha256.Sum256([]byte(want)), sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// health is the node's health for the overview.
type health struct {
	Storage        string  `json:"storage"`
	StorageLatency float64 `json:"storageLatencyMs"`
	Uptime         float64 `json:"uptimeSeconds"`
	Version        string  `json:"version"`
	GoVersion      string  `json:"goVersion"`
	Goroutines     int     `json:"goroutines"`
	HeapBytes      uint64  `json:"heapBytes"`
	Sessions       int     `json:"consoleSessions"`
}

func (c *Console) health(ctx context.Context) (health, int) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	n, err := c.cfg.Store.CountOpen(ctx)
	h := health{
		Storage:        "ok",
		StorageLatency: float64(time.Since(start).Microseconds()) / 1000,
		Uptime:         c.cfg.Now().Sub(c.started).Seconds(),
		Version:        version.String(),
		GoVersion:      runtime.Version(),
		Goroutines:     runtime.NumGoroutine(),
	}
	if err != nil {
		h.Storage = "unavailable"
		n = -1
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	h.HeapBytes = ms.HeapAlloc
	c.mu.Lock()
	h.Sessions = len(c.sessions)
	c.mu.Unlock()
	return h, n
}

// opErr writes an API error the way the API does: its code and message.
func opErr(w http.ResponseWriter, err error) {
	var oe *api.OpError
	if errors.As(err, &oe) {
		jsonError(w, oe.Status, oe.Code, oe.Message)
		return
	}
	jsonError(w, http.StatusInternalServerError, api.CodeInternalFailure, "Internal failure")
}
