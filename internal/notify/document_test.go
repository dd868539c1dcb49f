package notify

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestMarshalExact(t *testing.T) {
	tests := []struct {
		name string
		n    Notification
		want string
	}{
		{
			name: "services",
			n:    Notification{ThingName: "dev-1", Token: "AQGAAXi-tok_en", Region: "us-east-1", Services: []string{"SSH1", "HTTP1"}},
			want: `{"clientAccessToken":"AQGAAXi-tok_en","clientMode":"destination","region":"us-east-1","services":["SSH1","HTTP1"]}`,
		},
		{
			name: "v1 no services",
			n:    Notification{ThingName: "dev-1", Token: "t", Region: "local"},
			want: `{"clientAccessToken":"t","clientMode":"destination","region":"local","services":[]}`,
		},
		{
			name: "no html escaping",
			n:    Notification{ThingName: "a:b_c", Token: "a<b>&c", Region: "eu-west-3", Services: []string{"S"}},
			want: `{"clientAccessToken":"a<b>&c","clientMode":"destination","region":"eu-west-3","services":["S"]}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.n.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Fatalf("got  %s\nwant %s", got, tt.want)
			}
			d, err := ParseDocument(got)
			if err != nil {
				t.Fatalf("ParseDocument(Marshal()) = %v", err)
			}
			if diff := cmp.Diff(tt.n.Document(), d); diff != "" {
				t.Fatalf("round trip (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNotificationValidate(t *testing.T) {
	ok := Notification{ThingName: "dev", Token: "tok", Region: "us-east-1", Services: []string{"SSH1"}}
	tests := []struct {
		name string
		mut  func(*Notification)
	}{
		{"empty thing", func(n *Notification) { n.ThingName = "" }},
		{"thing with slash", func(n *Notification) { n.ThingName = "a/b" }},
		{"thing with plus", func(n *Notification) { n.ThingName = "+" }},
		{"thing with hash", func(n *Notification) { n.ThingName = "#" }},
		{"thing too long", func(n *Notification) { n.ThingName = strings.Repeat("a", 129) }},
		{"empty token", func(n *Notification) { n.Token = "" }},
		{"token with newline", func(n *Notification) { n.Token = "a\r\nX-Evil: 1" }},
		{"token too long", func(n *Notification) { n.Token = strings.Repeat("a", MaxTokenLength+1) }},
		{"empty region", func(n *Notification) { n.Region = "" }},
		{"region with dot", func(n *Notification) { n.Region = "evil.com/x" }},
		{"empty service", func(n *Notification) { n.Services = []string{""} }},
		{"duplicate service", func(n *Notification) { n.Services = []string{"SSH1", "SSH1"} }},
		{"service with space", func(n *Notification) { n.Services = []string{"SSH 1"} }},
	}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid notification: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := ok
			n.Services = append([]string(nil), ok.Services...)
			tt.mut(&n)
			err := n.Validate()
			if !errors.Is(err, ErrInvalidNotification) {
				t.Fatalf("Validate() = %v, want ErrInvalidNotification", err)
			}
			if n.Token != "" && strings.Contains(err.Error(), n.Token) {
				t.Fatalf("error leaks the token: %v", err)
			}
			if _, err := n.Marshal(); !errors.Is(err, ErrInvalidNotification) {
				t.Fatalf("Marshal() = %v, want ErrInvalidNotification", err)
			}
		})
	}
}

func TestParseDocument(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Document
		wantErr string // substring; "" = success
	}{
		{name: "aws sample", in: `{"clientAccessToken":"tok","clientMode":"destination","region":"us-east-1","services":["SSH"]}`,
			want: Document{"tok", "destination", "us-east-1", []string{"SSH"}}},
		{name: "pretty and reordered", in: "\n {\n \"services\": [\"A\", \"B\"],\n \"region\": \"r\",\n \"clientMode\": \"destination\",\n \"clientAccessToken\": \"t\"\n}\n",
			want: Document{"t", "destination", "r", []string{"A", "B"}}},
		{name: "services missing", in: `{"clientAccessToken":"t","clientMode":"destination","region":"r"}`,
			want: Document{"t", "destination", "r", []string{}}},
		{name: "services null", in: `{"clientAccessToken":"t","clientMode":"destination","region":"r","services":null}`,
			want: Document{"t", "destination", "r", []string{}}},
		{name: "services empty", in: `{"clientAccessToken":"t","clientMode":"destination","region":"r","services":[]}`,
			want: Document{"t", "destination", "r", []string{}}},
		{name: "unknown field ignored", in: `{"clientAccessToken":"t","clientMode":"destination","region":"r","services":[],"extra":{"a":1}}`,
			want: Document{"t", "destination", "r", []string{}}},

		{name: "empty", in: ``, wantErr: "not a JSON object"},
		{name: "null", in: `null`, wantErr: "not a JSON object"},
		{name: "array", in: `[]`, wantErr: "not a JSON object"},
		{name: "truncated", in: `{"clientAccessToken":"t"`, wantErr: "unexpected end"},
		{name: "trailing garbage", in: `{"clientAccessToken":"t","clientMode":"destination","region":"r"} x`, wantErr: "invalid character"},
		{name: "source mode", in: `{"clientAccessToken":"t","clientMode":"source","region":"r"}`, wantErr: `clientMode is "source"`},
		{name: "mode missing", in: `{"clientAccessToken":"t","region":"r"}`, wantErr: `clientMode is ""`},
		{name: "token missing", in: `{"clientMode":"destination","region":"r"}`, wantErr: "empty clientAccessToken"},
		{name: "token not string", in: `{"clientAccessToken":5,"clientMode":"destination","region":"r"}`, wantErr: "cannot unmarshal"},
		{name: "token with CRLF", in: `{"clientAccessToken":"a\r\nb","clientMode":"destination","region":"r"}`, wantErr: "visible ASCII"},
		{name: "region missing", in: `{"clientAccessToken":"t","clientMode":"destination"}`, wantErr: "empty region"},
		{name: "region host injection", in: `{"clientAccessToken":"t","clientMode":"destination","region":"evil.example/"}`, wantErr: "region"},
		{name: "services not array", in: `{"clientAccessToken":"t","clientMode":"destination","region":"r","services":"SSH"}`, wantErr: "cannot unmarshal"},
		{name: "service empty", in: `{"clientAccessToken":"t","clientMode":"destination","region":"r","services":[""]}`, wantErr: "service ID"},
		{name: "service duplicate", in: `{"clientAccessToken":"t","clientMode":"destination","region":"r","services":["A","A"]}`, wantErr: "twice"},
		{name: "too big", in: `{"x":"` + strings.Repeat("a", MaxDocumentSize) + `"}`, wantErr: "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseDocument([]byte(tt.in))
			if tt.wantErr != "" {
				if !errors.Is(err, ErrInvalidDocument) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseDocument() error = %v, want ErrInvalidDocument containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestNotifyTopic(t *testing.T) {
	if got, want := NotifyTopic("", "dev"), "$aws/things/dev/tunnels/notify"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got, want := NotifyTopic("sectun", "dev"), "sectun/things/dev/tunnels/notify"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	for p, want := range map[string]bool{"$aws": true, "a/b": true, "": false, "a/": false, "/a": false, "a+": false, "#": false} {
		if ValidTopicPrefix(p) != want {
			t.Errorf("ValidTopicPrefix(%q) = %v", p, !want)
		}
	}
}

func FuzzParseDocument(f *testing.F) {
	f.Add([]byte(`{"clientAccessToken":"tok","clientMode":"destination","region":"us-east-1","services":["SSH1"]}`))
	f.Add([]byte(`{"clientAccessToken":"t","clientMode":"destination","region":"r"}`))
	f.Add([]byte(`{"clientAccessToken":"t","clientMode":"source","region":"r","services":null}`))
	f.Add([]byte(`{"services":["A","A"]}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"clientAccessToken":"\u0000"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDocument(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidDocument) {
				t.Fatalf("error does not wrap ErrInvalidDocument: %v", err)
			}
			return
		}
		// An accepted document is valid, re-encodes, and parses back equal.
		n := Notification{ThingName: "t", Token: d.ClientAccessToken, Region: d.Region, Services: d.Services}
		if err := n.Validate(); err != nil {
			t.Fatalf("accepted %q but it does not validate: %v", b, err)
		}
		out, err := d.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		d2, err := ParseDocument(out)
		if err != nil {
			t.Fatalf("re-encoded %s does not parse: %v", out, err)
		}
		if diff := cmp.Diff(d, d2); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
		var m map[string]any
		if err := json.Unmarshal(out, &m); err != nil || len(m) != 4 {
			t.Fatalf("re-encoded %s: %v, %d keys", out, err, len(m))
		}
	})
}
