package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// referenceDefaults is what the reference local proxy v3.3.1 writes for
// --export-default-settings (key set, values and order per PROTOCOL.md and
// its settings code; layout per Boost.PropertyTree's write_json).
const referenceDefaults = `{
    "tunneling": {
        "proxy": {
            "default_bind_address": "localhost",
            "message": {
                "data_length_size": "2",
                "data_frame_max_size": "65538",
                "max_payload_size": "64512",
                "max_size": "65536"
            },
            "tcp": {
                "connection_retry_count": "5",
                "connection_retry_delay_ms": "2500",
                "read_buffer_size": "131076",
                "max_active_connections": "128"
            },
            "websocket": {
                "ping_period_ms": "20000",
                "retry_delay_ms": "2500",
                "connect_retry_count": "-1",
                "reconnect_on_data_error": "true",
                "subprotocol": "aws.iot.securetunneling-3.0",
                "max_frame_size": "131076",
                "write_buffer_size": "131076",
                "read_buffer_size": "131076"
            },
            "region_endpoint_overrides": {
                "cn-north-1": "data.tunneling.iot.cn-north-1.amazonaws.com.cn",
                "cn-northwest-1": "data.tunneling.iot.cn-northwest-1.amazonaws.com.cn"
            }
        }
    }
}
`

func TestWriteDefaultSettings(t *testing.T) {
	var b bytes.Buffer
	if err := WriteDefaultSettings(&b); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(referenceDefaults, b.String()); diff != "" {
		t.Errorf("export (-want +got):\n%s", diff)
	}
	// It is JSON, and every leaf is a string.
	var v any
	if err := json.Unmarshal(b.Bytes(), &v); err != nil {
		t.Fatal(err)
	}
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for _, c := range x {
				walk(c)
			}
		case string:
		default:
			t.Errorf("non-string leaf %v", v)
		}
	}
	walk(v)
}

// custom has every field away from its default.
func custom() Settings {
	return Settings{
		DefaultBindAddress:         "0.0.0.0",
		EndpointFormat:             "tunnel.%s.example.com",
		RegionEndpointOverrides:    map[string]string{"cn-north-1": "a.example", "eu-x-1": "b.example:8443"},
		DataLengthSize:             2,
		DataFrameMaxSize:           1000,
		MaxPayloadSize:             512,
		MessageMaxSize:             998,
		TCPConnectionRetryCount:    -1,
		TCPConnectionRetryDelay:    10 * time.Millisecond,
		TCPReadBufferSize:          4096,
		TCPWriteBufferSize:         8192,
		MaxActiveConnections:       3,
		PingPeriod:                 time.Second,
		WebSocketRetryDelay:        0,
		WebSocketConnectRetryCount: 7,
		ReconnectOnDataError:       false,
		Subprotocol:                "aws.iot.securetunneling-2.0",
		WebSocketMaxFrameSize:      1,
		WebSocketWriteBufferSize:   2,
		WebSocketReadBufferSize:    3,
	}
}

func TestSettingsRoundTrip(t *testing.T) {
	// export -> load over anything -> the defaults.
	var b bytes.Buffer
	WriteDefaultSettings(&b)
	got := custom()
	got.EndpointFormat = DefaultSettings().EndpointFormat // not exported
	got.TCPWriteBufferSize = DefaultSettings().TCPWriteBufferSize
	got.RegionEndpointOverrides = nil
	if err := LoadSettingsJSON(&b, &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(DefaultSettings(), got); diff != "" {
		t.Errorf("defaults round trip (-want +got):\n%s", diff)
	}

	// Non-default settings, including the unexported keys, survive too.
	want := custom()
	data, err := json.Marshal(want) // through MarshalJSON
	if err != nil {
		t.Fatal(err)
	}
	got = DefaultSettings()
	if err := LoadSettingsJSON(bytes.NewReader(data), &got); err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	want.RegionEndpointOverrides["cn-northwest-1"] = DefaultSettings().RegionEndpointOverrides["cn-northwest-1"] // merged
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("custom round trip (-want +got):\n%s", diff)
	}
}

func TestLoadSettingsJSON(t *testing.T) {
	mod := func(f func(*Settings)) Settings {
		s := DefaultSettings()
		f(&s)
		return s
	}
	tests := []struct {
		name string
		in   string
		want Settings
	}{
		{name: "empty object", in: `{}`, want: DefaultSettings()},
		{name: "no proxy", in: `{"tunneling": {}}`, want: DefaultSettings()},
		{name: "unknown keys ignored", in: `{"other": [1, {"a": null}], "tunneling": {"x": 1, "proxy": {"foo": "1", "message": {"bar": {}}, "tcp": {"baz": [1]}}}}`, want: DefaultSettings()},
		{name: "partial override as strings", in: `{"tunneling": {"proxy": {"tcp": {"connection_retry_count": "-1"}, "websocket": {"ping_period_ms": "5000"}}}}`,
			want: mod(func(s *Settings) { s.TCPConnectionRetryCount = -1; s.PingPeriod = 5 * time.Second })},
		{name: "JSON numbers and booleans", in: `{"tunneling": {"proxy": {"tcp": {"max_active_connections": 4}, "websocket": {"reconnect_on_data_error": false, "retry_delay_ms": 0}}}}`,
			want: mod(func(s *Settings) {
				s.MaxActiveConnections = 4
				s.ReconnectOnDataError = false
				s.WebSocketRetryDelay = 0
			})},
		{name: "bool as 0 and spaces", in: `{"tunneling": {"proxy": {"websocket": {"reconnect_on_data_error": " 0 "}}}}`,
			want: mod(func(s *Settings) { s.ReconnectOnDataError = false })},
		{name: "unexported keys read", in: `{"tunneling": {"proxy": {"endpoint_format": "t.%s.example", "tcp": {"write_buffer_size": "10"}}}}`,
			want: mod(func(s *Settings) { s.EndpointFormat = "t.%s.example"; s.TCPWriteBufferSize = 10 })},
		{name: "region override added and merged", in: `{"tunneling": {"proxy": {"region_endpoint_overrides": {"EU-X-1": "h.example"}}}}`,
			want: mod(func(s *Settings) { s.RegionEndpointOverrides["eu-x-1"] = "h.example" })},
		{name: "first of repeated keys wins", in: `{"tunneling": {"proxy": {"default_bind_address": "a", "default_bind_address": "b"}}}`,
			want: mod(func(s *Settings) { s.DefaultBindAddress = "a" })},
		{name: "null leaves the default", in: `{"tunneling": {"proxy": {"default_bind_address": null}}}`, want: DefaultSettings()},
		{name: "escapes", in: `{"tunneling": {"proxy": {"default_bind_address": "h\/x\u0041"}}}`,
			want: mod(func(s *Settings) { s.DefaultBindAddress = "h/xA" })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := DefaultSettings()
			if err := LoadSettingsJSON(strings.NewReader(tt.in), &got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoadSettingsJSONErrors(t *testing.T) {
	tests := []struct{ name, in, msg string }{
		{"not JSON", `{"tunneling": `, "not valid JSON"},
		{"syntax error line", "{\n\"a\": 1,\n}", "line 3"},
		{"trailing text", `{} {}`, "after the top-level object"},
		{"top-level array", `[]`, "top level must be a JSON object"},
		{"top-level string", `"x"`, "top level"},
		{"top-level null", `null`, "top level"},
		{"tunneling not object", `{"tunneling": "x"}`, `"tunneling" must be an object`},
		{"proxy not object", `{"tunneling": {"proxy": 3}}`, `"tunneling.proxy" must be an object`},
		{"message not object", `{"tunneling": {"proxy": {"message": "x"}}}`, "tunneling.proxy.message must be an object"},
		{"integer not a number", `{"tunneling": {"proxy": {"message": {"max_size": "abc"}}}}`, "tunneling.proxy.message.max_size = \"abc\" is not an integer"},
		{"float", `{"tunneling": {"proxy": {"message": {"max_size": 1.5}}}}`, "not an integer"},
		{"object for a value", `{"tunneling": {"proxy": {"websocket": {"ping_period_ms": {}}}}}`, "must be a single value"},
		{"array for a value", `{"tunneling": {"proxy": {"websocket": {"subprotocol": ["a"]}}}}`, "must be a single value"},
		{"bad bool", `{"tunneling": {"proxy": {"websocket": {"reconnect_on_data_error": "maybe"}}}}`, "not a boolean"},
		{"data length 4", `{"tunneling": {"proxy": {"message": {"data_length_size": "4"}}}}`, "only 2 is"},
		{"payload too big", `{"tunneling": {"proxy": {"message": {"max_payload_size": 70000}}}}`, "out of range 1..64512"},
		{"negative size", `{"tunneling": {"proxy": {"tcp": {"read_buffer_size": "-5"}}}}`, "out of range"},
		{"retry count below -1", `{"tunneling": {"proxy": {"tcp": {"connection_retry_count": -2}}}}`, "out of range -1.."},
		{"ping 0", `{"tunneling": {"proxy": {"websocket": {"ping_period_ms": 0}}}}`, "out of range"},
		{"empty string", `{"tunneling": {"proxy": {"default_bind_address": ""}}}`, "is empty"},
		{"format without %s", `{"tunneling": {"proxy": {"endpoint_format": "x.example"}}}`, "exactly one %s"},
		{"overrides not object", `{"tunneling": {"proxy": {"region_endpoint_overrides": "x"}}}`, "must be an object mapping"},
		{"override not host", `{"tunneling": {"proxy": {"region_endpoint_overrides": {"r": "a b"}}}}`, "not a host"},
		{"override object", `{"tunneling": {"proxy": {"region_endpoint_overrides": {"r": {}}}}}`, "must be a host name"},
		{"too deep", strings.Repeat("[", 100) + strings.Repeat("]", 100), "nested too deeply"},
		{"too large", `{"a": "` + strings.Repeat("x", MaxSettingsFileSize) + `"}`, "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := custom()
			before := custom()
			err := LoadSettingsJSON(strings.NewReader(tt.in), &s)
			if !errors.Is(err, ErrSettings) {
				t.Fatalf("err = %v, want ErrSettings", err)
			}
			checkOneLine(t, err)
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("err = %q, want it to contain %q", err, tt.msg)
			}
			if diff := cmp.Diff(before, s); diff != "" {
				t.Errorf("settings changed on error:\n%s", diff)
			}
		})
	}
}

func TestBoostEscape(t *testing.T) {
	s := DefaultSettings()
	s.DefaultBindAddress = "a/b\"c\\d\n\t\x01é"
	b, _ := s.MarshalJSON()
	if want := `"default_bind_address": "a\/b\"c\\d\n\t\u0001é",`; !bytes.Contains(b, []byte(want)) {
		t.Errorf("escaping: got\n%s\nwant a line %s", b, want)
	}
	got := DefaultSettings()
	if err := LoadSettingsJSON(bytes.NewReader(b), &got); err != nil {
		t.Fatal(err)
	}
	if got.DefaultBindAddress != s.DefaultBindAddress {
		t.Errorf("read back %q, want %q", got.DefaultBindAddress, s.DefaultBindAddress)
	}
}

func FuzzLoadSettingsJSON(f *testing.F) {
	f.Add(referenceDefaults)
	f.Add(`{"tunneling": {"proxy": {"tcp": {"connection_retry_count": -1}, "region_endpoint_overrides": {"x": "y"}}}}`)
	f.Add(`{"tunneling": {"proxy": {"message": "x"}}}`)
	f.Fuzz(func(t *testing.T, in string) {
		s := DefaultSettings()
		if err := LoadSettingsJSON(strings.NewReader(in), &s); err != nil {
			checkOneLine(t, err)
			return
		}
		b, _ := s.MarshalJSON()
		again := DefaultSettings()
		if err := LoadSettingsJSON(bytes.NewReader(b), &again); err != nil {
			t.Fatalf("re-reading our own output: %v\n%s", err, b)
		}
		if diff := cmp.Diff(s, again); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}
