package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"go.uber.org/goleak"

	"github.com/sectun/sectun/internal/server/sigv4"
	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/store/sqlite"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	testAKID   = "AKIDTUNNELDTEST"
	testSecret = "tunneld/test+secret/0123456789abcdefghij"
)

// clock is a settable test clock.
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

// peerCall is one recorded Peers call.
type peerCall struct {
	op, tunnelID string
	mode         store.Mode
}

// recPeers records the calls the API makes to the relay.
type recPeers struct {
	mu    sync.Mutex
	calls []peerCall
}

func (p *recPeers) CloseTunnel(id, reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, peerCall{op: "close", tunnelID: id})
}

func (p *recPeers) DisconnectPeer(id string, m store.Mode, reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, peerCall{op: "disconnect", tunnelID: id, mode: m})
}

func (p *recPeers) take() []peerCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.calls
	p.calls = nil
	return c
}

// recNotifier records notifications.
type recNotifier struct {
	mu    sync.Mutex
	notes []Notification
}

func (n *recNotifier) NotifyTunnel(_ context.Context, x Notification) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.notes = append(n.notes, x)
}

func (n *recNotifier) take() []Notification {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := n.notes
	n.notes = nil
	return c
}

// syncBuffer is a log sink safe for concurrent writes.
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

// env is a Server on a fresh in-memory SQLite store behind an httptest
// server on 127.0.0.1, with recorded peers, notifications and logs.
type env struct {
	t      *testing.T
	srv    *Server
	st     store.Store
	hs     *httptest.Server
	clock  *clock
	peers  *recPeers
	notes  *recNotifier
	logs   *syncBuffer
	mu     sync.Mutex
	tokens []string // every token the API returned
}

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func openStore(t testing.TB) store.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), sqlite.Memory)
	if err != nil {
		t.Fatalf("sqlite.Open: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newEnv(t *testing.T, mod func(*Config)) *env {
	t.Helper()
	e := &env{
		t:     t,
		st:    openStore(t),
		clock: &clock{t: t0},
		peers: &recPeers{},
		notes: &recNotifier{},
		logs:  &syncBuffer{},
	}
	cfg := Config{
		Store:       e.st,
		Credentials: sigv4.Credentials{testAKID: testSecret},
		Peers:       e.peers,
		Notifier:    e.notes,
		Logger:      slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:         e.clock.Now,
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.srv = srv
	e.hs = httptest.NewServer(srv)
	t.Cleanup(e.hs.Close)
	t.Cleanup(e.checkLogs)
	return e
}

// checkLogs fails the test if any token the API handed out is in the logs.
func (e *env) checkLogs() {
	logs := e.logs.String()
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, tok := range e.tokens {
		if strings.Contains(logs, tok) {
			e.t.Errorf("logs contain an access token")
		}
	}
}

// resp is an API answer.
type resp struct {
	status int
	header http.Header
	body   []byte
}

// errCode checks the AWS error shape and returns the code.
func (r *resp) errCode(t *testing.T) (code, message string) {
	t.Helper()
	var b struct {
		Type    string  `json:"__type"`
		Message *string `json:"message"`
	}
	if err := json.Unmarshal(r.body, &b); err != nil {
		t.Fatalf("error body %q is not JSON: %v", r.body, err)
	}
	if b.Message == nil {
		t.Errorf("error body %s has no message", r.body)
		b.Message = new(string)
	}
	if h := r.header.Get("X-Amzn-ErrorType"); h != b.Type {
		t.Errorf("X-Amzn-ErrorType %q != __type %q", h, b.Type)
	}
	if r.header.Get("Content-Type") != "application/x-amz-json-1.1" {
		t.Errorf("Content-Type = %q", r.header.Get("Content-Type"))
	}
	return b.Type, *b.Message
}

func (r *resp) into(t *testing.T, v any) {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %s: %v", r.body, err)
	}
}

// request describes a raw request; zero fields take the defaults of a
// well-formed signed API call.
type request struct {
	method, path, target, contentType string
	body                              []byte
	akid, secret                      string
	unsigned                          bool
	signAt                            time.Time
}

func (e *env) do(rq request) *resp {
	e.t.Helper()
	if rq.method == "" {
		rq.method = http.MethodPost
	}
	if rq.path == "" {
		rq.path = "/"
	}
	if rq.contentType == "" {
		rq.contentType = "application/x-amz-json-1.1"
	}
	r, err := http.NewRequest(rq.method, e.hs.URL+rq.path, bytes.NewReader(rq.body))
	if err != nil {
		e.t.Fatal(err)
	}
	r.Header.Set("Content-Type", rq.contentType)
	if rq.target != "" {
		r.Header.Set("X-Amz-Target", rq.target)
	}
	if !rq.unsigned {
		akid, secret, at := testAKID, testSecret, e.clock.Now()
		if rq.akid != "" {
			akid = rq.akid
		}
		if rq.secret != "" {
			secret = rq.secret
		}
		if !rq.signAt.IsZero() {
			at = rq.signAt
		}
		sum := sha256.Sum256(rq.body)
		err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: akid, SecretAccessKey: secret},
			r, hex.EncodeToString(sum[:]), "IoTSecuredTunneling", "us-east-1", at)
		if err != nil {
			e.t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := http.DefaultClient.Do(r.WithContext(ctx))
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	if res.Header.Get("X-Amzn-RequestId") == "" {
		e.t.Errorf("%s %s: no X-Amzn-RequestId", rq.method, rq.target)
	}
	out := &resp{status: res.StatusCode, header: res.Header, body: b}
	e.collectTokens(b)
	return out
}

// collectTokens remembers tokens in a response, for checkLogs.
func (e *env) collectTokens(b []byte) {
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, k := range []string{"sourceAccessToken", "destinationAccessToken"} {
		if s, ok := m[k].(string); ok && s != "" {
			e.tokens = append(e.tokens, s)
		}
	}
}

// call makes a signed call of op with body v (marshalled; a string or
// []byte is sent as is).
func (e *env) call(op string, v any) *resp {
	e.t.Helper()
	var b []byte
	switch x := v.(type) {
	case string:
		b = []byte(x)
	case []byte:
		b = x
	default:
		var err error
		if b, err = json.Marshal(v); err != nil {
			e.t.Fatal(err)
		}
	}
	return e.do(request{target: "IoTSecuredTunneling." + op, body: b})
}

// mustCall is call that must succeed; it decodes the answer into out
// (when non-nil).
func (e *env) mustCall(op string, v any, out any) {
	e.t.Helper()
	r := e.call(op, v)
	if r.status != http.StatusOK {
		e.t.Fatalf("%s: status %d: %s", op, r.status, r.body)
	}
	if out != nil {
		r.into(e.t, out)
	}
}

type openResult struct {
	TunnelID               string `json:"tunnelId"`
	TunnelArn              string `json:"tunnelArn"`
	SourceAccessToken      string `json:"sourceAccessToken"`
	DestinationAccessToken string `json:"destinationAccessToken"`
}

func (e *env) open(v any) openResult {
	e.t.Helper()
	var o openResult
	e.mustCall("OpenTunnel", v, &o)
	return o
}

// tunnelJSON is DescribeTunnel's tunnel with timestamps as numbers.
type tunnelJSON struct {
	TunnelID              string `json:"tunnelId"`
	TunnelArn             string `json:"tunnelArn"`
	Status                string `json:"status"`
	SourceConnectionState struct {
		Status        string  `json:"status"`
		LastUpdatedAt float64 `json:"lastUpdatedAt"`
	} `json:"sourceConnectionState"`
	DestinationConnectionState struct {
		Status        string  `json:"status"`
		LastUpdatedAt float64 `json:"lastUpdatedAt"`
	} `json:"destinationConnectionState"`
	Description       string `json:"description"`
	DestinationConfig *struct {
		ThingName string   `json:"thingName"`
		Services  []string `json:"services"`
	} `json:"destinationConfig"`
	TimeoutConfig struct {
		MaxLifetimeTimeoutMinutes int `json:"maxLifetimeTimeoutMinutes"`
	} `json:"timeoutConfig"`
	Tags          []tagOut `json:"tags"`
	CreatedAt     float64  `json:"createdAt"`
	LastUpdatedAt float64  `json:"lastUpdatedAt"`
}

func (e *env) describe(id string) tunnelJSON {
	e.t.Helper()
	var out struct {
		Tunnel tunnelJSON `json:"tunnel"`
	}
	e.mustCall("DescribeTunnel", map[string]any{"tunnelId": id}, &out)
	return out.Tunnel
}

func (e *env) get(id string) *store.Tunnel {
	e.t.Helper()
	tu, err := e.st.Get(context.Background(), id)
	if err != nil {
		e.t.Fatalf("store Get %s: %v", id, err)
	}
	return tu
}

func slogJSON(w io.Writer) *slog.Logger { return slog.New(slog.NewJSONHandler(w, nil)) }

func epoch(t time.Time) float64 { return float64(t.UnixMilli()) / 1000 }
