package e2e

// Hostile peers: a client that speaks valid WebSocket but sends invalid,
// adversarial and random tunnel frames to tunneld, and a fake tunneling
// service that does the same to a connected localproxy. The offender is
// disconnected with a close frame giving a reason; the other peer and the
// other tunnels carry on; nothing panics; nothing leaks.

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/wsconn"
	"github.com/sectun/sectun/wire"
)

// wsFrame encodes one WebSocket frame (FIN set) with opcode and payload,
// masked as a client must, or not as a server does.
func wsFrame(opcode byte, payload []byte, masked bool) []byte {
	b := []byte{0x80 | opcode}
	maskBit := byte(0)
	if masked {
		maskBit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, maskBit|byte(n))
	case n < 1<<16:
		b = append(b, maskBit|126, byte(n>>8), byte(n))
	default:
		b = append(b, maskBit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if !masked {
		return append(b, payload...)
	}
	var key [4]byte
	rand.Read(key[:])
	b = append(b, key[:]...)
	for i, c := range payload {
		b = append(b, c^key[i%4])
	}
	return b
}

const (
	wsText   = 1
	wsBinary = 2
)

// frames encodes messages as tunnel frames, without any check.
func frames(ms ...wire.Message) []byte {
	var b []byte
	for i := range ms {
		enc := ms[i].Marshal()
		b = binary.BigEndian.AppendUint16(b, uint16(len(enc)))
		b = append(b, enc...)
	}
	return b
}

// hostileCase is something a hostile peer sends: raw bytes for the
// connection (whole WebSocket frames), and the close codes that may answer
// it (none: the connection must stay up).
type hostileCase struct {
	name  string
	raw   func(masked bool) []byte
	codes []int
}

// mayReset says whether the receiver may close the TCP connection while
// the rest of the case is still arriving (an oversized message, refused
// from its header): the kernel then resets the connection, which may
// destroy the close frame before the sender reads it.
func (c hostileCase) mayReset() bool { return containsInt(c.codes, wsconn.CloseMessageTooBig) }

func binaryMsg(b []byte) func(bool) []byte {
	return func(masked bool) []byte { return wsFrame(wsBinary, b, masked) }
}

// hostileCases are the cases for a peer whose mode is "source" or
// "destination" (at tunneld), or "service" (at a localproxy); svc is a
// service ID of the tunnel.
func hostileCases(mode, svc string) []hostileCase {
	const (
		protocol = wsconn.CloseProtocolError   // 1002: undecodable
		data     = wsconn.CloseUnsupportedData // 1003: text
		policy   = wsconn.ClosePolicyViolation // 1008: rule broken
		tooBig   = wsconn.CloseMessageTooBig   // 1009
	)
	big := make([]byte, wire.MaxPayloadSize+100)
	cases := []hostileCase{
		{"type unset", binaryMsg(frames(wire.Message{StreamID: 1, ServiceID: svc})), []int{policy}},
		{"unknown type, not ignorable", binaryMsg(frames(wire.Message{Type: 77, StreamID: 1})), []int{policy}},
		{"DATA on stream 0", binaryMsg(frames(wire.Message{Type: wire.TypeData, ServiceID: svc, Payload: []byte("x")})), []int{policy}},
		{"STREAM_RESET on stream 0", binaryMsg(frames(wire.Message{Type: wire.TypeStreamReset, ServiceID: svc})), []int{policy}},
		{"CONNECTION_RESET on stream 0", binaryMsg(frames(wire.Message{Type: wire.TypeConnectionReset, ServiceID: svc, ConnectionID: 3})), []int{policy}},
		{"availableServiceIds in DATA", binaryMsg(frames(wire.Message{Type: wire.TypeData, StreamID: 1, ServiceID: svc, AvailableServiceIDs: []string{"X"}})), []int{policy}},
		{"payload over 64512 bytes", binaryMsg(frames(wire.Message{Type: wire.TypeData, StreamID: 1, ServiceID: svc, Payload: big})), []int{protocol, policy}},
		{"undecodable frame", binaryMsg([]byte{0, 5, 0xff, 0xff, 0xff, 0xff, 0xff}), []int{protocol}},
		{"empty frame", binaryMsg([]byte{0, 0}), []int{protocol}},
		{"field outside the schema", binaryMsg(append([]byte{0, 4}, 0x08, 0x01, 0x40, 0x01)), []int{protocol}},
		{"longest frame, garbage", binaryMsg(append([]byte{0xff, 0xff}, make([]byte, 0xffff)...)), []int{protocol}},
		{"text message", func(masked bool) []byte { return wsFrame(wsText, []byte("hello"), masked) }, []int{data}},
		{"WebSocket message over 131076 bytes", func(masked bool) []byte {
			return wsFrame(wsBinary, make([]byte, wsconn.MaxMessageSize+1), masked)
		}, []int{tooBig}},
	}
	switch mode {
	case "source":
		cases = append(cases,
			hostileCase{"SERVICE_IDS from a client", binaryMsg(frames(wire.Message{Type: wire.TypeServiceIDs, AvailableServiceIDs: []string{svc}})), []int{policy}},
			hostileCase{"SESSION_RESET from a client", binaryMsg(frames(wire.Message{Type: wire.TypeSessionReset})), []int{policy}},
			hostileCase{"unknown service ID", binaryMsg(frames(wire.Message{Type: wire.TypeStreamStart, StreamID: 1, ServiceID: "NOPE", ConnectionID: 1})), []int{policy}},
			hostileCase{"STREAM_START on stream 0", binaryMsg(frames(wire.Message{Type: wire.TypeStreamStart, ServiceID: svc, ConnectionID: 1})), []int{policy}},
		)
	case "destination":
		cases = append(cases,
			hostileCase{"STREAM_START from the destination", binaryMsg(frames(wire.Message{Type: wire.TypeStreamStart, StreamID: 1, ServiceID: svc, ConnectionID: 1})), []int{policy}},
		)
	case "service":
		cases = append(cases,
			hostileCase{"STREAM_START on stream 0", binaryMsg(frames(wire.Message{Type: wire.TypeStreamStart, ServiceID: svc, ConnectionID: 1})), []int{policy}},
		)
	}
	return cases
}

// 1009 may come without a reason: gorilla/websocket sends its own close
// frame, with an empty reason, when a message exceeds the read limit
// (before wsconn's, which carries one); the code says it all.

// closeOf reads ws until it ends and returns the close frame received, nil
// if the connection ended without one or stayed up for wait.
func closeOf(ws *wsconn.Conn, wait time.Duration) (*wsconn.CloseError, error) {
	ws.NetConn().SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 32<<10)
	for {
		_, err := ws.Read(buf)
		if err == nil {
			continue
		}
		var ce *wsconn.CloseError
		if errors.As(err, &ce) {
			return ce, nil
		}
		return nil, err
	}
}

// hostileClient connects to tunneld's /tunnel as a peer of mode.
func hostileClient(t *testing.T, d *tunneld, mode, tok, clientToken string) *wsconn.Conn {
	t.Helper()
	h := http.Header{}
	h.Set("access-token", tok)
	h.Set("client-token", clientToken)
	ws, _, err := wsconn.Dial(ctxTimeout(t, lpWait), d.wsURL+"/tunnel?local-proxy-mode="+mode, wsconn.DialOptions{
		Header:       h,
		Subprotocols: []string{"aws.iot.securetunneling-3.0"},
		Proxy:        func(*url.URL) (*url.URL, error) { return nil, nil },
	})
	if err != nil {
		t.Fatalf("hostile %s handshake: %v", mode, err)
	}
	fr := wire.NewFrameReader(ws)
	ws.NetConn().SetReadDeadline(time.Now().Add(lpWait))
	if m, err := fr.Next(); err != nil || m.Type != wire.TypeServiceIDs {
		t.Fatalf("hostile %s: first message %v, %v", mode, m, err)
	}
	return ws
}

// TestHostileClientAtTunneld: a hostile source (tunnel 1, whose
// destination is a real localproxy) and a hostile destination (tunnel 2)
// send each invalid frame, then random ones; tunnel 3 carries a live
// connection between two real localproxies meanwhile.
func TestHostileClientAtTunneld(t *testing.T) {
	d := startTunneldLP(t)
	echo := echoService(t)
	t1 := d.openTunnel(t, "thing1", "ECHO")
	dst1 := startDestination(t, d.wsURL, t1.DestinationAccessToken, "ECHO="+echo)
	t2 := d.openTunnel(t, "thing2", "ECHO")
	t3 := d.openTunnel(t, "thing3", "ECHO")
	dst3 := startDestination(t, d.wsURL, t3.DestinationAccessToken, "ECHO="+echo)
	src3, addrs3 := startSource(t, d.wsURL, t3.SourceAccessToken, "ECHO=0", 1)
	leaks := watchLeaks(t, d, dst1, dst3, src3)
	live := dialTCP(t, addrs3["ECHO"])
	echoRoundTrip(t, live, "before")

	clientToken := strings.Repeat("h", 40)
	codes := map[int]int{}
	run := func(t *testing.T, mode, tok string, c hostileCase) {
		ws := hostileClient(t, d, mode, tok, clientToken)
		defer ws.Close(wsconn.CloseNormal, "")
		// A write error is fine: tunneld may close before reading it all.
		ws.NetConn().Write(c.raw(true))
		ce, err := closeOf(ws, 5*time.Second)
		if ce == nil {
			t.Fatalf("no close frame: %v", err)
		}
		codes[ce.Code]++
		if !containsInt(c.codes, ce.Code) || ce.Reason == "" && ce.Code != wsconn.CloseMessageTooBig {
			t.Fatalf("closed with %d %q, want one of %v with a reason", ce.Code, ce.Reason, c.codes)
		}
		t.Logf("closed with %d %q", ce.Code, ce.Reason)
	}
	for _, side := range []struct{ mode, tok string }{{"source", t1.SourceAccessToken}, {"destination", t2.DestinationAccessToken}} {
		for _, c := range hostileCases(side.mode, "ECHO") {
			t.Run(side.mode+"/"+c.name, func(t *testing.T) { run(t, side.mode, side.tok, c) })
		}
	}
	t.Run("random frames", func(t *testing.T) {
		rng := mrand.New(mrand.NewPCG(7, 7))
		for i := range 60 {
			ws := hostileClient(t, d, "source", t1.SourceAccessToken, clientToken)
			var b []byte
			for range 1 + rng.IntN(6) {
				b = append(b, randomFrame(rng)...)
			}
			// Whatever came before, end with a frame that must close.
			b = append(b, frames(wire.Message{StreamID: 9})...)
			if _, err := ws.NetConn().Write(wsFrame(wsBinary, b, true)); err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
			ce, err := closeOf(ws, 5*time.Second)
			ws.Close(wsconn.CloseNormal, "")
			if ce == nil {
				t.Fatalf("random batch %d: no close frame: %v", i, err)
			}
			codes[ce.Code]++
			if ce.Code != wsconn.CloseProtocolError && ce.Code != wsconn.ClosePolicyViolation || ce.Reason == "" {
				t.Fatalf("random batch %d: closed with %d %q", i, ce.Code, ce.Reason)
			}
		}
	})
	t.Logf("close codes sent by tunneld: %v", codes)

	// The other peers carry on: the real destination of tunnel 1 is still
	// connected, tunnel 3's connection still echoes.
	echoRoundTrip(t, live, "after")
	live.Close()
	for _, p := range []*proc{dst1, dst3, src3} {
		select {
		case <-p.done:
			t.Fatalf("%s exited:\n%s", p.name, p.output())
		default:
		}
	}
	if got := d.describe(t, t1.TunnelID).Tunnel.DestinationConnectionState.Status; got != "CONNECTED" {
		t.Fatalf("tunnel 1's destination: %s", got)
	}
	if strings.Contains(d.output(), "panic") {
		t.Fatalf("tunneld panicked:\n%s", d.output())
	}
	leaks.check(10 * time.Second)
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// randomFrame returns one tunnel frame: a random message (any type, stream
// ID, service ID, connection ID, payload) or random bytes.
func randomFrame(rng *mrand.Rand) []byte {
	if rng.IntN(4) == 0 {
		b := make([]byte, rng.IntN(64))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...)
	}
	m := wire.Message{
		Type:         wire.Type(rng.IntN(10)),
		StreamID:     int32(rng.IntN(5)) - 1,
		Ignorable:    rng.IntN(3) == 0,
		ConnectionID: uint32(rng.IntN(4)),
	}
	switch rng.IntN(3) {
	case 0:
		m.ServiceID = "ECHO"
	case 1:
		m.ServiceID = fmt.Sprintf("S%d", rng.IntN(100))
	}
	if rng.IntN(2) == 0 {
		m.Payload = make([]byte, rng.IntN(2000))
	}
	if rng.IntN(8) == 0 {
		m.AvailableServiceIDs = []string{"ECHO"}
	}
	return frames(m)
}

// hostileService is a fake tunneling service: each handshake on /tunnel
// gets SERVICE_IDS, then the next case's bytes; it records the close frame
// the client answers with.
type hostileService struct {
	t        *testing.T
	srv      *httptest.Server
	services []string
	cases    chan hostileCase
	results  chan hostileResult
	wg       sync.WaitGroup
}

type hostileResult struct {
	name string
	ce   *wsconn.CloseError
	err  error
	// streamStarts counts STREAM_STARTs received (after the case).
	streamStarts int
}

func startHostileService(t *testing.T, services ...string) *hostileService {
	t.Helper()
	s := &hostileService{t: t, services: services, cases: make(chan hostileCase, 64), results: make(chan hostileResult, 64)}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(func() {
		s.srv.CloseClientConnections()
		s.srv.Close()
		s.wg.Wait()
	})
	return s
}

func (s *hostileService) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/tunnel" {
		http.Error(w, "no", http.StatusBadRequest)
		return
	}
	ws, err := wsconn.Accept(w, r, wsconn.AcceptOptions{Subprotocol: "aws.iot.securetunneling-3.0"})
	if err != nil {
		return
	}
	s.wg.Add(1)
	defer s.wg.Done()
	defer ws.Close(wsconn.CloseNormal, "")
	b, _ := wire.AppendFrame(nil, &wire.Message{Type: wire.TypeServiceIDs, AvailableServiceIDs: s.services})
	if ws.WriteMessage(context.Background(), b) != nil {
		return
	}
	var c hostileCase
	select {
	case c = <-s.cases:
	case <-r.Context().Done():
		return
	case <-time.After(lpWait):
		return
	}
	if c.raw == nil {
		// No case: behave, and count the streams the client starts.
		n := 0
		fr := wire.NewFrameReader(ws)
		ws.NetConn().SetReadDeadline(time.Now().Add(lpWait))
		for {
			m, err := fr.Next()
			if err != nil {
				s.results <- hostileResult{name: c.name, err: err, streamStarts: n}
				return
			}
			if m.Type == wire.TypeStreamStart {
				n++
				s.results <- hostileResult{name: c.name, streamStarts: n}
			}
		}
	}
	raw := c.raw(false)
	go func() {
		ws.NetConn().SetWriteDeadline(time.Now().Add(5 * time.Second))
		ws.NetConn().Write(raw) // the client may stop reading: bounded
	}()
	ce, err := closeOf(ws, 5*time.Second)
	s.results <- hostileResult{name: c.name, ce: ce, err: err}
}

func (s *hostileService) wsURL() string { return strings.Replace(s.srv.URL, "http", "ws", 1) }

// TestHostileServiceAtLocalproxy: a fake service sends each invalid frame
// to a connected localproxy (source and destination): the localproxy
// closes the WebSocket with a reason, reconnects, and keeps working;
// nothing panics and no descriptor leaks.
func TestHostileServiceAtLocalproxy(t *testing.T) {
	for _, mode := range []string{"source", "destination"} {
		t.Run(mode, func(t *testing.T) {
			s := startHostileService(t, "ECHO")
			settings := proxySettings(t, 5000, 50)
			var lp *proc
			var addr string
			cases := hostileCases("service", "ECHO")
			for _, c := range cases {
				s.cases <- c
			}
			s.cases <- hostileCase{name: "after the attacks, well behaved"}
			if mode == "source" {
				var addrs map[string]string
				lp, addrs = startSource(t, s.wsURL(), strings.Repeat("t", 40), "ECHO=0", 1, "--settings-json", settings)
				addr = addrs["ECHO"]
			} else {
				lp = startDestination(t, s.wsURL(), strings.Repeat("t", 40), "ECHO="+echoService(t), "--settings-json", settings)
			}
			codes := map[int]int{}
			for range cases {
				var r hostileResult
				select {
				case r = <-s.results:
				case <-time.After(lpWait):
					t.Fatalf("localproxy did not reconnect:\n%s", lp.output())
				}
				var want []int
				mayReset := false
				for _, c := range cases {
					if c.name == r.name {
						want, mayReset = c.codes, c.mayReset()
					}
				}
				if r.ce == nil && mayReset && isReset(r.err) {
					t.Logf("%s: the connection was reset (the close frame may be lost: see mayReset)", r.name)
					continue
				}
				if r.ce == nil {
					t.Fatalf("%s: no close frame from localproxy: %v", r.name, r.err)
				}
				codes[r.ce.Code]++
				if r.ce.Reason == "" && r.ce.Code != wsconn.CloseMessageTooBig || !containsInt(want, r.ce.Code) {
					t.Errorf("%s: localproxy closed with %d %q, want one of %v with a reason", r.name, r.ce.Code, r.ce.Reason, want)
				}
				t.Logf("%s: closed by localproxy with %d %q", r.name, r.ce.Code, r.ce.Reason)
			}
			leaks := watchLeaks(t, nil, lp)
			t.Logf("close codes sent by localproxy: %v", codes)
			if mode == "source" {
				// Still serving: a new local connection starts a stream on
				// the (now well-behaved) service.
				c := dialTCP(t, addr)
				io.WriteString(c, "hi")
				deadline := time.After(lpWait)
				for got := false; !got; {
					select {
					case r := <-s.results:
						got = r.streamStarts > 0
					case <-deadline:
						t.Fatal("no STREAM_START after the attacks")
					}
				}
				c.Close()
			}
			select {
			case <-lp.done:
				t.Fatalf("localproxy exited:\n%s", lp.output())
			default:
			}
			if out := lp.output(); strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
				t.Fatalf("localproxy panicked:\n%s", out)
			}
			leaks.check(10 * time.Second)
		})
	}
}
