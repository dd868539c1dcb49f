package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseMapping(t *testing.T) {
	cases := []struct {
		in            string
		service, addr string
		err           string
	}{
		{in: "SSH=localhost:22", service: "SSH", addr: "localhost:22"},
		{in: "SSH=22", service: "SSH", addr: "localhost:22"},
		{in: " HTTP = 127.0.0.1:8080 ", service: "HTTP", addr: "127.0.0.1:8080"},
		{in: "web_1=[::1]:80", service: "web_1", addr: "[::1]:80"},
		{in: "SSH", err: "want SERVICE="},
		{in: "=22", err: "want SERVICE="},
		{in: "SSH=", err: "want SERVICE="},
		{in: "S S=22", err: "service ID"},
		{in: "SSH=host", err: "want host:port"},
		{in: "SSH=host:0", err: "port must be"},
		{in: "SSH=host:70000", err: "port must be"},
		{in: "SSH=host:ssh", err: "port must be"},
		{in: "SSH=:22", err: "no host"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			svc, addr, err := ParseMapping(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseMapping(%q) = %q, %q, %v; want error containing %q", tc.in, svc, addr, err, tc.err)
				}
				return
			}
			if err != nil || svc != tc.service || addr != tc.addr {
				t.Fatalf("ParseMapping(%q) = %q, %q, %v; want %q, %q", tc.in, svc, addr, err, tc.service, tc.addr)
			}
		})
	}
}

func TestParseFile(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want File
		err  string
	}{
		{
			name: "native",
			in: `{"thingName":"dev-1","clientId":"dev-1@agent","broker":"ssl://h:8883","ca":"ca.pem","cert":"c.pem","key":"k.pem",
			      "alpn":["x-amzn-mqtt-ca"],"username":"u","passwordFile":"pw","topicPrefix":"sectun","tunnelEndpoint":"wss://t:8443","tunnelCa":"tca.pem",
			      "tunnelInsecure":true,"services":{"SSH":"22","HTTP":"localhost:80"},"v1Service":"HTTP","maxTunnels":4,"logLevel":"debug"}`,
			want: File{ThingName: "dev-1", ClientID: "dev-1@agent", Broker: "ssl://h:8883", CA: "ca.pem", Cert: "c.pem", Key: "k.pem",
				ALPN: []string{"x-amzn-mqtt-ca"}, Username: "u", PasswordFile: "pw", TopicPrefix: "sectun", TunnelEndpoint: "wss://t:8443", TunnelCA: "tca.pem",
				TunnelInsecure: true, Services: map[string]string{"SSH": "localhost:22", "HTTP": "localhost:80"}, V1Service: "HTTP",
				MaxTunnels: 4, LogLevel: "debug"},
		},
		{
			name: "device client keys",
			in:   `{"endpoint":"abc-ats.iot.eu-west-1.amazonaws.com","cert":"c.pem","key":"k.pem","root-ca":"AmazonRootCA1.pem","thing-name":"dev-2"}`,
			want: File{ThingName: "dev-2", Broker: "ssl://abc-ats.iot.eu-west-1.amazonaws.com:8883", CA: "AmazonRootCA1.pem", Cert: "c.pem", Key: "k.pem",
				DCEndpoint: "abc-ats.iot.eu-west-1.amazonaws.com", DCRootCA: "AmazonRootCA1.pem", DCThingName: "dev-2"},
		},
		{
			name: "device client endpoint with port",
			in:   `{"endpoint":"h:443","thing-name":"d"}`,
			want: File{ThingName: "d", Broker: "ssl://h:443", DCEndpoint: "h:443", DCThingName: "d"},
		},
		{
			name: "native keys win",
			in:   `{"endpoint":"h","broker":"tcp://b:1883","thing-name":"a","thingName":"b"}`,
			want: File{ThingName: "b", Broker: "tcp://b:1883", DCEndpoint: "h", DCThingName: "a"},
		},
		{name: "unknown key", in: `{"thing":"x"}`, err: "unknown field"},
		{name: "bad mapping", in: `{"services":{"SSH":"nowhere"}}`, err: "want host:port"},
		{name: "trailing data", in: `{} {}`, err: "after the JSON object"},
		{name: "not an object", in: `[]`, err: "cannot unmarshal"},
		{name: "negative max", in: `{"maxTunnels":-1}`, err: "maxTunnels"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := ParseFile(strings.NewReader(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseFile: %+v, %v; want error containing %q", f, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, *f); d != "" {
				t.Fatalf("ParseFile (-want +got):\n%s", d)
			}
		})
	}
}

func TestLoadFileTooLarge(t *testing.T) {
	p := filepath.Join(t.TempDir(), "big.json")
	if err := os.WriteFile(p, []byte(`{"thingName":"`+strings.Repeat("a", MaxFileSize)+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFile(p); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("LoadFile: %v", err)
	}
}

func TestBrokerURL(t *testing.T) {
	cases := []struct {
		in, want, err string
	}{
		{in: "tcp://127.0.0.1", want: "tcp://127.0.0.1:1883"},
		{in: "mqtts://h", want: "mqtts://h:8883"},
		{in: "SSL://h:443", want: "ssl://h:443"},
		{in: "wss://h/mqtt", want: "wss://h:443/mqtt"},
		{in: "ws://h:8080/mqtt", want: "ws://h:8080/mqtt"},
		{in: "", err: "no MQTT broker URL"},
		{in: "http://h", err: "scheme must be"},
		{in: "tcp://", err: "no host"},
		{in: "tcp://u:secret@h", err: "put credentials"},
		{in: "tcp://h:0", err: "bad port"},
		{in: "h:1883", err: "scheme must be"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			u, err := brokerURL(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrInvalidConfig) {
					t.Fatalf("brokerURL(%q) = %v, %v; want error containing %q", tc.in, u, err, tc.err)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Fatalf("error %q reveals the password", err)
				}
				return
			}
			if err != nil || u.String() != tc.want {
				t.Fatalf("brokerURL(%q) = %v, %v; want %s", tc.in, u, err, tc.want)
			}
		})
	}
}

func TestBrokerTLS(t *testing.T) {
	c := Config{}
	u, _ := brokerURL("ssl://h:443")
	tl, err := c.brokerTLS(u)
	if err != nil || len(tl.NextProtos) != 1 || tl.NextProtos[0] != "x-amzn-mqtt-ca" {
		t.Fatalf("TLS on 443: %+v, %v; want ALPN x-amzn-mqtt-ca", tl, err)
	}
	u, _ = brokerURL("ssl://h:8883")
	if tl, err = c.brokerTLS(u); err != nil || len(tl.NextProtos) != 0 {
		t.Fatalf("TLS on 8883: %+v, %v", tl, err)
	}
	if tl, err = (&Config{BrokerALPN: []string{"x-amzn-mqtt-ca"}}).brokerTLS(u); err != nil || len(tl.NextProtos) != 1 {
		t.Fatalf("explicit ALPN on 8883: %+v, %v", tl, err)
	}
	u443, _ := brokerURL("ssl://h:443")
	if tl, err = (&Config{BrokerALPN: []string{}}).brokerTLS(u443); err != nil || len(tl.NextProtos) != 0 {
		t.Fatalf("ALPN disabled on 443: %+v, %v", tl, err)
	}
	u, _ = brokerURL("tcp://h")
	if _, err := (&Config{CAFile: "x"}).brokerTLS(u); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("CA file with tcp://: %v", err)
	}
	u, _ = brokerURL("ssl://h")
	if _, err := (&Config{CertFile: "x"}).brokerTLS(u); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("certificate without key: %v", err)
	}
	if _, err := (&Config{CAFile: filepath.Join(t.TempDir(), "none")}).brokerTLS(u); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("missing CA file: %v", err)
	}
}

func TestMapping(t *testing.T) {
	c := Config{Services: map[string]string{"HTTP": "localhost:8080", "SSH": "10.0.0.1:2222"}}
	cases := []struct {
		name     string
		v1       string
		services []string
		want     map[string]string
		err      error
	}{
		{name: "configured", services: []string{"SSH", "HTTP"}, want: map[string]string{"SSH": "10.0.0.1:2222", "HTTP": "localhost:8080"}},
		{name: "default VNC", services: []string{"VNC"}, want: map[string]string{"VNC": "localhost:5900"}},
		{name: "unknown", services: []string{"SSH", "RDP"}, err: ErrUnmappedService},
		{name: "v1 uses SSH", want: map[string]string{"": "10.0.0.1:2222"}},
		{name: "v1 service", v1: "HTTP", want: map[string]string{"": "localhost:8080"}},
		{name: "v1 unmapped", v1: "RDP", err: ErrUnmappedService},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.V1Service = tc.v1
			got, err := c.mapping(tc.services)
			if !errors.Is(err, tc.err) {
				t.Fatalf("mapping: %v, want %v", err, tc.err)
			}
			if d := cmp.Diff(tc.want, got); tc.err == nil && d != "" {
				t.Fatalf("mapping (-want +got):\n%s", d)
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		err  string
	}{
		{"no thing", Config{BrokerURL: "tcp://h"}, "thing name"},
		{"bad thing", Config{ThingName: "a/b", BrokerURL: "tcp://h"}, "thing name"},
		{"no broker", Config{ThingName: "t"}, "no MQTT broker URL"},
		{"bad prefix", Config{ThingName: "t", BrokerURL: "tcp://h", TopicPrefix: "a/#"}, "topic prefix"},
		{"bad service", Config{ThingName: "t", BrokerURL: "tcp://h", Services: map[string]string{"SSH": "x"}}, "want host:port"},
		{"bad service id", Config{ThingName: "t", BrokerURL: "tcp://h", Services: map[string]string{"a b": "h:1"}}, "service ID"},
		{"negative max", Config{ThingName: "t", BrokerURL: "tcp://h", MaxTunnels: -1}, "negative"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("New: %v; want ErrInvalidConfig containing %q", err, tc.err)
			}
		})
	}
}

func TestSeenSet(t *testing.T) {
	s := newSeenSet(3)
	for _, k := range []string{"a", "b", "c", "a"} {
		s.add(k)
	}
	if !s.has("a") || !s.has("c") {
		t.Fatal("recent keys missing")
	}
	s.add("d") // evicts a, the oldest
	if s.has("a") || !s.has("b") || !s.has("d") || len(s.keys) != 3 {
		t.Fatalf("after eviction: %v", s.keys)
	}
}

func FuzzParseFile(f *testing.F) {
	f.Add(`{"thingName":"dev-1","broker":"tcp://h","services":{"SSH":"22"}}`)
	f.Add(`{"endpoint":"h","thing-name":"d","root-ca":"ca"}`)
	f.Add(`{"services":{"":""}}`)
	f.Fuzz(func(t *testing.T, in string) {
		fl, err := ParseFile(strings.NewReader(in))
		if err != nil {
			return
		}
		for id, addr := range fl.Services {
			if _, _, err := ParseMapping(id + "=" + addr); err != nil {
				t.Fatalf("accepted mapping %q=%q fails ParseMapping: %v", id, addr, err)
			}
		}
	})
}

func FuzzParseMapping(f *testing.F) {
	f.Add("SSH=localhost:22")
	f.Add("SSH=22")
	f.Add("HTTP=[::1]:80")
	f.Fuzz(func(t *testing.T, in string) {
		svc, addr, err := ParseMapping(in)
		if err != nil {
			return
		}
		// A parsed mapping parses again to itself.
		s2, a2, err := ParseMapping(svc + "=" + addr)
		if err != nil || s2 != svc || a2 != addr {
			t.Fatalf("%q -> %q=%q -> %q=%q, %v", in, svc, addr, s2, a2, err)
		}
	})
}
