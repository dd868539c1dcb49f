package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseMappings(t *testing.T) {
	tests := []struct {
		name  string
		mode  Mode
		in    string
		want  []Mapping
		err   error
		inMsg string
	}{
		// Source forms.
		{name: "src port", mode: ModeSource, in: "5555", want: []Mapping{{Port: 5555}}},
		{name: "src port trimmed", mode: ModeSource, in: " 5555 ", want: []Mapping{{Port: 5555}}},
		{name: "src port 0 picks a free port", mode: ModeSource, in: "0", want: []Mapping{{Port: 0}}},
		{name: "src max port", mode: ModeSource, in: "65535", want: []Mapping{{Port: 65535}}},
		{name: "src one named", mode: ModeSource, in: "SSH1=5555", want: []Mapping{{ServiceID: "SSH1", Port: 5555}}},
		{name: "src two named", mode: ModeSource, in: "SSH1=5555,HTTP1=8080", want: []Mapping{{ServiceID: "SSH1", Port: 5555}, {ServiceID: "HTTP1", Port: 8080}}},
		{name: "src spaces trimmed", mode: ModeSource, in: " SSH1 = 5555 , HTTP1= 8080", want: []Mapping{{ServiceID: "SSH1", Port: 5555}, {ServiceID: "HTTP1", Port: 8080}}},
		{name: "src comma run compressed", mode: ModeSource, in: "SSH1=5555,,,HTTP1=8080", want: []Mapping{{ServiceID: "SSH1", Port: 5555}, {ServiceID: "HTTP1", Port: 8080}}},
		{name: "src leading and trailing comma", mode: ModeSource, in: ",SSH1=5555,", want: []Mapping{{ServiceID: "SSH1", Port: 5555}}},
		{name: "src equals run compressed", mode: ModeSource, in: "SSH1==5555", want: []Mapping{{ServiceID: "SSH1", Port: 5555}}},
		{name: "src host kept but ignored", mode: ModeSource, in: "SSH1=127.0.0.2:5555", want: []Mapping{{ServiceID: "SSH1", Host: "127.0.0.2", Port: 5555}}},
		{name: "src anonymous host", mode: ModeSource, in: "LocalHost:5555", want: []Mapping{{Host: "localhost", Port: 5555}}},
		{name: "src bracketed v6", mode: ModeSource, in: "SSH1=[::1]:5555", want: []Mapping{{ServiceID: "SSH1", Host: "::1", Port: 5555}}},
		{name: "src bare v6 as the reference splits it", mode: ModeSource, in: "::1:5555", want: []Mapping{{Host: "::1", Port: 5555}}},
		{name: "src AWS service ID characters", mode: ModeSource, in: "a:b_c-D9=1", want: []Mapping{{ServiceID: "a:b_c-D9", Port: 1}}},
		{name: "empty value means no mapping", mode: ModeSource, in: "", want: nil},

		// Destination forms.
		{name: "dst port", mode: ModeDestination, in: "22", want: []Mapping{{Port: 22}}},
		{name: "dst localhost:port", mode: ModeDestination, in: "localhost:22", want: []Mapping{{Host: "localhost", Port: 22}}},
		{name: "dst host lower-cased", mode: ModeDestination, in: "MyHost.Example:22", want: []Mapping{{Host: "myhost.example", Port: 22}}},
		{name: "dst ip:port", mode: ModeDestination, in: "10.0.0.1:80", want: []Mapping{{Host: "10.0.0.1", Port: 80}}},
		{name: "dst named mixed targets", mode: ModeDestination, in: "SSH1=22,HTTP1=10.0.0.1:80", want: []Mapping{{ServiceID: "SSH1", Port: 22}, {ServiceID: "HTTP1", Host: "10.0.0.1", Port: 80}}},
		{name: "dst bracketed v6", mode: ModeDestination, in: "SSH1=[::1]:22", want: []Mapping{{ServiceID: "SSH1", Host: "::1", Port: 22}}},
		{name: "dst unix socket", mode: ModeDestination, in: "SSH1=/run/ssh-unix-local/socket", want: []Mapping{{ServiceID: "SSH1", Unix: "/run/ssh-unix-local/socket"}}},
		{name: "dst relative unix socket keeps case", mode: ModeDestination, in: "./Local.sock", want: []Mapping{{Unix: "./Local.sock"}}},

		// Errors.
		{name: "two anonymous ports", mode: ModeSource, in: "5555,6666", err: ErrMapping, inMsg: "service IDs"},
		{name: "anonymous then named", mode: ModeSource, in: "5555,SSH1=6666", err: ErrMixedMappings, inMsg: `"5555" has no service ID`},
		{name: "named then anonymous", mode: ModeDestination, in: "SSH1=22,80", err: ErrMixedMappings},
		{name: "stray comma after port", mode: ModeSource, in: "5555,", err: ErrMapping, inMsg: "stray comma"},
		{name: "missing port", mode: ModeSource, in: "SSH1=", err: ErrMapping, inMsg: "needs both"},
		{name: "missing service ID", mode: ModeSource, in: "=5555", err: ErrMapping},
		{name: "two equals signs", mode: ModeSource, in: "SSH1=5555=6", err: ErrMapping, inMsg: "more than one '='"},
		{name: "duplicate service", mode: ModeSource, in: "SSH1=5555,SSH1=6666", err: ErrDuplicateService, inMsg: "SSH1 is mapped twice"},
		{name: "duplicate service dst", mode: ModeDestination, in: "A=1,B=2,A=3", err: ErrDuplicateService},
		{name: "port too big", mode: ModeSource, in: "65536", err: ErrPort, inMsg: "0..65535"},
		{name: "named port too big", mode: ModeDestination, in: "SSH1=70000", err: ErrPort, inMsg: "1..65535"},
		{name: "dst port 0", mode: ModeDestination, in: "0", err: ErrPort},
		{name: "dst host port 0", mode: ModeDestination, in: "localhost:0", err: ErrPort},
		{name: "not a number", mode: ModeSource, in: "abc", err: ErrMapping, inMsg: "not a number"},
		{name: "negative", mode: ModeSource, in: "-1", err: ErrMapping},
		{name: "blank", mode: ModeSource, in: "  ", err: ErrMapping},
		{name: "space in service ID", mode: ModeSource, in: "SSH 1=5555", err: ErrMapping, inMsg: "letters, digits"},
		{name: "dst bare v6", mode: ModeDestination, in: "::1:22", err: ErrMapping, inMsg: "brackets"},
		{name: "dst empty port", mode: ModeDestination, in: "host:", err: ErrMapping},
		{name: "dst empty host", mode: ModeDestination, in: ":22", err: ErrMapping},
		{name: "dst named port", mode: ModeDestination, in: "host:ssh", err: ErrMapping},
		{name: "dst v6 without port", mode: ModeDestination, in: "[::1]", err: ErrMapping, inMsg: "missing port"},
		{name: "dst bad v6", mode: ModeDestination, in: "[zz]:22", err: ErrMapping},
		{name: "dst v4 in brackets", mode: ModeDestination, in: "[1.2.3.4]:22", err: ErrMapping},
		{name: "src junk host", mode: ModeSource, in: "a b:22", err: ErrMapping},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseMappings(tt.in, tt.mode)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err = %v, want %v", err, tt.err)
				}
				checkOneLine(t, err)
				if !strings.Contains(err.Error(), tt.inMsg) {
					t.Errorf("err = %q, want it to contain %q", err, tt.inMsg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("mappings (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMappingAddress(t *testing.T) {
	tests := []struct {
		m             Mapping
		network, addr string
		str           string
	}{
		{Mapping{ServiceID: "SSH1", Host: "127.0.0.1", Port: 22}, "tcp", "127.0.0.1:22", "SSH1=127.0.0.1:22"},
		{Mapping{Host: "::1", Port: 22}, "tcp", "[::1]:22", "[::1]:22"},
		{Mapping{Port: 5555}, "tcp", ":5555", "5555"},
		{Mapping{ServiceID: "X", Unix: "/run/x.sock"}, "unix", "/run/x.sock", "X=/run/x.sock"},
	}
	for _, tt := range tests {
		if got := tt.m.Network(); got != tt.network {
			t.Errorf("%+v Network = %q, want %q", tt.m, got, tt.network)
		}
		if got := tt.m.Address(); got != tt.addr {
			t.Errorf("%+v Address = %q, want %q", tt.m, got, tt.addr)
		}
		if got := tt.m.String(); got != tt.str {
			t.Errorf("%+v String = %q, want %q", tt.m, got, tt.str)
		}
	}
}

func TestSplitCompress(t *testing.T) {
	tests := map[string][]string{
		"":      {""},
		"a":     {"a"},
		"a,b":   {"a", "b"},
		"a,,b":  {"a", "b"},
		"a,":    {"a", ""},
		"a,,":   {"a", ""},
		",a":    {"", "a"},
		",,a":   {"", "a"},
		",":     {"", ""},
		",,,,,": {"", ""},
	}
	for in, want := range tests {
		if got := splitCompress(in, ","); !cmp.Equal(got, want) {
			t.Errorf("splitCompress(%q) = %q, want %q", in, got, want)
		}
	}
}

// checkOneLine fails unless err is a single line wrapping a sentinel.
func checkOneLine(t *testing.T, err error) {
	t.Helper()
	if strings.ContainsAny(err.Error(), "\n\r") {
		t.Errorf("error is not one line: %q", err)
	}
	if !strings.HasPrefix(err.Error(), "config: ") {
		t.Errorf("error lacks the package prefix: %q", err)
	}
}

func FuzzParseMappings(f *testing.F) {
	for _, s := range []string{"5555", "SSH1=5555,HTTP1=8080", "SSH1=127.0.0.2:5555", "localhost:22",
		"SSH1=22,HTTP1=10.0.0.1:80", "SSH1=[::1]:22", "A=/run/x.sock", ",,A==1,", "5555,", "::1:22", "[fe80::1%eth0]:1"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, in string, dest bool) {
		mode := ModeSource
		if dest {
			mode = ModeDestination
		}
		ms, err := ParseMappings(in, mode)
		if err != nil {
			checkOneLine(t, err)
			return
		}
		// What parses formats back to itself.
		again, err := ParseMappings(FormatMappings(ms), mode)
		if err != nil {
			t.Fatalf("%q -> %q: %v", in, FormatMappings(ms), err)
		}
		if diff := cmp.Diff(ms, again); diff != "" {
			t.Fatalf("%q -> %q round trip (-first +second):\n%s", in, FormatMappings(ms), diff)
		}
		for _, m := range ms {
			if m.Port < 0 || m.Port > 65535 || dest && m.Port == 0 && m.Unix == "" {
				t.Fatalf("%q: bad port in %+v", in, m)
			}
		}
	})
}
