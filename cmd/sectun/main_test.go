package main

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
)

func TestRunErrors(t *testing.T) {
	noCreds := map[string]string{"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(t.TempDir(), "none")}
	cases := []struct {
		name string
		args []string
		err  string
	}{
		{"no command", nil, "no command"},
		{"unknown command", []string{"ssh"}, "unknown command"},
		{"no service", []string{"connect", "--thing", "t"}, "--service"},
		{"bad service", []string{"connect", "--service", "SSH=x"}, "--service"},
		{"bad destination type", []string{"connect", "--service", "SSH", "--destination-type", "V4"}, "--destination-type"},
		{"V1 with two services", []string{"connect", "--service", "SSH", "--service", "HTTP", "--destination-type", "V1"}, "single service"},
		{"no credentials", []string{"connect", "--service", "SSH"}, "no AWS credentials"},
		{"extra argument", []string{"connect", "--service", "SSH", "now"}, "unexpected argument"},
		{"bad log level", []string{"connect", "--service", "SSH", "--log-level", "x"}, "--log-level"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := run(context.Background(), tc.args, func(k string) string { return noCreds[k] }, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("run %q: %v; want error containing %q", tc.args, err, tc.err)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	var out strings.Builder
	if err := run(context.Background(), []string{"connect", "--help"}, func(string) string { return "" }, io.Discard, &out); err == nil ||
		!strings.Contains(out.String(), "--close-on-exit") {
		t.Fatalf("connect --help: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"version"}, nil, &out, io.Discard); err != nil || !strings.HasPrefix(out.String(), "sectun ") {
		t.Fatalf("version: %v %q", err, out.String())
	}
}
