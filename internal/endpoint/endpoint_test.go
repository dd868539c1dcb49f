package endpoint

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

// TestParse covers every endpoint form that package tunnel's and the local
// proxy's parsers accepted before they became this one.
func TestParse(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		// The reference's syntax.
		{"data.tunneling.iot.us-east-1.amazonaws.com", "wss://data.tunneling.iot.us-east-1.amazonaws.com:443"},
		{"data.tunneling.iot.us-east-1.amazonaws.com:443", "wss://data.tunneling.iot.us-east-1.amazonaws.com:443"},
		{"Tunnel.Example.COM:8443", "wss://tunnel.example.com:8443"},
		{"127.0.0.1:9000", "wss://127.0.0.1:9000"},
		{"localhost", "wss://localhost:443"},
		{"example.com", "wss://example.com:443"},
		{"example.com:8443", "wss://example.com:8443"},
		// Extensions: IPv6 and ws/wss URLs with a path prefix.
		{"[::1]:8443", "wss://[::1]:8443"},
		{"[::1]", "wss://[::1]:443"},
		{"wss://tunnel.example.com", "wss://tunnel.example.com:443"},
		{"WSS://Tunnel.Example.com:9443/", "wss://tunnel.example.com:9443"},
		{"WSS://h/", "wss://h:443"},
		{"ws://127.0.0.1:8080", "ws://127.0.0.1:8080"},
		{"ws://localhost", "ws://localhost:80"},
		{"wss://host.example/Prefix/", "wss://host.example:443/Prefix"},
		{"wss://host.example/tunnel", "wss://host.example:443"},
		{"wss://h/prefix/tunnel", "wss://h:443/prefix"},
		{"wss://host.example/a/tunnel/", "wss://host.example:443/a"},
		{"ws://[::1]:9", "ws://[::1]:9"},
	} {
		u, err := Parse(tc.in)
		if err != nil || u.String() != tc.want {
			t.Errorf("Parse(%q) = %v, %v; want %s", tc.in, u, err, tc.want)
		}
	}
	for _, bad := range []string{"", "host:", ":443", "host:0", "host:70000", "host:1:2", "host:abc", "h:port", "::1", "host/path", "h/path", "u@h",
		"https://host", "http://host", "wss://user:pw@host", "wss://u:p@h", "wss://host?x=1", "wss://host#f", "wss://", "ws://host:",
		"wss://h:0", "wss://h:99999", "wss://[::1", "[::1]x", "ho st"} {
		if u, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) = %v, want an error", bad, u)
		} else if !strings.Contains(err.Error(), bad) || strings.Contains(err.Error(), "\n") {
			t.Errorf("Parse(%q): %q should name the input on one line", bad, err)
		}
	}
}

func TestRegion(t *testing.T) {
	ov := DefaultOverrides()
	for _, tc := range []struct{ region, want string }{
		{"us-east-1", "wss://data.tunneling.iot.us-east-1.amazonaws.com:443"},
		{"US-EAST-1", "wss://data.tunneling.iot.us-east-1.amazonaws.com:443"},
		{"cn-north-1", "wss://data.tunneling.iot.cn-north-1.amazonaws.com.cn:443"},
		{"CN-NORTHWEST-1", "wss://data.tunneling.iot.cn-northwest-1.amazonaws.com.cn:443"},
		{"us-gov-west-1", "wss://data.tunneling.iot.us-gov-west-1.amazonaws.com:443"},
	} {
		u, err := Region(tc.region, DefaultFormat, ov)
		if err != nil || u.String() != tc.want {
			t.Errorf("Region(%q) = %v, %v; want %s", tc.region, u, err, tc.want)
		}
	}
	if u, err := Region("ap-south-2", "tunnel.%s.example.com:8443", map[string]string{"eu-test-1": "Relay.Example.Net"}); err != nil || u.String() != "wss://tunnel.ap-south-2.example.com:8443" {
		t.Errorf("custom format: %v, %v", u, err)
	}
	if u, err := Region("EU-TEST-1", DefaultFormat, map[string]string{"eu-test-1": "Relay.Example.Net"}); err != nil || u.String() != "wss://relay.example.net:443" {
		t.Errorf("override: %v, %v", u, err)
	}
	for _, bad := range []string{"", "US EAST", "us east 1", "us-east-1.evil.com", "us_east_1", "us-east-1/x", strings.Repeat("a", 65)} {
		if _, err := Region(bad, DefaultFormat, ov); !errors.Is(err, ErrRegion) {
			t.Errorf("Region(%q): %v, want ErrRegion", bad, err)
		}
	}
	if _, err := Region("us-east-1", "bad host/%s", nil); err == nil || errors.Is(err, ErrRegion) {
		t.Errorf("bad format: %v, want a non-ErrRegion error", err)
	}
	DefaultOverrides()["cn-north-1"] = "x"
	if DefaultOverrides()["cn-north-1"] == "x" {
		t.Error("DefaultOverrides shares its map")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"example.com", "example.com:443", "ws://127.0.0.1:1/x", "wss://[::1]:8443/tunnel", "h:port", "wss://u@h", "%zz", "wss://h/%2F", "[::1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := Parse(s)
		if err != nil {
			return
		}
		if u.Scheme != "ws" && u.Scheme != "wss" || u.Hostname() == "" || u.Port() == "" {
			t.Fatalf("Parse(%q) = %v", s, u)
		}
		again, err := url.Parse(u.String())
		if err != nil || again.String() != u.String() {
			t.Fatalf("%v does not parse back: %v %v", u, again, err)
		}
		if back, err := Parse(u.String()); err != nil || back.Host != u.Host || back.Scheme != u.Scheme {
			t.Fatalf("Parse(%v) = %v, %v: host or scheme changed", u, back, err)
		}
	})
}
