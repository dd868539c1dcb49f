package tunnel

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sectun/sectun/wire"
)

func TestEndpointURL(t *testing.T) {
	for _, tc := range []struct {
		endpoint, region string
		want             string // "" = error
	}{
		{"", "us-east-1", "wss://data.tunneling.iot.us-east-1.amazonaws.com:443/tunnel?local-proxy-mode=source"},
		{"", "cn-north-1", "wss://data.tunneling.iot.cn-north-1.amazonaws.com.cn:443/tunnel?local-proxy-mode=source"},
		{"", "", ""},
		{"", "US EAST", ""},
		{"example.com", "us-east-1", "wss://example.com:443/tunnel?local-proxy-mode=source"},
		{"example.com:8443", "", "wss://example.com:8443/tunnel?local-proxy-mode=source"},
		{"  example.com  ", "", "wss://example.com:443/tunnel?local-proxy-mode=source"},
		{"Example.COM", "", "wss://example.com:443/tunnel?local-proxy-mode=source"},
		{"", "US-EAST-1", "wss://data.tunneling.iot.us-east-1.amazonaws.com:443/tunnel?local-proxy-mode=source"},
		{"ws://localhost", "", "ws://localhost:80/tunnel?local-proxy-mode=source"},
		{"wss://h/prefix", "", "wss://h:443/prefix/tunnel?local-proxy-mode=source"},
		{"wss://h/tunnel/", "", "wss://h:443/tunnel?local-proxy-mode=source"},
		{"[::1]:8443", "", "wss://[::1]:8443/tunnel?local-proxy-mode=source"},
		{"ws://127.0.0.1:8080", "", "ws://127.0.0.1:8080/tunnel?local-proxy-mode=source"},
		{"WSS://h/", "", "wss://h:443/tunnel?local-proxy-mode=source"},
		{"wss://h/prefix/tunnel", "", "wss://h:443/prefix/tunnel?local-proxy-mode=source"},
		{"https://h", "", ""},
		{"wss://h?x=1", "", ""},
		{"wss://u:p@h", "", ""},
		{"wss://", "", ""},
		{"wss://h:0", "", ""},
		{"wss://h:99999", "", ""},
		{"h:port", "", ""},
		{"h/path", "", ""},
		{"u@h", "", ""},
		{":443", "", ""},
	} {
		u, err := endpointURL(tc.endpoint, tc.region, ModeSource)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("endpointURL(%q, %q) = %v, want an error", tc.endpoint, tc.region, u)
		case tc.want != "" && err != nil:
			t.Errorf("endpointURL(%q, %q): %v", tc.endpoint, tc.region, err)
		case tc.want != "" && u.String() != tc.want:
			t.Errorf("endpointURL(%q, %q) = %v, want %v", tc.endpoint, tc.region, u, tc.want)
		case err != nil && !errors.Is(err, ErrInvalidConfig):
			t.Errorf("endpointURL(%q): %v does not wrap ErrInvalidConfig", tc.endpoint, err)
		}
	}
}

func FuzzEndpointURL(f *testing.F) {
	for _, s := range []string{"", "example.com", "example.com:443", "ws://127.0.0.1:1/x", "wss://[::1]:8443/tunnel", "h:port", "wss://u@h", "%zz", "wss://h/%2F", "[::1"} {
		f.Add(s, "us-east-1", true)
	}
	f.Fuzz(func(t *testing.T, endpoint, region string, source bool) {
		mode := ModeDestination
		if source {
			mode = ModeSource
		}
		u, err := endpointURL(endpoint, region, mode)
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %v does not wrap ErrInvalidConfig", err)
			}
			return
		}
		if u.Scheme != "ws" && u.Scheme != "wss" || u.Hostname() == "" || u.RawQuery != "local-proxy-mode="+mode.String() {
			t.Fatalf("endpointURL(%q, %q) = %v", endpoint, region, u)
		}
		again, err := url.Parse(u.String())
		if err != nil || again.String() != u.String() || again.Host != u.Host {
			t.Fatalf("%v does not parse back: %v %v", u, again, err)
		}
	})
}

func TestConfigNormalize(t *testing.T) {
	good := func() Config {
		return Config{Mode: ModeSource, AccessToken: "tok", Endpoint: "ws://127.0.0.1:1"}
	}
	c := good()
	if _, err := c.normalize(); err != nil {
		t.Fatal(err)
	}
	if c.KeepaliveInterval != 20*time.Second || c.SendBuffer != 256<<10 || c.ReceiveBuffer != 256<<10 ||
		c.MaxDataSize != wire.MaxPayloadSize || c.MaxConns != 128 || c.ReconnectMin != time.Second || c.ReconnectMax != 2*time.Minute ||
		len(c.Subprotocols) != 3 || c.Logger == nil {
		t.Fatalf("defaults not applied: %+v", c)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"no mode", func(c *Config) { c.Mode = "" }},
		{"api spelling is not a mode", func(c *Config) { c.Mode = "SOURCE" }},
		{"no token", func(c *Config) { c.AccessToken = "" }},
		{"token with newline", func(c *Config) { c.AccessToken = "a\r\nb" }},
		{"short client token", func(c *Config) { c.ClientToken = "abc" }},
		{"bad client token", func(c *Config) { c.ClientToken = strings.Repeat("_", 40) }},
		{"peer version 4", func(c *Config) { c.PeerVersion = 4 }},
		{"peer version on destination", func(c *Config) { c.Mode, c.PeerVersion = ModeDestination, 2 }},
		{"no endpoint", func(c *Config) { c.Endpoint = "" }},
		{"bad subprotocol", func(c *Config) { c.Subprotocols = []string{"chat"} }},
		{"inverted backoff", func(c *Config) { c.ReconnectMin, c.ReconnectMax = time.Minute, time.Second }},
		{"huge data size", func(c *Config) { c.MaxDataSize = wire.MaxPayloadSize + 1 }},
		{"negative buffer", func(c *Config) { c.SendBuffer = -1 }},
	} {
		c := good()
		tc.mod(&c)
		if _, err := c.normalize(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", tc.name, err)
		}
	}
}

func TestNegotiated(t *testing.T) {
	offered := []string{subprotocol(3), subprotocol(2)}
	for _, tc := range []struct {
		chosen string
		want   int
	}{
		{subprotocol(3), 3},
		{subprotocol(2), 2},
		{"", 3},
		{subprotocol(1), 0}, // not offered
		{"chat", 0},
	} {
		v, err := negotiated(tc.chosen, offered)
		if v != tc.want || (err != nil) != (tc.want == 0) {
			t.Errorf("negotiated(%q) = %d, %v", tc.chosen, v, err)
		}
		if err != nil && !errors.Is(err, ErrVersionMismatch) {
			t.Errorf("negotiated(%q): %v", tc.chosen, err)
		}
	}
}

func TestHandshakeReason(t *testing.T) {
	for _, tc := range []struct {
		status int
		body   string
		want   string
	}{
		{401, "access token already used", "aws iotsecuretunneling rotate-tunnel-access-token --tunnel-id TUNNEL_ID --client-mode SOURCE"},
		{401, "access token already used with a different client token", "rotate-tunnel-access-token"},
		{401, "Token expired", "rotate"},
		{401, "invalid client-token", "client token"},
		{401, "access token is not valid for local-proxy-mode=source", "other mode"},
		{410, "", "closed"},
		{401, "", "check the token"},
		{400, "", "endpoint"},
		{503, "busy", "retried"},
	} {
		if got := handshakeReason(tc.status, tc.body, ModeSource); !strings.Contains(got, tc.want) {
			t.Errorf("handshakeReason(%d, %q) = %q, want it to say %q", tc.status, tc.body, got, tc.want)
		}
	}
	e := &HandshakeError{StatusCode: 401, ChannelID: "c1", Body: "nope\n", Reason: "r"}
	if !errors.Is(e, ErrTokenRejected) || e.Error() != `tunnel: handshake refused (HTTP 401, channel-id c1): r (service said: "nope")` {
		t.Errorf("HandshakeError: %q", e.Error())
	}
	if errors.Is(&HandshakeError{StatusCode: 502}, ErrTokenRejected) {
		t.Error("a 502 must not wrap ErrTokenRejected")
	}
}

func TestBackoff(t *testing.T) {
	s := &Session{cfg: Config{ReconnectMin: time.Second, ReconnectMax: time.Minute}}
	for n := 1; n < 100; n++ {
		ceil := min(time.Minute, time.Second<<min(n-1, 30))
		for range 20 {
			if d := s.backoff(n); d < 0 || d >= ceil {
				t.Fatalf("backoff(%d) = %v, want [0, %v)", n, d, ceil)
			}
		}
	}
}

func TestModeString(t *testing.T) {
	if ModeSource.String() != "source" || ModeDestination.String() != "destination" || Mode("9").String() != `Mode("9")` {
		t.Fatal(ModeSource, ModeDestination, Mode("9"))
	}
}
