package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sectun/sectun/tunnel"
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

// TestConnectCAHint: an API endpoint whose certificate does not verify
// (no --ca) fails with a hint naming --ca.
func TestConnectCAHint(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	creds := filepath.Join(t.TempDir(), "credentials")
	if err := os.WriteFile(creds, []byte("[default]\naws_access_key_id = AKID\naws_secret_access_key = secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"AWS_SHARED_CREDENTIALS_FILE": creds}
	err := run(context.Background(), []string{"connect", "--service", "SSH", "--endpoint-url", srv.URL}, func(k string) string { return env[k] }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--ca FILE") {
		t.Fatalf("run: %v; want a hint naming --ca", err)
	}
	if h := connectHint(fmt.Errorf("x: %w", tunnel.ErrTLSNotSpoken)); !strings.Contains(h, "http://") {
		t.Fatalf("scheme hint %q", h)
	}
}
