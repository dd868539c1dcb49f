package relay

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/wsconn"
	"github.com/sectun/sectun/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testTimeout = 10 * time.Second

// memAuthz is an in-memory Authorizer applying the protocol's client-token
// rules.
type memAuthz struct {
	mu      sync.Mutex
	tokens  map[string]*memEnd // access token -> end
	changes []peerChange
	changed chan struct{} // signalled on every PeerChanged
	// hook, when set, runs at the start of Authorize.
	hook func(ctx context.Context, req HandshakeRequest) error
}

type memEnd struct {
	tunnelID    string
	mode        store.Mode
	services    []string
	clientToken string
	consumed    bool
	connected   bool
	epoch       uint64 // Grant.Epoch
}

type peerChange struct {
	tunnelID  string
	mode      store.Mode
	connected bool
}

func newMemAuthz() *memAuthz {
	return &memAuthz{tokens: make(map[string]*memEnd), changed: make(chan struct{}, 1000)}
}

func (a *memAuthz) setHook(h func(ctx context.Context, req HandshakeRequest) error) {
	a.mu.Lock()
	a.hook = h
	a.mu.Unlock()
}

// open adds a tunnel and returns its source and destination tokens.
func (a *memAuthz) open(id string, services ...string) (src, dst string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	src, dst = "src-"+id, "dst-"+id
	a.tokens[src] = &memEnd{tunnelID: id, mode: store.ModeSource, services: services}
	a.tokens[dst] = &memEnd{tunnelID: id, mode: store.ModeDestination, services: services}
	return src, dst
}

func (a *memAuthz) Authorize(ctx context.Context, req HandshakeRequest) (Grant, error) {
	a.mu.Lock()
	hook := a.hook
	a.mu.Unlock()
	if hook != nil {
		if err := hook(ctx, req); err != nil {
			return Grant{}, err
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.tokens[req.AccessToken]
	switch {
	case e == nil:
		return Grant{}, fmt.Errorf("%w: invalid access token", ErrUnauthorized)
	case e.mode != req.Mode:
		return Grant{}, fmt.Errorf("%w: this access token is for local-proxy-mode=%s", ErrUnauthorized, e.mode)
	case e.consumed:
		return Grant{}, fmt.Errorf("%w: access token already used", ErrUnauthorized)
	case req.ClientToken == "" && e.clientToken != "":
		return Grant{}, fmt.Errorf("%w: access token is bound to a client token", ErrUnauthorized)
	case req.ClientToken == "":
		e.consumed = true
	case e.clientToken == "":
		e.clientToken = req.ClientToken
	case e.clientToken != req.ClientToken:
		return Grant{}, fmt.Errorf("%w: different client token", ErrUnauthorized)
	}
	return Grant{TunnelID: e.tunnelID, Services: e.services, Epoch: e.epoch}, nil
}

// setEpoch makes the handshakes with token tok get epoch n.
func (a *memAuthz) setEpoch(tok string, n uint64) {
	a.mu.Lock()
	a.tokens[tok].epoch = n
	a.mu.Unlock()
}

func (a *memAuthz) PeerChanged(ctx context.Context, tunnelID string, mode store.Mode, connected bool) {
	a.mu.Lock()
	a.changes = append(a.changes, peerChange{tunnelID, mode, connected})
	for _, e := range a.tokens {
		if e.tunnelID == tunnelID && e.mode == mode {
			e.connected = connected
		}
	}
	a.mu.Unlock()
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

// connected reports the last PeerChanged state of an end.
func (a *memAuthz) connected(tunnelID string, mode store.Mode) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := len(a.changes) - 1; i >= 0; i-- {
		if c := a.changes[i]; c.tunnelID == tunnelID && c.mode == mode {
			return c.connected
		}
	}
	return false
}

// waitConnected waits until PeerChanged reported the wanted state.
func (a *memAuthz) waitConnected(t testing.TB, tunnelID string, mode store.Mode, want bool) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s %s connected=%v", tunnelID, mode, want), func() bool { return a.connected(tunnelID, mode) == want })
}

// waitFor polls cond (no sleeping for readiness: a bounded poll for a
// state change that has no event).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// testRelay is a relay served over HTTP on 127.0.0.1.
type testRelay struct {
	*Relay
	authz *memAuthz
	srv   *httptest.Server
	wsURL string // ws://127.0.0.1:port/tunnel
}

func newTestRelay(t testing.TB, cfg Config) *testRelay {
	t.Helper()
	a := newMemAuthz()
	if cfg.Authorizer == nil {
		cfg.Authorizer = a
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(r)
	tr := &testRelay{Relay: r, authz: a, srv: srv, wsURL: "ws" + strings.TrimPrefix(srv.URL, "http") + "/tunnel"}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := r.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		srv.Close()
	})
	return tr
}

// client is a raw tunnel peer: a wsconn.Conn with frame reader and writer.
type client struct {
	t    testing.TB
	conn *wsconn.Conn
	resp *http.Response
	fr   *wire.FrameReader
}

type dialOpts struct {
	mode         store.Mode
	clientToken  string
	cookie       bool
	subprotocols []string
}

func (tr *testRelay) dial(t testing.TB, tok string, o dialOpts) *client {
	t.Helper()
	c, err := tr.tryDial(t, tok, o)
	if err != nil {
		t.Fatalf("dial %s: %v", o.mode, err)
	}
	return c
}

func (tr *testRelay) tryDial(t testing.TB, tok string, o dialOpts) (*client, error) {
	t.Helper()
	if o.mode == "" {
		o.mode = store.ModeSource
		if strings.HasPrefix(tok, "dst-") {
			o.mode = store.ModeDestination
		}
	}
	if o.subprotocols == nil {
		o.subprotocols = []string{SubprotocolV3}
	}
	h := http.Header{}
	if o.cookie {
		h.Set("Cookie", cookieToken+"="+tok)
	} else {
		h.Set("access-token", tok)
	}
	if o.clientToken != "" {
		h.Set("client-token", o.clientToken)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	conn, resp, err := wsconn.Dial(ctx, tr.wsURL+"?local-proxy-mode="+string(o.mode), wsconn.DialOptions{
		Header:       h,
		Subprotocols: o.subprotocols,
		Proxy:        func(*url.URL) (*url.URL, error) { return nil, nil },
	})
	if err != nil {
		return nil, err
	}
	c := &client{t: t, conn: conn, resp: resp}
	c.fr = wire.NewFrameReader(conn)
	conn.SetLiveness(testTimeout) // a read timeout for the tests
	t.Cleanup(func() { conn.Close(wsconn.CloseNormal, "") })
	return c, nil
}

// dialPair connects both ends of a tunnel and consumes SERVICE_IDS.
func (tr *testRelay) dialPair(t testing.TB, id string, services ...string) (src, dst *client) {
	t.Helper()
	s, d := tr.authz.open(id, services...)
	dst = tr.dial(t, d, dialOpts{})
	dst.expectServiceIDs(services)
	src = tr.dial(t, s, dialOpts{})
	src.expectServiceIDs(services)
	tr.authz.waitConnected(t, id, store.ModeSource, true)
	tr.authz.waitConnected(t, id, store.ModeDestination, true)
	return src, dst
}

// send writes the messages as tunnel frames in one WebSocket message.
func (c *client) send(msgs ...*wire.Message) {
	c.t.Helper()
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = wire.AppendFrame(b, m); err != nil {
			c.t.Fatal(err)
		}
	}
	if err := c.conn.WriteMessage(context.Background(), b); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// sendRaw writes b as one WebSocket message.
func (c *client) sendRaw(b []byte) {
	c.t.Helper()
	if err := c.conn.WriteMessage(context.Background(), b); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// recv returns a copy of the next message.
func (c *client) recv() *wire.Message {
	c.t.Helper()
	m, err := c.fr.Next()
	if err != nil {
		c.t.Fatalf("recv: %v", err)
	}
	cp := *m
	cp.Payload = slices.Clone(m.Payload)
	cp.AvailableServiceIDs = slices.Clone(m.AvailableServiceIDs)
	return &cp
}

func (c *client) expectServiceIDs(services []string) {
	c.t.Helper()
	m := c.recv()
	if m.Type != wire.TypeServiceIDs || !slices.Equal(m.AvailableServiceIDs, services) {
		c.t.Fatalf("first message = %v, want SERVICE_IDS %q", m, services)
	}
}

// expectClose reads until the connection ends and checks the close frame.
func (c *client) expectClose(code int, reasonPrefix string) {
	c.t.Helper()
	for {
		_, err := c.fr.Next()
		if err == nil {
			continue
		}
		var ce *wsconn.CloseError
		if !errors.As(err, &ce) {
			c.t.Fatalf("connection ended with %v, want close %d", err, code)
		}
		if ce.Code != code || !strings.HasPrefix(ce.Reason, reasonPrefix) {
			c.t.Fatalf("closed with %d %q, want %d %q...", ce.Code, ce.Reason, code, reasonPrefix)
		}
		return
	}
}

// expectDropped reads until the connection ends and checks that it ended
// without a close frame: EOF (gorilla's 1006) or a reset.
func (c *client) expectDropped() {
	c.t.Helper()
	for {
		_, err := c.fr.Next()
		if err == nil {
			continue
		}
		var ce *wsconn.CloseError
		if errors.As(err, &ce) && ce.Code != 1006 {
			c.t.Fatalf("closed with %d %q, want a connection dropped without a close frame", ce.Code, ce.Reason)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			c.t.Fatalf("connection still open: %v", err)
		}
		return
	}
}

// rawUpgrade performs a handshake by hand and returns the response and the
// raw connection (for checking WebSocket message boundaries).
func rawUpgrade(t *testing.T, addr, target string, header http.Header) (*http.Response, *bufio.Reader, net.Conn) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(testTimeout))
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+target, nil)
	req.Header = header
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		t.Fatal(err)
	}
	return resp, br, conn
}

// readWSMessage reads one unfragmented server-to-client WebSocket message
// (unmasked), skipping control frames.
func readWSMessage(t *testing.T, br *bufio.Reader) []byte {
	t.Helper()
	for {
		var hdr [2]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			t.Fatal(err)
		}
		n := uint64(hdr[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			io.ReadFull(br, b[:])
			n = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			io.ReadFull(br, b[:])
			n = binary.BigEndian.Uint64(b[:])
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(br, p); err != nil {
			t.Fatal(err)
		}
		if hdr[0]&0x80 == 0 {
			t.Fatalf("fragmented message from the relay")
		}
		if op := hdr[0] & 0x0f; op == 2 {
			return p
		} else if op == 8 {
			t.Fatalf("close frame %x", p)
		}
	}
}

func upgradeHeader(tok, proto string) http.Header {
	h := http.Header{}
	h.Set("Connection", "Upgrade")
	h.Set("Upgrade", "websocket")
	h.Set("Sec-WebSocket-Version", "13")
	h.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	if proto != "" {
		h.Set("Sec-WebSocket-Protocol", proto)
	}
	if tok != "" {
		h.Set("access-token", tok)
	}
	return h
}

func data(stream int32, service string, payload []byte) *wire.Message {
	return &wire.Message{Type: wire.TypeData, StreamID: stream, ServiceID: service, ConnectionID: 1, Payload: payload}
}

func start(stream int32, service string) *wire.Message {
	return &wire.Message{Type: wire.TypeStreamStart, StreamID: stream, ServiceID: service, ConnectionID: 1}
}

// waitWriteBlocked waits until a write to p has been in progress for a
// while: its output lock, held by the writer, stays taken for 200 ms.
func waitWriteBlocked(t testing.TB, p *peer) {
	t.Helper()
	var held int
	waitFor(t, "a write to the peer to block", func() bool {
		if p.wmu.TryLock() {
			p.wmu.Unlock()
			held = 0
		} else {
			held++
		}
		time.Sleep(20 * time.Millisecond)
		return held >= 10
	})
}

// currentPeer returns the relay's peer for one end of a tunnel.
func (tr *testRelay) currentPeer(t testing.TB, tunnelID string, mode store.Mode) *peer {
	t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tun := tr.tunnels[tunnelID]
	if tun == nil {
		t.Fatalf("no tunnel %s", tunnelID)
	}
	e := tun.ends[modeIndex(mode)].Load()
	if e == nil || e.local == nil {
		t.Fatalf("no local %s peer", mode)
	}
	p := e.local
	if p == nil {
		t.Fatalf("no %s peer", mode)
	}
	return p
}

// writeWithin writes b on c, bounded by d.
func writeWithin(c *wsconn.Conn, d time.Duration, b []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return c.WriteMessage(ctx, b)
}
