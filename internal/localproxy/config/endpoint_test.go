package config

import (
	"errors"
	"strings"
	"testing"
)

func TestEndpointURLFromRegion(t *testing.T) {
	custom := DefaultSettings()
	custom.EndpointFormat = "tunnel.%s.example.com:8443"
	custom.RegionEndpointOverrides["eu-test-1"] = "Relay.Example.Net"
	tests := []struct {
		region   string
		settings Settings
		want     string
	}{
		{"us-east-1", DefaultSettings(), "wss://data.tunneling.iot.us-east-1.amazonaws.com:443"},
		{"eu-west-1", DefaultSettings(), "wss://data.tunneling.iot.eu-west-1.amazonaws.com:443"},
		{"cn-north-1", DefaultSettings(), "wss://data.tunneling.iot.cn-north-1.amazonaws.com.cn:443"},
		{"cn-northwest-1", DefaultSettings(), "wss://data.tunneling.iot.cn-northwest-1.amazonaws.com.cn:443"},
		{"US-EAST-1", DefaultSettings(), "wss://data.tunneling.iot.us-east-1.amazonaws.com:443"},
		{"CN-NORTH-1", DefaultSettings(), "wss://data.tunneling.iot.cn-north-1.amazonaws.com.cn:443"},
		{"us-gov-west-1", DefaultSettings(), "wss://data.tunneling.iot.us-gov-west-1.amazonaws.com:443"},
		{"ap-south-2", custom, "wss://tunnel.ap-south-2.example.com:8443"},
		{"eu-test-1", custom, "wss://relay.example.net:443"},
		{"cn-north-1", custom, "wss://data.tunneling.iot.cn-north-1.amazonaws.com.cn:443"},
	}
	for _, tt := range tests {
		u, err := EndpointURL("", tt.region, &tt.settings)
		if err != nil {
			t.Errorf("%s: %v", tt.region, err)
			continue
		}
		if u.String() != tt.want {
			t.Errorf("%s: %s, want %s", tt.region, u, tt.want)
		}
	}
	for _, bad := range []string{"us east 1", "us-east-1.evil.com", "us_east_1", "us-east-1/x", strings.Repeat("a", 65)} {
		s := DefaultSettings()
		if _, err := EndpointURL("", bad, &s); !errors.Is(err, ErrEndpoint) {
			t.Errorf("region %q: err = %v, want ErrEndpoint", bad, err)
		}
	}
}

func TestEndpointURLFromEndpoint(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"data.tunneling.iot.us-east-1.amazonaws.com", "wss://data.tunneling.iot.us-east-1.amazonaws.com:443"},
		{"data.tunneling.iot.us-east-1.amazonaws.com:443", "wss://data.tunneling.iot.us-east-1.amazonaws.com:443"},
		{"Tunnel.Example.COM:8443", "wss://tunnel.example.com:8443"},
		{"127.0.0.1:9000", "wss://127.0.0.1:9000"},
		{"localhost", "wss://localhost:443"},
		// sectun extensions.
		{"[::1]:8443", "wss://[::1]:8443"},
		{"[::1]", "wss://[::1]:443"},
		{"wss://tunnel.example.com", "wss://tunnel.example.com:443"},
		{"WSS://Tunnel.Example.com:9443/", "wss://tunnel.example.com:9443"},
		{"ws://127.0.0.1:8080", "ws://127.0.0.1:8080"},
		{"ws://localhost", "ws://localhost:80"},
		{"wss://host.example/Prefix/", "wss://host.example:443/Prefix"},
		{"wss://host.example/tunnel", "wss://host.example:443"},
		{"wss://host.example/a/tunnel/", "wss://host.example:443/a"},
		{"ws://[::1]:9", "ws://[::1]:9"},
	}
	for _, tt := range tests {
		u, err := EndpointURL(tt.in, "", nil)
		if err != nil {
			t.Errorf("%s: %v", tt.in, err)
			continue
		}
		if u.String() != tt.want {
			t.Errorf("%s: %s, want %s", tt.in, u, tt.want)
		}
	}
	for _, bad := range []string{"host:", ":443", "host:0", "host:70000", "host:1:2", "host:abc", "::1", "host/path",
		"https://host", "http://host", "wss://user:pw@host", "wss://host?x=1", "wss://host#f", "wss://", "ws://host:", "wss://[::1", "[::1]x", "ho st"} {
		if _, err := EndpointURL(bad, "", nil); !errors.Is(err, ErrEndpoint) {
			t.Errorf("endpoint %q: err = %v, want ErrEndpoint", bad, err)
		} else {
			checkOneLine(t, err)
		}
	}
	s := DefaultSettings()
	if _, err := EndpointURL("h", "us-east-1", &s); !errors.Is(err, ErrEndpointAndRegion) {
		t.Errorf("both: err = %v", err)
	}
	if _, err := EndpointURL("", "", &s); !errors.Is(err, ErrNoEndpoint) {
		t.Errorf("neither: err = %v", err)
	}
}

func TestParseWebProxyURL(t *testing.T) {
	tests := []struct {
		in, want, user, pass string
		hasUser              bool
	}{
		{in: "http://proxy:8080", want: "http://proxy:8080"},
		{in: "proxy.local", want: "http://proxy.local:3128"},
		{in: "proxy.local:3129", want: "http://proxy.local:3129"},
		{in: "HTTP://Proxy.Example:3128/", want: "http://proxy.example:3128"},
		{in: "https://proxy:443", want: "https://proxy:443"},
		{in: "http://proxy:0", want: "http://proxy:3128"},
		{in: "http://[::1]:8080", want: "http://[::1]:8080"},
		{in: "http://u:p@proxy:1", want: "http://u:p@proxy:1", user: "u", pass: "p", hasUser: true},
		{in: "http://u:p@ss@proxy:1", user: "u", pass: "p@ss", hasUser: true},
		{in: "http://us%40er:p%3Ass@proxy", user: "us@er", pass: "p:ss", hasUser: true},
		{in: "http://u:a+b@proxy", user: "u", pass: "a b", hasUser: true},
		{in: "http://u:@proxy", user: "u", pass: "", hasUser: true},
	}
	for _, tt := range tests {
		u, err := ParseWebProxyURL(tt.in)
		if err != nil {
			t.Errorf("%s: %v", tt.in, err)
			continue
		}
		if tt.want != "" && u.String() != tt.want {
			t.Errorf("%s: %s, want %s", tt.in, u, tt.want)
		}
		if (u.User != nil) != tt.hasUser {
			t.Errorf("%s: user = %v", tt.in, u.User)
			continue
		}
		if tt.hasUser {
			p, _ := u.User.Password()
			if u.User.Username() != tt.user || p != tt.pass {
				t.Errorf("%s: user %q pass %q, want %q %q", tt.in, u.User.Username(), p, tt.user, tt.pass)
			}
		}
	}
	for _, bad := range []string{"socks5://proxy:1080", "ftp://x", "http://", "http://@proxy", "http://user@proxy",
		"http://:pass@proxy", "http://proxy:abc", "http://proxy:70000", "http://u:%zz@proxy", "://proxy", "http://pro xy"} {
		if _, err := ParseWebProxyURL(bad); !errors.Is(err, ErrProxyURL) {
			t.Errorf("%q: err = %v, want ErrProxyURL", bad, err)
		} else {
			checkOneLine(t, err)
		}
	}
}
