package relay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/ratelimit"
	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/wsconn"
	"github.com/sectun/sectun/wire"
)

func TestHandshakeRefusals(t *testing.T) {
	// More refusals than the failure limit's burst: TestFailureLimit
	// covers the limit.
	tr := newTestRelay(t, Config{HandshakeFailureLimit: ratelimit.Config{PerMinute: -1}})
	src, _ := tr.authz.open("t1")
	tr.authz.setHook(func(ctx context.Context, req HandshakeRequest) error {
		if req.AccessToken == "boom" {
			return errors.New("database on fire")
		}
		return nil
	})
	const ok = "/tunnel?local-proxy-mode=source"
	v3 := SubprotocolV3
	tests := []struct {
		name   string
		method string
		target string
		header func(h http.Header)
		status int
		body   string
	}{
		{name: "path", target: "/tunnels?local-proxy-mode=source", status: 400, body: "unknown path"},
		{name: "root path", target: "/?local-proxy-mode=source", status: 400, body: "unknown path"},
		{name: "request too large", target: ok, header: func(h http.Header) { h.Set("X-Padding", strings.Repeat("a", 4000)) }, status: 431, body: "exceeds the limit of 4096"},
		{name: "too large through many headers", target: ok, header: func(h http.Header) {
			for range 300 {
				h.Add("X-P", "0123456789")
			}
		}, status: 431, body: "exceeds"},
		{name: "not an upgrade", target: ok, header: func(h http.Header) { h.Del("Upgrade"); h.Del("Connection") }, status: 400, body: "not a WebSocket upgrade"},
		{name: "POST", method: http.MethodPost, target: ok, status: 400, body: "method must be GET"},
		{name: "bad websocket version", target: ok, header: func(h http.Header) { h.Set("Sec-WebSocket-Version", "8") }, status: 400, body: "Sec-WebSocket-Version"},
		{name: "no key", target: ok, header: func(h http.Header) { h.Del("Sec-WebSocket-Key") }, status: 400, body: "Sec-WebSocket-Key"},
		{name: "short key", target: ok, header: func(h http.Header) { h.Set("Sec-WebSocket-Key", "c2hvcnQ=") }, status: 400, body: "Sec-WebSocket-Key"},
		{name: "no mode", target: "/tunnel", status: 400, body: "local-proxy-mode"},
		{name: "bad mode", target: "/tunnel?local-proxy-mode=both", status: 400, body: "local-proxy-mode"},
		{name: "mode twice", target: "/tunnel?local-proxy-mode=source&local-proxy-mode=source", status: 400, body: "local-proxy-mode"},
		{name: "no token", target: ok, header: func(h http.Header) { h.Del("access-token") }, status: 400, body: "missing access token"},
		{name: "empty token", target: ok, header: func(h http.Header) { h.Set("access-token", "") }, status: 400, body: "empty access token"},
		{name: "header and cookie", target: ok, header: func(h http.Header) { h.Set("Cookie", "awsiot-tunnel-token="+src) }, status: 400, body: "2 access tokens"},
		{name: "two headers", target: ok, header: func(h http.Header) { h.Add("access-token", src) }, status: 400, body: "2 access tokens"},
		{name: "two cookies", target: ok, header: func(h http.Header) {
			h.Del("access-token")
			h.Set("Cookie", "awsiot-tunnel-token="+src+"; awsiot-tunnel-token="+src)
		}, status: 400, body: "2 access tokens"},
		{name: "client token too short", target: ok, header: func(h http.Header) { h.Set("client-token", "abc") }, status: 400, body: "client-token must be"},
		{name: "client token bad char", target: ok, header: func(h http.Header) { h.Set("client-token", strings.Repeat("a", 40)+"_") }, status: 400, body: "client-token must be"},
		{name: "client token too long", target: ok, header: func(h http.Header) { h.Set("client-token", strings.Repeat("a", 129)) }, status: 400, body: "client-token must be"},
		{name: "two client tokens", target: ok, header: func(h http.Header) {
			h.Add("client-token", strings.Repeat("a", 32))
			h.Add("client-token", strings.Repeat("a", 32))
		}, status: 400, body: "more than one client-token"},
		{name: "no subprotocol", target: ok, header: func(h http.Header) { h.Del("Sec-WebSocket-Protocol") }, status: 400, body: "Sec-WebSocket-Protocol must offer"},
		{name: "unknown subprotocol", target: ok, header: func(h http.Header) { h.Set("Sec-WebSocket-Protocol", "aws.iot.securetunneling-4.0, chat") }, status: 400, body: "Sec-WebSocket-Protocol must offer"},
		{name: "unknown token", target: ok, header: func(h http.Header) { h.Set("access-token", "nope") }, status: 401, body: "access denied: invalid access token"},
		{name: "wrong mode", target: "/tunnel?local-proxy-mode=destination", status: 401, body: "access denied: this access token is for local-proxy-mode=source"},
		{name: "authorizer error", target: ok, header: func(h http.Header) { h.Set("access-token", "boom") }, status: 500, body: "internal error: retry later"},
	}
	seen := map[string]bool{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := upgradeHeader(src, v3)
			if tc.header != nil {
				tc.header(h)
			}
			method := tc.method
			if method == "" {
				method = http.MethodGet
			}
			req, err := http.NewRequest(method, tr.srv.URL+tc.target, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header = h
			resp, err := tr.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.body) {
				t.Errorf("got %d %q, want %d containing %q", resp.StatusCode, body, tc.status, tc.body)
			}
			id := resp.Header.Get("channel-id")
			if id == "" || seen[id] {
				t.Errorf("channel-id %q missing or repeated", id)
			}
			seen[id] = true
			if strings.Contains(string(body), src) {
				t.Errorf("body reveals the token: %q", body)
			}
		})
	}
	// The token was never consumed by the refusals.
	c := tr.dial(t, src, dialOpts{})
	c.expectServiceIDs(nil)
	if got := tr.Stats().HandshakeFailures; got["unauthorized"] != 2 || got["access_token"] != 5 || got["request_too_large"] != 2 {
		t.Errorf("HandshakeFailures = %v", got)
	}
}

func TestRequestSizeBoundary(t *testing.T) {
	tr := newTestRelay(t, Config{})
	for _, tc := range []struct {
		delta  int
		status int
	}{{0, http.StatusSwitchingProtocols}, {1, http.StatusRequestHeaderFieldsTooLarge}} {
		src, _ := tr.authz.open("size" + string(rune('a'+tc.delta)))
		h := upgradeHeader(src, SubprotocolV3)
		h.Set("X-Pad", "")
		target := "/tunnel?local-proxy-mode=source"
		// Measure the request as written and pad it to exactly 4096 + delta.
		req, _ := http.NewRequest(http.MethodGet, "http://"+tr.srv.Listener.Addr().String()+target, nil)
		req.Header = h
		var sb strings.Builder
		req.Write(&sb)
		h.Set("X-Pad", strings.Repeat("p", 4096+tc.delta-sb.Len()))
		resp, _, _ := rawUpgrade(t, tr.srv.Listener.Addr().String(), target, h)
		if resp.StatusCode != tc.status {
			t.Errorf("request of 4096+%d bytes: status %d, want %d", tc.delta, resp.StatusCode, tc.status)
		}
		if resp.Header.Get("channel-id") == "" {
			t.Error("no channel-id")
		}
	}
}

func TestHandshakeTokenSources(t *testing.T) {
	tr := newTestRelay(t, Config{})
	for _, cookie := range []bool{false, true} {
		id := "hdr"
		if cookie {
			id = "cookie"
		}
		src, _ := tr.authz.open(id, "SSH1")
		c := tr.dial(t, src, dialOpts{cookie: cookie})
		if c.resp.Header.Get("channel-id") == "" {
			t.Errorf("%s: no channel-id on 101", id)
		}
		c.expectServiceIDs([]string{"SSH1"})
		tr.authz.waitConnected(t, id, store.ModeSource, true)
	}
}

func TestSubprotocolNegotiation(t *testing.T) {
	all := newTestRelay(t, Config{})
	noV3 := newTestRelay(t, Config{Subprotocols: []string{SubprotocolV2, SubprotocolV1}})
	tests := []struct {
		relay   *testRelay
		offered []string
		want    string // "" = refused with 400
	}{
		{all, []string{SubprotocolV3}, SubprotocolV3},
		{all, []string{SubprotocolV2}, SubprotocolV2},
		{all, []string{SubprotocolV1}, SubprotocolV1},
		{all, []string{SubprotocolV1, SubprotocolV2}, SubprotocolV2},
		{all, []string{"chat", SubprotocolV1, SubprotocolV3, SubprotocolV2}, SubprotocolV3},
		{all, []string{"chat"}, ""},
		{noV3, []string{SubprotocolV3}, ""},
		{noV3, []string{SubprotocolV3, SubprotocolV1}, SubprotocolV1},
	}
	for i, tc := range tests {
		src, _ := tc.relay.authz.open("sp" + string(rune('a'+i)))
		c, err := tc.relay.tryDial(t, src, dialOpts{subprotocols: tc.offered})
		if tc.want == "" {
			if err == nil || !strings.Contains(err.Error(), "HTTP 400") {
				t.Errorf("offered %q: err %v, want HTTP 400", tc.offered, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("offered %q: %v", tc.offered, err)
			continue
		}
		if got := c.conn.Subprotocol(); got != tc.want {
			t.Errorf("offered %q: got %q, want %q", tc.offered, got, tc.want)
		}
	}
}

func TestServiceIDsFirstAndAlone(t *testing.T) {
	tr := newTestRelay(t, Config{})
	addr := tr.srv.Listener.Addr().String()
	for _, proto := range []string{SubprotocolV3, SubprotocolV2} {
		src, _ := tr.authz.open("alone-"+proto, "SSH1", "HTTP")
		resp, br, _ := rawUpgrade(t, addr, "/tunnel?local-proxy-mode=source", upgradeHeader(src, proto))
		if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Protocol") != proto || resp.Header.Get("channel-id") == "" {
			t.Fatalf("%s: response %d %v", proto, resp.StatusCode, resp.Header)
		}
		msg := readWSMessage(t, br)
		want, _ := wire.AppendFrame(nil, &wire.Message{Type: wire.TypeServiceIDs, AvailableServiceIDs: []string{"SSH1", "HTTP"}})
		if string(msg) != string(want) {
			t.Errorf("%s: first message %x, want exactly SERVICE_IDS %x", proto, msg, want)
		}
	}

	// V1: no SERVICE_IDS; the first thing the source sees is the
	// destination's data.
	src, dst := tr.authz.open("v1")
	s := tr.dial(t, src, dialOpts{subprotocols: []string{SubprotocolV1}})
	tr.authz.waitConnected(t, "v1", store.ModeSource, true)
	d := tr.dial(t, dst, dialOpts{subprotocols: []string{SubprotocolV1}})
	tr.authz.waitConnected(t, "v1", store.ModeDestination, true)
	d.send(&wire.Message{Type: wire.TypeData, StreamID: 1, Payload: []byte("hi")})
	if m := s.recv(); m.Type != wire.TypeData || string(m.Payload) != "hi" {
		t.Errorf("V1 source got %v first", m)
	}
}

func TestConfigValidation(t *testing.T) {
	if _, err := New(Config{}); !errors.Is(err, ErrConfig) {
		t.Errorf("no authorizer: %v", err)
	}
	if _, err := New(Config{Authorizer: newMemAuthz(), Subprotocols: []string{"x"}}); !errors.Is(err, ErrConfig) {
		t.Errorf("bad subprotocol: %v", err)
	}
	r, err := New(Config{Authorizer: newMemAuthz(), Subprotocols: []string{SubprotocolV1, SubprotocolV3}})
	if err != nil || !slices.Equal(r.subprot, []string{SubprotocolV3, SubprotocolV1}) {
		t.Errorf("subprotocols %q, %v", r.subprot, err)
	}
}

// TestEarlyDataRefusedBeforeToken: an upgrade request followed at once by
// more bytes (frames sent before the 101) used to consume the token in
// Authorize and then get no HTTP answer at all (the upgrade found the
// bytes and closed the connection). Now it is refused with 400 before the
// token is looked at, so the same token still connects.
func TestEarlyDataRefusedBeforeToken(t *testing.T) {
	tr := newTestRelay(t, Config{})
	_, dst := tr.authz.open("t1", "SSH")
	addr := tr.srv.Listener.Addr().String()

	conn, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/tunnel?local-proxy-mode=destination", nil)
	req.Header = upgradeHeader(dst, SubprotocolV3)
	var b bytes.Buffer
	req.Write(&b)
	b.WriteString("\x82\x85early") // a masked frame header and bytes, before the 101
	if _, err := conn.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatalf("no HTTP answer to an upgrade request with early data: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "before the 101") || resp.Header.Get("channel-id") == "" {
		t.Fatalf("answer %d %q (channel-id %q), want 400 saying the data came before the 101", resp.StatusCode, body, resp.Header.Get("channel-id"))
	}
	if n := tr.handshake.failures[failEarlyData].Load(); n != 1 {
		t.Errorf("early_data failures = %d, want 1", n)
	}
	// The token was not used: the corrected client connects with it.
	c := tr.dial(t, dst, dialOpts{})
	c.expectServiceIDs([]string{"SSH"})
}

// TestWebSSHSampleHandshake connects a source as the AWS web SSH sample
// (aws-samples/aws-iot-securetunneling-web-ssh) does from a browser: the
// token in the awsiot-tunnel-token cookie (next to the page's other
// cookies), the subprotocol named aws.iot.securedtunneling-1.0, then a
// STREAM_START of its own stream ID. The relay echoes that name, speaks V1
// to it, and the V1 destination sees the stream start and the data;
// TunnelStats counts both directions.
func TestWebSSHSampleHandshake(t *testing.T) {
	tr := newTestRelay(t, Config{})
	src, dst := tr.authz.open("websample")
	d := tr.dial(t, dst, dialOpts{subprotocols: []string{SubprotocolV1}})
	tr.authz.waitConnected(t, "websample", store.ModeDestination, true)

	h := http.Header{}
	h.Set("Cookie", "sectun_console=abc; "+cookieToken+"="+src+"; theme=dark")
	h.Set("Origin", "https://console.example")
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	conn, resp, err := wsconn.Dial(ctx, tr.wsURL+"?local-proxy-mode=source", wsconn.DialOptions{
		Header:       h,
		Subprotocols: []string{SubprotocolV1Secured},
		Proxy:        func(*url.URL) (*url.URL, error) { return nil, nil },
	})
	if err != nil {
		t.Fatalf("sample handshake: %v", err)
	}
	t.Cleanup(func() { conn.Close(wsconn.CloseNormal, "") })
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != SubprotocolV1Secured {
		t.Errorf("echoed subprotocol %q, want %q (a browser fails the connection otherwise)", got, SubprotocolV1Secured)
	}
	s := &client{t: t, conn: conn, resp: resp, fr: wire.NewFrameReader(conn)}
	conn.SetLiveness(testTimeout)
	tr.authz.waitConnected(t, "websample", store.ModeSource, true)
	s.send(&wire.Message{Type: wire.TypeStreamStart, StreamID: 421}, &wire.Message{Type: wire.TypeData, StreamID: 421, Payload: []byte("SSH-2.0-web\r\n")})
	if m := d.recv(); m.Type != wire.TypeStreamStart || m.StreamID != 421 {
		t.Fatalf("destination got %v, want STREAM_START 421", m)
	}
	if m := d.recv(); m.Type != wire.TypeData || string(m.Payload) != "SSH-2.0-web\r\n" {
		t.Fatalf("destination got %v, want the data", m)
	}
	d.send(&wire.Message{Type: wire.TypeData, StreamID: 421, Payload: []byte("SSH-2.0-srv\r\n")})
	if m := s.recv(); m.Type != wire.TypeData || string(m.Payload) != "SSH-2.0-srv\r\n" {
		t.Fatalf("source got %v", m)
	}
	// A sender's counter is bumped as the frame is handed on: wait for
	// both anyway.
	se, de, ok := tr.TunnelStats("websample")
	for deadline := time.Now().Add(testTimeout); (de.Frames < 1 || se.Frames < 2) && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
		se, de, ok = tr.TunnelStats("websample")
	}
	if !ok || !se.Connected || !de.Connected || se.Version != 1 || se.Frames != 2 || de.Frames != 1 || se.ChannelID == "" || se.ChannelID == de.ChannelID {
		t.Errorf("TunnelStats = %+v %+v %v", se, de, ok)
	}
	if _, _, ok := tr.TunnelStats("nosuch"); ok {
		t.Error("TunnelStats of an unknown tunnel: ok")
	}
}
