// Package fakeservice is an in-process tunneling service for the tunnel
// package's tests and benchmarks: one tunnel, served on 127.0.0.1:0, doing
// the handshake of PROTOCOL.md (tokens per mode, client-token reconnect,
// 401 for bad or used tokens, channel-id, subprotocol choice, SERVICE_IDS
// first and alone), relaying tunnel frames between the two peers with
// validation, and letting a test drop a peer, freeze it, close the tunnel,
// fail handshakes and inject raw messages. It is not the real relay
// (internal/server/relay) and must not grow into one.
//
// Concurrency: every method is safe for concurrent use. Close waits for
// all of the service's goroutines.
package fakeservice

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/sectun/sectun/internal/token"
	"github.com/sectun/sectun/internal/wsconn"
	"github.com/sectun/sectun/wire"
)

// The two modes, as in the handshake's local-proxy-mode (wire.Mode's
// values as plain strings).
const (
	Source      = string(wire.ModeSource)
	Destination = string(wire.ModeDestination)
)

func other(mode string) string { return string(wire.Mode(mode).Other()) }

// Options configures a Service.
type Options struct {
	// Services are the tunnel's service IDs (none: a V1-style tunnel).
	Services []string
	// Versions the service accepts (default 1, 2, 3). It picks the first
	// subprotocol offered by the client that it accepts.
	Versions []int
	// OmitSubprotocol leaves Sec-WebSocket-Protocol out of the 101 answer.
	OmitSubprotocol bool
	// SkipServiceIDs does not send SERVICE_IDS after V2/V3 handshakes.
	SkipServiceIDs bool
	// TLS, if set, serves wss:// with it.
	TLS *tls.Config
	// Record keeps a copy of every relayed message for Messages.
	Record bool
}

// Service is a fake tunneling service holding one tunnel.
type Service struct {
	// URL is the endpoint: ws://127.0.0.1:port or wss://127.0.0.1:port.
	URL string
	// The tunnel's client access tokens.
	SourceToken, DestinationToken string

	opts  Options
	srv   *httptest.Server
	wg    sync.WaitGroup
	conns sync.Map // remote address -> *pauseConn

	mu         sync.Mutex
	shut       bool
	closed     bool // tunnel closed
	peers      map[string]*peer
	tokens     map[string]*tokenState
	fail       []failure
	handshakes map[string]int
	clientToks map[string][]string
	changed    chan struct{} // closed and replaced when a peer connects or goes
	records    []Record
	streams    map[string]int32 // service ID -> active stream, from the source's STREAM_STARTs
}

type tokenState struct {
	used        bool
	clientToken string
}

type failure struct {
	status int
	body   string
}

// Record is a relayed message and who sent it.
type Record struct {
	From string
	Msg  wire.Message
}

type peer struct {
	mode    string
	ws      *wsconn.Conn
	version int
	pc      *pauseConn
	wmu     sync.Mutex
	fw      *wire.FrameWriter
}

// Start starts a service; t.Cleanup closes it.
func Start(t testing.TB, opts Options) *Service {
	t.Helper()
	if len(opts.Versions) == 0 {
		opts.Versions = []int{1, 2, 3}
	}
	src, _ := token.New()
	dst, _ := token.New()
	s := &Service{
		SourceToken: src, DestinationToken: dst, opts: opts,
		peers:      map[string]*peer{},
		tokens:     map[string]*tokenState{Source: {}, Destination: {}},
		handshakes: map[string]int{},
		clientToks: map[string][]string{},
		changed:    make(chan struct{}),
		streams:    map[string]int32{},
	}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serveHTTP))
	s.srv.Listener = &pauseListener{Listener: s.srv.Listener, s: s}
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if opts.TLS != nil {
		s.srv.TLS = opts.TLS
		s.srv.StartTLS()
		s.URL = "wss://" + s.srv.Listener.Addr().String()
	} else {
		s.srv.Start()
		s.URL = "ws://" + s.srv.Listener.Addr().String()
	}
	t.Cleanup(s.Close)
	return s
}

// Addr returns the listening address (host:port).
func (s *Service) Addr() string { return s.srv.Listener.Addr().String() }

// Close disconnects the peers, stops the server and waits for its
// goroutines.
func (s *Service) Close() {
	s.mu.Lock()
	if s.shut {
		s.mu.Unlock()
		return
	}
	s.shut = true
	peers := s.peerList()
	s.mu.Unlock()
	for _, p := range peers {
		p.kill()
	}
	s.srv.Close()
	s.wg.Wait()
}

func (s *Service) peerList() []*peer {
	var ps []*peer
	for _, p := range s.peers {
		ps = append(ps, p)
	}
	return ps
}

// FailNext answers the next n handshakes (any mode) with status and body.
func (s *Service) FailNext(n, status int, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.fail = append(s.fail, failure{status, body})
	}
}

// Handshakes returns how many upgrade requests a mode made.
func (s *Service) Handshakes(mode string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.handshakes[mode]
}

// ClientTokens returns the client tokens of a mode's successful handshakes.
func (s *Service) ClientTokens(mode string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.clientToks[mode])
}

// Connected reports whether a peer of mode is connected.
func (s *Service) Connected(mode string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peers[mode] != nil
}

// WaitConnected waits until a peer of mode is connected, or (connected
// false) until none is.
func (s *Service) WaitConnected(ctx context.Context, mode string, connected bool) error {
	for {
		s.mu.Lock()
		ok := (s.peers[mode] != nil) == connected
		ch := s.changed
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("fakeservice: waiting for %s connected=%v: %w", mode, connected, ctx.Err())
		}
	}
}

func (s *Service) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Drop closes a peer's WebSocket abruptly (no close frame), as a network
// failure would.
func (s *Service) Drop(mode string) {
	s.mu.Lock()
	p := s.peers[mode]
	s.mu.Unlock()
	if p != nil {
		p.kill()
	}
}

// Freeze stops reading from a peer's connection (so its pings go
// unanswered and its messages unrelayed), until it is dropped or Thaw.
func (s *Service) Freeze(mode string) { s.pause(mode, true) }

// Thaw undoes Freeze.
func (s *Service) Thaw(mode string) { s.pause(mode, false) }

func (s *Service) pause(mode string, on bool) {
	s.mu.Lock()
	p := s.peers[mode]
	s.mu.Unlock()
	if p != nil && p.pc != nil {
		p.pc.setPaused(on)
	}
}

// CloseTunnel closes the tunnel: both peers get a normal close frame and
// later handshakes are refused with 410.
func (s *Service) CloseTunnel() {
	s.mu.Lock()
	s.closed = true
	peers := s.peerList()
	s.mu.Unlock()
	for _, p := range peers {
		p.ws.Close(wsconn.CloseNormal, "tunnel closed")
	}
}

// CloseWith sends a close frame with code to a peer.
func (s *Service) CloseWith(mode string, code int, reason string) {
	s.mu.Lock()
	p := s.peers[mode]
	s.mu.Unlock()
	if p != nil {
		p.ws.Close(code, reason)
	}
}

// Send sends messages to a peer, coalesced into one WebSocket message.
func (s *Service) Send(mode string, msgs ...*wire.Message) error {
	s.mu.Lock()
	p := s.peers[mode]
	s.mu.Unlock()
	if p == nil {
		return fmt.Errorf("fakeservice: no %s connected", mode)
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	for _, m := range msgs {
		if err := p.fw.Write(m); err != nil {
			return err
		}
	}
	return p.fw.Flush()
}

// SendRaw sends b as one binary WebSocket message to a peer.
func (s *Service) SendRaw(mode string, b []byte) error {
	s.mu.Lock()
	p := s.peers[mode]
	s.mu.Unlock()
	if p == nil {
		return fmt.Errorf("fakeservice: no %s connected", mode)
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if err := p.fw.Flush(); err != nil {
		return err
	}
	return p.ws.WriteMessage(context.Background(), b)
}

// Messages returns the relayed messages recorded so far (Options.Record).
func (s *Service) Messages() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.records)
}

func randomID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (s *Service) serveHTTP(w http.ResponseWriter, r *http.Request) {
	channelID := randomID()
	w.Header().Set("channel-id", channelID)
	refuse := func(status int, msg string) { http.Error(w, msg, status) }
	if r.URL.Path != "/tunnel" {
		refuse(http.StatusBadRequest, "unknown path")
		return
	}
	mode := r.URL.Query().Get("local-proxy-mode")
	if !wire.Mode(mode).Valid() {
		refuse(http.StatusBadRequest, "local-proxy-mode must be source or destination")
		return
	}
	toks := r.Header.Values("access-token")
	for _, c := range r.CookiesNamed("awsiot-tunnel-token") {
		toks = append(toks, c.Value)
	}
	cts := r.Header.Values("client-token")

	s.mu.Lock()
	s.handshakes[mode]++
	if s.shut {
		s.mu.Unlock()
		refuse(http.StatusServiceUnavailable, "shutting down")
		return
	}
	if len(s.fail) > 0 {
		f := s.fail[0]
		s.fail = s.fail[1:]
		s.mu.Unlock()
		refuse(f.status, f.body)
		return
	}
	status, msg := s.admitLocked(mode, toks, cts)
	if status != 0 {
		s.mu.Unlock()
		refuse(status, msg)
		return
	}
	version, chosen := s.chooseLocked(r.Header.Values("Sec-WebSocket-Protocol"))
	if version == 0 {
		s.mu.Unlock()
		refuse(http.StatusBadRequest, "no supported subprotocol offered")
		return
	}
	ts := s.tokens[mode]
	ct := ""
	if len(cts) == 1 {
		ct = cts[0]
	}
	ts.used = true
	if ts.clientToken == "" {
		ts.clientToken = ct
	}
	s.clientToks[mode] = append(s.clientToks[mode], ct)
	s.wg.Add(1) // before unlocking, so that Close waits for this handler
	s.mu.Unlock()
	defer s.wg.Done()

	if s.opts.OmitSubprotocol {
		chosen = ""
	}
	ws, err := wsconn.Accept(w, r, wsconn.AcceptOptions{
		Subprotocol: chosen,
		Header:      http.Header{"Channel-Id": {channelID}},
	})
	if err != nil {
		return
	}
	p := &peer{mode: mode, ws: ws, version: version}
	p.fw = wire.NewFrameWriter(ws.Writer(context.Background()), 0)
	if v, ok := s.conns.Load(r.RemoteAddr); ok {
		p.pc = v.(*pauseConn)
	}
	// Hold the write lock while registering, so that SERVICE_IDS goes out
	// first and alone, before any relayed frame. The peer is registered
	// before SERVICE_IDS is sent, so a client that waited for SERVICE_IDS
	// may count on being reachable (a V1 client must use WaitConnected).
	p.wmu.Lock()
	s.mu.Lock()
	if s.shut {
		s.mu.Unlock()
		p.wmu.Unlock()
		p.kill()
		return
	}
	old := s.peers[mode]
	s.peers[mode] = p
	var resets []*wire.Message
	if old != nil {
		for svc, id := range s.streams {
			resets = append(resets, &wire.Message{Type: wire.TypeStreamReset, StreamID: id, ServiceID: svc})
		}
		clear(s.streams)
	}
	peerOther := s.peers[other(mode)]
	s.notifyLocked()
	s.mu.Unlock()
	if version >= 2 && !s.opts.SkipServiceIDs {
		p.fw.Write(&wire.Message{Type: wire.TypeServiceIDs, AvailableServiceIDs: s.opts.Services})
		p.fw.Flush()
	}
	p.wmu.Unlock()
	if old != nil {
		old.kill()
		if peerOther != nil && len(resets) > 0 {
			peerOther.send(resets...)
		}
	}
	s.relay(p)
}

// admitLocked checks the token rules; it returns a status and message to
// refuse with, or 0.
func (s *Service) admitLocked(mode string, toks, cts []string) (int, string) {
	if len(toks) != 1 {
		return http.StatusBadRequest, "exactly one access token required"
	}
	var tmode string
	switch toks[0] {
	case s.SourceToken:
		tmode = Source
	case s.DestinationToken:
		tmode = Destination
	default:
		return http.StatusUnauthorized, "invalid access token"
	}
	if tmode != mode {
		return http.StatusUnauthorized, "access token is not valid for local-proxy-mode=" + mode
	}
	if s.closed {
		return http.StatusGone, "tunnel closed"
	}
	if len(cts) > 1 || len(cts) == 1 && !token.ValidClientToken(cts[0]) {
		return http.StatusBadRequest, "invalid client token"
	}
	ts := s.tokens[mode]
	if ts.used {
		if len(cts) == 0 || ts.clientToken == "" || cts[0] != ts.clientToken {
			return http.StatusUnauthorized, "access token already used"
		}
	}
	return 0, ""
}

func (s *Service) chooseLocked(headers []string) (int, string) {
	for _, h := range headers {
		for p := range strings.SplitSeq(h, ",") {
			p = strings.TrimSpace(p)
			rest, ok := strings.CutPrefix(p, "aws.iot.securetunneling-")
			if !ok {
				continue
			}
			v, err := strconv.Atoi(strings.TrimSuffix(rest, ".0"))
			if err == nil && slices.Contains(s.opts.Versions, v) {
				return v, p
			}
		}
	}
	return 0, ""
}

func (s *Service) peer(mode string) *peer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peers[mode]
}

// relay forwards p's frames to the other peer until p's connection ends.
// A message breaking the protocol's rules closes p with a protocol error,
// as the service does.
func (s *Service) relay(p *peer) {
	defer func() {
		p.kill()
		s.mu.Lock()
		var resets []*wire.Message
		var peerOther *peer
		if s.peers[p.mode] == p {
			delete(s.peers, p.mode)
			s.notifyLocked()
			// The other peer's streams are dead: tell it.
			peerOther = s.peers[other(p.mode)]
			for svc, id := range s.streams {
				resets = append(resets, &wire.Message{Type: wire.TypeStreamReset, StreamID: id, ServiceID: svc})
			}
			clear(s.streams)
		}
		s.mu.Unlock()
		if peerOther != nil && len(resets) > 0 {
			peerOther.send(resets...)
		}
	}()
	role := wire.Mode(p.mode).Role()
	br := bufio.NewReaderSize(p.ws, wire.FrameHeaderSize+wire.MaxMessageSize)
	fr := wire.NewFrameReader(br) // shares br: we peek at what follows a frame
	var m wire.Message
	for {
		frame, err := fr.NextFrame()
		if err != nil {
			return
		}
		if err := m.Unmarshal(frame); err != nil {
			p.ws.Close(wsconn.CloseProtocolError, "malformed message")
			return
		}
		if err := m.Validate(role); err != nil {
			p.ws.Close(wsconn.CloseProtocolError, err.Error())
			return
		}
		if m.ServiceID != "" && !slices.Contains(s.opts.Services, m.ServiceID) {
			p.ws.Close(wsconn.CloseProtocolError, "unknown service ID")
			return
		}
		s.observe(p.mode, &m)
		if dst := s.peer(other(p.mode)); dst != nil {
			dst.forward(frame, !nextFrameBuffered(br, len(frame)))
		}
	}
}

// nextFrameBuffered reports whether a whole frame follows the current one
// (of n bytes) in br, so that relaying can go on without flushing.
func nextFrameBuffered(br *bufio.Reader, n int) bool {
	cur := wire.FrameHeaderSize + n
	if br.Buffered() < cur+wire.FrameHeaderSize {
		return false
	}
	b, err := br.Peek(cur + wire.FrameHeaderSize)
	if err != nil {
		return false
	}
	next := int(binary.BigEndian.Uint16(b[cur:]))
	return br.Buffered() >= cur+wire.FrameHeaderSize+next
}

// observe records m and follows the active streams, which the service
// resets on the other side when a peer goes.
func (s *Service) observe(from string, m *wire.Message) {
	if !s.opts.Record && m.Type != wire.TypeStreamStart && m.Type != wire.TypeStreamReset {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch m.Type {
	case wire.TypeStreamStart:
		s.streams[m.ServiceID] = m.StreamID
	case wire.TypeStreamReset:
		if s.streams[m.ServiceID] == m.StreamID {
			delete(s.streams, m.ServiceID)
		}
	}
	if s.opts.Record {
		c := *m
		c.Payload = slices.Clone(m.Payload)
		c.AvailableServiceIDs = slices.Clone(m.AvailableServiceIDs)
		s.records = append(s.records, Record{From: from, Msg: c})
	}
}

func (p *peer) forward(frame []byte, flush bool) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if p.fw.WriteFrame(frame) == nil && flush {
		p.fw.Flush()
	}
}

func (p *peer) send(msgs ...*wire.Message) {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	for _, m := range msgs {
		p.fw.Write(m)
	}
	p.fw.Flush()
}

func (p *peer) kill() {
	if p.pc != nil {
		p.pc.setPaused(false)
	}
	p.ws.Abort()
}

// pauseListener wraps accepted connections so that a peer can be frozen.
type pauseListener struct {
	net.Listener
	s *Service
}

func (l *pauseListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	pc := &pauseConn{Conn: c, l: l}
	pc.cond = sync.NewCond(&pc.mu)
	l.s.conns.Store(c.RemoteAddr().String(), pc)
	return pc, nil
}

type pauseConn struct {
	net.Conn
	l      *pauseListener
	mu     sync.Mutex
	cond   *sync.Cond
	paused bool
	closed bool
}

func (c *pauseConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	for c.paused && !c.closed {
		c.cond.Wait()
	}
	c.mu.Unlock()
	return c.Conn.Read(b)
}

func (c *pauseConn) setPaused(on bool) {
	c.mu.Lock()
	c.paused = on
	c.mu.Unlock()
	c.cond.Broadcast()
}

func (c *pauseConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cond.Broadcast()
	c.l.s.conns.Delete(c.RemoteAddr().String())
	return c.Conn.Close()
}
