package config

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// parseCase is a row of a parser's table test: in parses to want, or
// fails with an error containing err.
type parseCase[T any] struct {
	name string
	in   string
	want []T
	err  string
}

// runParseCases runs parse on each case as a subtest.
func runParseCases[T any](t *testing.T, parse func([]byte) ([]T, error), tests []parseCase[T]) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parse([]byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(*new(T))); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseOptionsFile(t *testing.T) {
	tests := []parseCase[fileOption]{
		{name: "README example", in: "region = us-east-1\naccess-token = foobar\nsource-listen-port = 5000\n",
			want: []fileOption{{"region", "us-east-1", 1}, {"access-token", "foobar", 2}, {"source-listen-port", "5000", 3}}},
		{name: "comments, blanks, CRLF, tabs", in: "# header\r\n\r\n\tregion=us-west-2 # trailing\r\n  capath = /opt/rootca  \r\n",
			want: []fileOption{{"region", "us-west-2", 3}, {"capath", "/opt/rootca", 4}}},
		{name: "value with '=' and empty value", in: "a = b=c\nd =\n", want: []fileOption{{"a", "b=c", 1}, {"d", "", 2}}},
		{name: "section prefixes names", in: "[x]\na = 1\n[y.]\nb=2\n", want: []fileOption{{"x.a", "1", 2}, {"y.b", "2", 4}}},
		{name: "byte order mark", in: "\xef\xbb\xbfregion = r\n", want: []fileOption{{"region", "r", 1}}},
		{name: "empty file", in: "", want: nil},
		{name: "no equals", in: "region us-east-1\n", err: "line 1"},
		{name: "no name", in: "\n = x\n", err: "line 2: missing option name"},
		{name: "no name in section", in: "[s]\n=x\n", err: "missing option name"},
	}
	runParseCases(t, parseOptionsFile, tests)
}

func TestParseINI(t *testing.T) {
	tests := []parseCase[iniEntry]{
		{name: "README source example", in: "SSH1=3333\nSSH2=5555\n", want: []iniEntry{{"SSH1", "3333", 1}, {"SSH2", "5555", 2}}},
		{name: "README destination example", in: "SSH1=22\nSSH2=10.0.0.1:80\n", want: []iniEntry{{"SSH1", "22", 1}, {"SSH2", "10.0.0.1:80", 2}}},
		{name: "comments and spaces", in: "; c\n# c\n  SSH1 = 22 \r\n\n", want: []iniEntry{{"SSH1", "22", 3}}},
		{name: "no inline comments", in: "SSH1 = 22 ; not a comment\n", want: []iniEntry{{"SSH1", "22 ; not a comment", 1}}},
		{name: "keys in sections are not top level", in: "A=1\n[sec]\nB=2\nA=3\n", want: []iniEntry{{"A", "1", 1}}},
		{name: "empty section may reappear", in: "[s]\n[s]\nx=1\n", want: nil},
		{name: "no equals", in: "SSH1 22\n", err: "'=' character not found"},
		{name: "key expected", in: "=22\n", err: "key expected"},
		{name: "duplicate key", in: "A=1\nA=2\n", err: "duplicate key"},
		{name: "duplicate key in section", in: "[s]\nA=1\nA=2\n", err: "duplicate key"},
		{name: "duplicate section", in: "[s]\na=1\n[s]\n", err: "duplicate section"},
		{name: "key and section clash", in: "s=1\n[s]\n", err: "duplicate section"},
		{name: "unmatched bracket", in: "[s\n", err: "unmatched"},
	}
	runParseCases(t, parseINI, tests)
}

func FuzzParseOptionsFile(f *testing.F) {
	f.Add("region = us-east-1\naccess-token = foobar\nsource-listen-port = 5000\n")
	f.Add("# c\n[sec]\na=b=c # d\r\n")
	f.Add("\xef\xbb\xbf x \n")
	f.Fuzz(func(t *testing.T, in string) {
		opts, err := parseOptionsFile([]byte(in))
		if err != nil {
			if strings.ContainsAny(err.Error(), "\n\r") && !strings.Contains(in, "\r") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		// Writing the options back as name = value lines reads the same.
		var b strings.Builder
		for _, o := range opts {
			if o.name == "" || strings.ContainsAny(o.name+o.value, "#\n") {
				t.Fatalf("bad option %+v", o)
			}
			if strings.HasPrefix(o.name, "[") || strings.Contains(o.name, "=") || o.name != strings.Trim(o.name, " \t\r") {
				return // a [section] name can make a name that reads back differently
			}
			b.WriteString(o.name + " = " + o.value + "\n")
		}
		again, err := parseOptionsFile([]byte(b.String()))
		if err != nil {
			t.Fatalf("rewritten %q: %v", b.String(), err)
		}
		if len(again) != len(opts) {
			t.Fatalf("rewritten %q: %d options, want %d", b.String(), len(again), len(opts))
		}
		for i := range opts {
			if again[i].name != opts[i].name || again[i].value != opts[i].value {
				t.Fatalf("rewritten %q: %+v, want %+v", b.String(), again[i], opts[i])
			}
		}
	})
}

func FuzzParseINI(f *testing.F) {
	f.Add("SSH1=3333\nSSH2=5555\n")
	f.Add("; c\n# c\n[s]\nA = 1\n[t]\n")
	f.Add("A=1\n[s]\n[s]\nA=2")
	f.Fuzz(func(t *testing.T, in string) {
		entries, err := parseINI([]byte(in))
		if err != nil {
			return
		}
		var b strings.Builder
		seen := map[string]bool{}
		for _, e := range entries {
			if e.key == "" || strings.Contains(e.key, "=") || strings.ContainsAny(e.key+e.value, "\n") {
				t.Fatalf("bad entry %+v", e)
			}
			if seen[e.key] {
				t.Fatalf("duplicate key %q accepted", e.key)
			}
			seen[e.key] = true
			b.WriteString(e.key + "=" + e.value + "\n")
		}
		again, err := parseINI([]byte(b.String()))
		if err != nil {
			t.Fatalf("rewritten %q: %v", b.String(), err)
		}
		if len(again) != len(entries) {
			t.Fatalf("rewritten %q: %d entries, want %d", b.String(), len(again), len(entries))
		}
		for i := range entries {
			if again[i].key != entries[i].key || again[i].value != entries[i].value {
				t.Fatalf("rewritten %q: %+v, want %+v", b.String(), again[i], entries[i])
			}
		}
	})
}
