package console_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sectun/sectun/internal/console"
	"github.com/sectun/sectun/internal/ratelimit"
	"github.com/sectun/sectun/internal/server"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"))
}

// syncBuffer collects logs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// env is a real tunneld (TLS, SQLite, no MQTT) with its console.
type env struct {
	t            *testing.T
	srv          *server.Server
	base         string
	tls          *tls.Config
	clock        *clock
	logs         *syncBuffer
	akid, secret string
}

func newEnv(t *testing.T, mod func(*server.Config)) *env {
	t.Helper()
	e := &env{t: t, clock: &clock{t: time.Now()}, logs: &syncBuffer{}}
	cfg := server.Config{
		Listen:  "127.0.0.1:0",
		DataDir: t.TempDir(),
		MQTT:    server.MQTTConfig{Off: true},
		Now:     e.clock.Now,
		Logger:  slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := server.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	e.base = srv.URL()
	if p := srv.CAPath(); p != "" {
		pem, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		e.tls = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	b, err := os.ReadFile(srv.CredentialsPath())
	if err != nil {
		t.Fatal(err)
	}
	e.akid = regexp.MustCompile(`aws_access_key_id = (\S+)`).FindStringSubmatch(string(b))[1]
	e.secret = regexp.MustCompile(`aws_secret_access_key = (\S+)`).FindStringSubmatch(string(b))[1]
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("tunneld did not stop")
		}
		logs := e.logs.String()
		if strings.Contains(logs, e.secret) {
			t.Error("logs contain the secret access key")
		}
	})
	return e
}

// browser is a client with a cookie jar, like a browser tab.
type browser struct {
	e    *env
	c    *http.Client
	csrf string
}

func (e *env) browser() *browser {
	jar, _ := cookiejar.New(nil)
	tr := &http.Transport{TLSClientConfig: e.tls}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &browser{e: e, c: &http.Client{Jar: jar, Transport: tr, Timeout: 20 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

type answer struct {
	status int
	header http.Header
	body   string
}

func (b *browser) do(method, path string, body io.Reader, hdr map[string]string) answer {
	b.e.t.Helper()
	req, err := http.NewRequest(method, b.e.base+path, body)
	if err != nil {
		b.e.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(rb)}
}

func (b *browser) signIn(akid, secret string) answer {
	b.e.t.Helper()
	form := url.Values{"access_key_id": {akid}, "secret_access_key": {secret}}
	a := b.do("POST", "/console/signin", strings.NewReader(form.Encode()), map[string]string{"Content-Type": "application/x-www-form-urlencoded"})
	if a.status == http.StatusSeeOther {
		p := b.do("GET", "/console/", nil, nil)
		m := regexp.MustCompile(`name="csrf-token" content="([^"]+)"`).FindStringSubmatch(p.body)
		if m == nil {
			b.e.t.Fatalf("signed-in page has no CSRF token: %d %s", p.status, p.body)
		}
		b.csrf = m[1]
	}
	return a
}

func (b *browser) op(name string, in any, hdr map[string]string) answer {
	b.e.t.Helper()
	body, _ := json.Marshal(in)
	h := map[string]string{"Content-Type": "application/json", "X-CSRF-Token": b.csrf}
	for k, v := range hdr {
		if v == "" {
			delete(h, k)
		} else {
			h[k] = v
		}
	}
	return b.do("POST", "/console/api/op/"+name, bytes.NewReader(body), h)
}

func TestSignInCookieFlags(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser()
	// Before sign-in: the sign-in page, and the API refuses.
	if a := b.do("GET", "/console/", nil, nil); a.status != 200 || !strings.Contains(a.body, `action="/console/signin"`) {
		t.Fatalf("console before sign-in: %d %.200s", a.status, a.body)
	}
	if a := b.do("GET", "/console/api/overview", nil, nil); a.status != 401 || !strings.Contains(a.body, "SessionExpired") {
		t.Errorf("API before sign-in: %d %s", a.status, a.body)
	}
	a := b.signIn(e.akid, e.secret)
	if a.status != http.StatusSeeOther {
		t.Fatalf("sign-in: %d %s", a.status, a.body)
	}
	sc := a.header.Values("Set-Cookie")
	if len(sc) != 1 {
		t.Fatalf("Set-Cookie %q", sc)
	}
	for _, want := range []string{console.CookieName + "=", "Path=/", "HttpOnly", "Secure", "SameSite=Strict", "Max-Age="} {
		if !strings.Contains(sc[0], want) {
			t.Errorf("cookie %q lacks %q", sc[0], want)
		}
	}
	if strings.Contains(sc[0], "Domain=") {
		t.Errorf("cookie %q has a Domain", sc[0])
	}
	var s struct{ Principal, CSRF string }
	a = b.do("GET", "/console/api/session", nil, nil)
	if json.Unmarshal([]byte(a.body), &s); s.Principal != e.akid || s.CSRF != b.csrf {
		t.Errorf("session %s", a.body)
	}
	if a := b.do("GET", "/console/api/overview", nil, nil); a.status != 200 || !strings.Contains(a.body, `"storage":"ok"`) {
		t.Errorf("overview: %d %s", a.status, a.body)
	}
	if !strings.Contains(e.logs.String(), "console sign-in") {
		t.Error("no sign-in log")
	}
}

func TestSecurityHeaders(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser()
	b.signIn(e.akid, e.secret)
	for _, p := range []string{"/console/", "/console/terminal", "/console/api/overview", "/console/static/app.js", "/console/nosuch"} {
		a := b.do("GET", p, nil, nil)
		csp := a.header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, " 'unsafe-eval'") ||
			strings.Contains(csp, "http") || a.header.Get("X-Frame-Options") != "DENY" || a.header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: CSP %q, headers %v", p, csp, a.header)
		}
		if strings.Contains(csp, "script-src 'self' 'unsafe-inline'") {
			t.Errorf("%s: inline scripts allowed", p)
		}
	}
	// No page references anything off this origin.
	for _, p := range []string{"/console/", "/console/terminal", "/console/static/app.js"} {
		if a := b.do("GET", p, nil, nil); regexp.MustCompile(`(src|href)="(https?:)?//`).MatchString(a.body) {
			t.Errorf("%s loads from another origin", p)
		}
	}
}

func TestSignInFailuresLimited(t *testing.T) {
	e := newEnv(t, func(c *server.Config) {
		c.APIFailureLimit = ratelimit.Config{PerMinute: 1, Burst: 3, Cooldown: time.Hour}
	})
	b := e.browser()
	for i := range 3 {
		if a := b.signIn(e.akid, "wrong"); a.status != http.StatusUnauthorized || a.header.Get("Set-Cookie") != "" || !strings.Contains(a.body, "wrong") {
			t.Fatalf("failure %d: %d %v", i, a.status, a.header)
		}
	}
	if a := b.signIn("NOSUCHKEY", e.secret); a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") == "" {
		t.Errorf("past the limit: %d %v", a.status, a.header)
	}
	// Blocked: even the right secret is refused, before it is checked.
	if a := b.signIn(e.akid, e.secret); a.status != http.StatusTooManyRequests || a.header.Get("Set-Cookie") != "" {
		t.Errorf("right secret while blocked: %d", a.status)
	}
	if strings.Contains(e.logs.String(), "wrong") && strings.Contains(e.logs.String(), "secret_access_key=wrong") {
		t.Error("a tried secret is in the logs")
	}
}

func TestCSRF(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser()
	b.signIn(e.akid, e.secret)
	in := map[string]any{"destinationConfig": map[string]any{"services": []string{"SSH"}}}
	for name, hdr := range map[string]map[string]string{
		"no token":       {"X-CSRF-Token": ""},
		"wrong token":    {"X-CSRF-Token": strings.Repeat("A", 43)},
		"other origin":   {"Origin": "https://evil.example"},
		"cross-site":     {"Sec-Fetch-Site": "cross-site"},
		"other session":  {"X-CSRF-Token": func() string { o := e.browser(); o.signIn(e.akid, e.secret); return o.csrf }()},
		"form, no token": {"Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": ""},
	} {
		if a := b.op("OpenTunnel", in, hdr); a.status != http.StatusForbidden || !strings.Contains(a.body, "CSRFCheckFailed") {
			t.Errorf("%s: %d %s", name, a.status, a.body)
		}
	}
	if a := b.do("GET", "/console/api/tunnels", nil, nil); !strings.Contains(a.body, `"tunnels":[]`) {
		t.Errorf("a refused request opened a tunnel: %s", a.body)
	}
	if a := b.op("OpenTunnel", in, map[string]string{"Origin": e.base}); a.status != 200 || !strings.Contains(a.body, "sourceAccessToken") {
		t.Errorf("with the token: %d %s", a.status, a.body)
	}
	// Sign-out is a change too.
	if a := b.do("POST", "/console/signout", nil, nil); a.status != http.StatusForbidden {
		t.Errorf("sign-out without token: %d", a.status)
	}
	// A GET cannot change anything.
	if a := b.do("GET", "/console/api/op/OpenTunnel", nil, nil); a.status != http.StatusMethodNotAllowed {
		t.Errorf("GET op: %d", a.status)
	}
	// A sign-in from another site is refused (login CSRF).
	o := e.browser()
	form := url.Values{"access_key_id": {e.akid}, "secret_access_key": {e.secret}}
	if a := o.do("POST", "/console/signin", strings.NewReader(form.Encode()), map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Origin": "https://evil.example"}); a.status != http.StatusForbidden || a.header.Get("Set-Cookie") != "" {
		t.Errorf("cross-site sign-in: %d", a.status)
	}
}

func TestSessionExpiry(t *testing.T) {
	e := newEnv(t, nil)
	// Idle: a session unused for longer than the idle timeout ends.
	b := e.browser()
	b.signIn(e.akid, e.secret)
	e.clock.Advance(console.DefaultIdleTimeout - time.Minute)
	if a := b.do("GET", "/console/api/session", nil, nil); a.status != 200 {
		t.Fatalf("within the idle timeout: %d", a.status)
	}
	e.clock.Advance(console.DefaultIdleTimeout - time.Minute) // used a minute ago, so still alive
	if a := b.do("GET", "/console/api/session", nil, nil); a.status != 200 {
		t.Fatalf("used within the idle timeout: %d", a.status)
	}
	e.clock.Advance(console.DefaultIdleTimeout + time.Second)
	if a := b.do("GET", "/console/api/session", nil, nil); a.status != 401 {
		t.Errorf("idle past the timeout: %d", a.status)
	}
	if a := b.op("OpenTunnel", map[string]any{}, nil); a.status != 401 {
		t.Errorf("a change on an expired session: %d", a.status)
	}
	if a := b.do("GET", "/console/", nil, nil); !strings.Contains(a.body, `action="/console/signin"`) {
		t.Error("an expired session does not get the sign-in page")
	}
	// Absolute: a session in constant use ends MaxAge after sign-in.
	b = e.browser()
	b.signIn(e.akid, e.secret)
	for elapsed := time.Duration(0); elapsed < console.DefaultMaxAge-20*time.Minute; elapsed += 20 * time.Minute {
		e.clock.Advance(20 * time.Minute)
		if a := b.do("GET", "/console/api/session", nil, nil); a.status != 200 {
			t.Fatalf("active session after %v: %d", elapsed, a.status)
		}
	}
	e.clock.Advance(40 * time.Minute)
	if a := b.do("GET", "/console/api/session", nil, nil); a.status != 401 {
		t.Errorf("past the absolute timeout: %d", a.status)
	}
	if !strings.Contains(e.logs.String(), "console session expired") {
		t.Error("no expiry log")
	}
}

func TestSignOut(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser()
	b.signIn(e.akid, e.secret)
	form := url.Values{"csrf": {b.csrf}}
	a := b.do("POST", "/console/signout", strings.NewReader(form.Encode()), map[string]string{"Content-Type": "application/x-www-form-urlencoded"})
	if a.status != http.StatusSeeOther || !strings.Contains(a.header.Get("Set-Cookie"), "Max-Age=0") {
		t.Fatalf("sign-out: %d %v", a.status, a.header)
	}
	if a := b.do("GET", "/console/api/session", nil, nil); a.status != 401 {
		t.Errorf("after sign-out: %d", a.status)
	}
}

// TestPlaintextLoopbackOnly: over plaintext HTTP the console answers only
// loopback clients (a reverse proxy on this host).
func TestPlaintextLoopbackOnly(t *testing.T) {
	e := newEnv(t, func(c *server.Config) { c.Plaintext = true })
	if !strings.HasPrefix(e.base, "http://") {
		t.Fatal(e.base)
	}
	// The real listener: a loopback client is served.
	b := e.browser()
	if a := b.signIn(e.akid, e.secret); a.status != http.StatusSeeOther {
		t.Fatalf("loopback plaintext sign-in: %d", a.status)
	}
	// The same handler for a client beyond loopback: refused, whatever
	// the request.
	h := e.srv.Handler()
	for _, remote := range []string{"192.0.2.7:5000", "[2001:db8::1]:5000", "10.0.0.1:1"} {
		for _, p := range []string{"/console/", "/console/signin", "/console/api/session", "/console/static/app.js"} {
			req := httptest.NewRequest("GET", "http://tunneld.example"+p, nil)
			req.RemoteAddr = remote
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "HTTPS only") {
				t.Errorf("%s from %s over plaintext: %d", p, remote, rec.Code)
			}
		}
	}
	req := httptest.NewRequest("GET", "https://tunneld.example/console/", nil)
	req.RemoteAddr = "192.0.2.7:5000"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Errorf("over TLS from beyond loopback: %d", rec.Code)
	}
}

// TestTokensShownOnce: the tokens of OpenTunnel and RotateTunnelAccessToken
// are in that one answer, never in a page, another answer or the logs;
// the secret access key is in nothing the console sends.
func TestTokensShownOnce(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser()
	b.signIn(e.akid, e.secret)
	a := b.op("OpenTunnel", map[string]any{"description": "demo", "destinationConfig": map[string]any{"thingName": "pi-1", "services": []string{"SSH"}},
		"tags": []map[string]string{{"key": "team", "value": "ops"}}}, nil)
	var open struct{ TunnelID, SourceAccessToken, DestinationAccessToken string }
	if err := json.Unmarshal([]byte(a.body), &open); err != nil || open.SourceAccessToken == "" {
		t.Fatalf("OpenTunnel: %d %s", a.status, a.body)
	}
	a = b.op("RotateTunnelAccessToken", map[string]any{"tunnelId": open.TunnelID, "clientMode": "ALL"}, nil)
	var rot struct{ SourceAccessToken, DestinationAccessToken string }
	if err := json.Unmarshal([]byte(a.body), &rot); err != nil || rot.DestinationAccessToken == "" {
		t.Fatalf("Rotate: %d %s", a.status, a.body)
	}
	secrets := []string{open.SourceAccessToken, open.DestinationAccessToken, rot.SourceAccessToken, rot.DestinationAccessToken, e.secret}
	var seen []string
	for _, p := range []string{"/console/", "/console/terminal", "/console/api/session", "/console/api/overview", "/console/api/tunnels",
		"/console/api/tunnels?thing=pi-1&status=OPEN", "/console/api/tunnel?id=" + open.TunnelID, "/console/api/devices"} {
		a := b.do("GET", p, nil, nil)
		if a.status != 200 {
			t.Errorf("%s: %d %s", p, a.status, a.body)
		}
		seen = append(seen, a.body)
		for _, s := range secrets {
			if strings.Contains(a.body, s) {
				t.Errorf("%s contains a token or the secret", p)
			}
		}
	}
	if !strings.Contains(seen[6], `"thingName":"pi-1"`) || !strings.Contains(seen[6], `"key":"team"`) || !strings.Contains(seen[4], open.TunnelID) || !strings.Contains(seen[7], `"thing":"pi-1"`) {
		t.Errorf("pages lack the tunnel: %s / %s / %s", seen[4], seen[6], seen[7])
	}
	logs := e.logs.String()
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			t.Error("logs contain a token or the secret")
		}
	}
	// Changes are logged with who made them.
	for _, op := range []string{"OpenTunnel", "RotateTunnelAccessToken"} {
		if !regexp.MustCompile(`op=` + op + ` via=console access_key_id=` + e.akid).MatchString(logs) {
			t.Errorf("no log of %s by %s", op, e.akid)
		}
	}
	// The API's own errors come through.
	a = b.op("CloseTunnel", map[string]any{"tunnelId": "nosuch"}, nil)
	if a.status != 400 || !strings.Contains(a.body, "ResourceNotFoundException") || !strings.Contains(a.body, "Tunnel nosuch not found") {
		t.Errorf("CloseTunnel of a bad ID: %d %s", a.status, a.body)
	}
	a = b.op("DeleteAll", map[string]any{}, nil)
	if a.status != 400 || !strings.Contains(a.body, "UnknownOperationException") {
		t.Errorf("unknown op: %d %s", a.status, a.body)
	}
	// Closing through the console closes it for the AWS API too.
	if a := b.op("CloseTunnel", map[string]any{"tunnelId": open.TunnelID}, nil); a.status != 200 {
		t.Fatalf("close: %d %s", a.status, a.body)
	}
	if a := b.do("GET", "/console/api/tunnels?status=CLOSED", nil, nil); !strings.Contains(a.body, open.TunnelID) {
		t.Errorf("closed list lacks the tunnel: %s", a.body)
	}
	if a := b.do("GET", "/console/api/tunnels?status=OPEN", nil, nil); strings.Contains(a.body, open.TunnelID) {
		t.Errorf("open list has the closed tunnel: %s", a.body)
	}
}

// TestTunnelListPaging walks filtered pages: every tunnel once, newest
// first, the filters applied.
func TestTunnelListPaging(t *testing.T) {
	e := newEnv(t, nil)
	b := e.browser()
	b.signIn(e.akid, e.secret)
	var ids []string
	for i := range 23 {
		thing := "a"
		if i%3 == 0 {
			thing = "b"
		}
		a := b.op("OpenTunnel", map[string]any{"destinationConfig": map[string]any{"thingName": thing, "services": []string{"SSH"}}}, nil)
		var o struct{ TunnelID string }
		json.Unmarshal([]byte(a.body), &o)
		ids = append(ids, o.TunnelID)
		e.clock.Advance(time.Second)
		if i%2 == 0 {
			b.op("CloseTunnel", map[string]any{"tunnelId": o.TunnelID}, nil)
		}
	}
	walk := func(q string) []string {
		var got []string
		cursor := ""
		for range 50 {
			a := b.do("GET", "/console/api/tunnels?limit=4"+q+"&cursor="+url.QueryEscape(cursor), nil, nil)
			var page struct {
				Tunnels []struct {
					TunnelID, ThingName, Status string
				}
				NextCursor string
			}
			if err := json.Unmarshal([]byte(a.body), &page); err != nil || a.status != 200 {
				t.Fatalf("%s: %d %s", q, a.status, a.body)
			}
			for _, r := range page.Tunnels {
				got = append(got, r.TunnelID)
			}
			if page.NextCursor == "" {
				return got
			}
			cursor = page.NextCursor
		}
		t.Fatal("no end of pages")
		return nil
	}
	want := func(keep func(i int) bool) []string {
		var w []string
		for i := len(ids) - 1; i >= 0; i-- {
			if keep(i) {
				w = append(w, ids[i])
			}
		}
		return w
	}
	for q, keep := range map[string]func(int) bool{
		"":                      func(int) bool { return true },
		"&status=OPEN":          func(i int) bool { return i%2 == 1 },
		"&status=closed":        func(i int) bool { return i%2 == 0 },
		"&thing=b":              func(i int) bool { return i%3 == 0 },
		"&thing=b&status=OPEN":  func(i int) bool { return i%3 == 0 && i%2 == 1 },
		"&thing=zz&status=OPEN": func(int) bool { return false },
	} {
		if got, w := walk(q), want(keep); strings.Join(got, ",") != strings.Join(w, ",") {
			t.Errorf("%q: got %d tunnels %v, want %d %v", q, len(got), got, len(w), w)
		}
	}
	if a := b.do("GET", "/console/api/tunnels?status=MAYBE", nil, nil); a.status != 400 {
		t.Errorf("bad status: %d", a.status)
	}
	if a := b.do("GET", "/console/api/tunnels?limit=100000", nil, nil); a.status != 400 {
		t.Errorf("bad limit: %d", a.status)
	}
}

func decode(t *testing.T, body string) map[string]string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	out := map[string]string{}
	for k, v := range m {
		if s, ok := v.(string); ok {
			out[k] = s
		}
	}
	return out
}
