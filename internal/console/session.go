package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"strings"
	"time"

	"github.com/sectun/sectun/internal/ratelimit"
)

// CookieName is the session cookie. The __Host- prefix makes browsers
// insist on Secure, Path=/ and no Domain.
const CookieName = "__Host-sectun-console"

// maxSignInBody bounds the sign-in form.
const maxSignInBody = 4 << 10

// session is a signed-in browser.
type session struct {
	key       string // sha256 of the cookie value, hex
	principal string // access key ID
	csrf      string
	created   time.Time
	lastSeen  time.Time
}

// short names the session in logs without revealing its cookie.
func (s *session) short() string { return s.key[:12] }

func randomToken() string {
	var b [32]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func hashCookie(v string) string {
	h := sha256.Sum256([]byte(v))
	return hex.EncodeToString(h[:])
}

// session returns the live session of r's cookie, refreshing its idle
// timer, or nil.
func (c *Console) session(r *http.Request) *session {
	ck, err := r.Cookie(CookieName)
	if err != nil || ck.Value == "" {
		return nil
	}
	key := hashCookie(ck.Value)
	now := c.cfg.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sessions[key]
	if s == nil {
		return nil
	}
	if now.Sub(s.lastSeen) > c.cfg.IdleTimeout || now.Sub(s.created) > c.cfg.MaxAge {
		delete(c.sessions, key)
		c.log.Info("console session expired", "access_key_id", s.principal, "session", s.short())
		return nil
	}
	s.lastSeen = now
	return s
}

// newSession starts a session for principal and returns its cookie value.
func (c *Console) newSession(principal string) (*session, string) {
	v := randomToken()
	now := c.cfg.Now()
	s := &session{key: hashCookie(v), principal: principal, csrf: randomToken(), created: now, lastSeen: now}
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, o := range c.sessions { // drop expired ones, then the oldest past the cap
		if now.Sub(o.lastSeen) > c.cfg.IdleTimeout || now.Sub(o.created) > c.cfg.MaxAge {
			delete(c.sessions, k)
		}
	}
	for len(c.sessions) >= c.cfg.MaxSessions {
		var oldest *session
		for _, o := range c.sessions {
			if oldest == nil || o.created.Before(oldest.created) {
				oldest = o
			}
		}
		delete(c.sessions, oldest.key)
	}
	c.sessions[s.key] = s
	return s, v
}

func (c *Console) setCookie(w http.ResponseWriter, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name:     CookieName,
		Value:    value,
		Path:     "/",
		MaxAge:   maxAge,
		HttpOnly: true,
		Secure:   true,
		SameSite: http.SameSiteStrictMode,
	})
}

// checkCSRF reports whether a change request carries the session's CSRF
// token and comes from this origin.
func checkCSRF(r *http.Request, s *session) bool {
	if !sameOrigin(r) {
		return false
	}
	tok := r.Header.Get("X-CSRF-Token")
	if tok == "" && strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		tok = r.PostFormValue("csrf")
	}
	return tok != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(s.csrf)) == 1
}

// withSession runs fn for a signed-in request; change requests (POST)
// must pass checkCSRF. Without a session it answers 401; a bad CSRF
// token is 403.
func (c *Console) withSession(w http.ResponseWriter, r *http.Request, change bool, fn func(http.ResponseWriter, *http.Request, *session)) {
	if change != (r.Method == http.MethodPost) {
		if change {
			methodNotAllowed(w, "POST")
		} else {
			methodNotAllowed(w, "GET")
		}
		return
	}
	s := c.session(r)
	if s == nil {
		jsonError(w, http.StatusUnauthorized, "SessionExpired", "Not signed in, or the session has ended: sign in again")
		return
	}
	if change {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if !checkCSRF(r, s) {
			c.log.Warn("console request refused: CSRF check failed", "access_key_id", s.principal, "session", s.short(), "path", r.URL.Path, "remote_addr", r.RemoteAddr)
			jsonError(w, http.StatusForbidden, "CSRFCheckFailed", "The request lacks this session's CSRF token or comes from another site: reload the page")
			return
		}
	}
	fn(w, r, s)
}

// signIn checks an access key ID and secret (form fields access_key_id,
// secret_access_key) and starts a session.
func (c *Console) signIn(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Redirect(w, r, Path+"/", http.StatusSeeOther)
		return
	}
	if !sameOrigin(r) {
		c.signInPage(w, http.StatusForbidden, "This sign-in came from another site.")
		return
	}
	if ok, wait := c.cfg.FailureLimit.Allow(r.RemoteAddr); !ok {
		w.Header().Set("Retry-After", ratelimit.RetryAfter(wait))
		c.log.Warn("console sign-in refused: too many failures", "remote_addr", r.RemoteAddr)
		c.signInPage(w, http.StatusTooManyRequests, "Too many failed sign-ins from your address. Try again in "+wait.Round(time.Second).String()+".")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxSignInBody)
	id := strings.TrimSpace(r.PostFormValue("access_key_id"))
	secret := strings.TrimSpace(r.PostFormValue("secret_access_key"))
	want, known := c.cfg.Credentials[id]
	if !known {
		want = "\x00not a secret\x00" // compare anyway: same time either way
	}
	if !secretMatches(want, secret) || !known || secret == "" {
		blocked := c.cfg.FailureLimit.Fail(r.RemoteAddr)
		c.log.Warn("console sign-in failed", "access_key_id", shorten(id), "remote_addr", r.RemoteAddr, "blocked", blocked)
		c.signInPage(w, http.StatusUnauthorized, "The access key ID or the secret access key is wrong.")
		return
	}
	s, v := c.newSession(id)
	c.setCookie(w, v, int(c.cfg.MaxAge.Seconds()))
	c.log.Info("console sign-in", "access_key_id", id, "session", s.short(), "remote_addr", r.RemoteAddr)
	http.Redirect(w, r, Path+"/", http.StatusSeeOther)
}

func (c *Console) signInPage(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Cache-Control", "no-store")
	b, err := assetFS.ReadFile("assets/signin.html")
	if err != nil {
		http.Error(w, "console asset missing", http.StatusInternalServerError)
		return
	}
	page := strings.Replace(string(b), `<p class="error" id="signin-error" hidden></p>`, `<p class="error" id="signin-error">`+htmlEscape(msg)+`</p>`, 1)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write([]byte(page))
}

// signOut ends the session.
func (c *Console) signOut(w http.ResponseWriter, r *http.Request, s *session) {
	c.mu.Lock()
	delete(c.sessions, s.key)
	c.mu.Unlock()
	c.setCookie(w, "", -1)
	c.log.Info("console sign-out", "access_key_id", s.principal, "session", s.short())
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		http.Redirect(w, r, Path+"/", http.StatusSeeOther)
		return
	}
	writeJSON(w, map[string]bool{"signedOut": true})
}
