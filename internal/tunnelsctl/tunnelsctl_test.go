package tunnelsctl

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sectun/sectun/internal/operator"
	"github.com/sectun/sectun/internal/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestListDescribeClose runs the three commands against a real tunneld
// (TLS with its development CA, signed requests), finding everything
// from its data directory and a --config file as the package's unit has.
func TestListDescribeClose(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	srv, err := server.New(ctx, server.Config{Listen: "127.0.0.1:0", DataDir: dir, MQTT: server.MQTTConfig{Off: true}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	conf := filepath.Join(t.TempDir(), "tunneld.conf")
	if err := os.WriteFile(conf, []byte("# comment\nlisten = "+srv.Addr().String()+"\nregion = us-east-1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"--config", conf, "--data-dir", dir}
	call := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := Run(ctx, append(args, base...), &out, &errOut)
		return out.String(), err
	}
	if out, err := call("list"); err != nil || strings.Count(out, "\n") != 1 {
		t.Fatalf("empty list: %v %q", err, out)
	}
	// Open one with the operator client, as the AWS CLI would.
	creds, err := operator.LoadCredentials("", func(k string) string {
		if k == "AWS_SHARED_CREDENTIALS_FILE" {
			return srv.CredentialsPath()
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range []string{"first", "second"} {
		c := &operator.Client{Endpoint: srv.URL(), Region: "us-east-1", Credentials: creds, HTTP: httpClient(t, srv.CAPath())}
		o, err := c.OpenTunnel(ctx, operator.OpenTunnelInput{Description: d, DestinationConfig: &operator.DestinationConfig{Services: []string{"SSH"}}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, o.TunnelID)
	}
	out, err := call("list")
	if err != nil || !strings.Contains(out, ids[0]) || !strings.Contains(out, ids[1]) || !strings.Contains(out, "OPEN") || !strings.Contains(out, "second") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	out, err = call("describe", ids[0])
	if err != nil || !strings.Contains(out, `"tunnelId": "`+ids[0]+`"`) || !strings.Contains(out, `"description": "first"`) {
		t.Fatalf("describe: %v\n%s", err, out)
	}
	if out, err = call("close", ids[0]); err != nil || !strings.Contains(out, "closed "+ids[0]) {
		t.Fatalf("close: %v %q", err, out)
	}
	out, err = call("list", "--status", "closed")
	if err != nil || !strings.Contains(out, ids[0]) || strings.Contains(out, ids[1]) {
		t.Fatalf("list --status closed: %v\n%s", err, out)
	}
	out, err = call("list", "--status", "OPEN", "--json")
	if err != nil || !strings.Contains(out, `"tunnelSummaries"`) || strings.Contains(out, ids[0]) || !strings.Contains(out, ids[1]) {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	// An unknown tunnel is the API's error, said clearly.
	_, err = call("describe", "00000000-0000-0000-0000-000000000000")
	var apiErr *operator.APIError
	if !errors.As(err, &apiErr) || apiErr.Code != "ResourceNotFoundException" {
		t.Errorf("describe unknown: %v", err)
	}
	// A wrong key is refused by tunneld.
	bad := filepath.Join(t.TempDir(), "creds")
	os.WriteFile(bad, []byte("[default]\naws_access_key_id = AKIAXXXXXXXXXXXXXXXX\naws_secret_access_key = nope\n"), 0o600)
	if _, err := call("list", "--credentials-file", bad); !errors.As(err, &apiErr) || apiErr.StatusCode != 403 {
		t.Errorf("wrong key: %v", err)
	}
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "aws-credentials"), []byte("[default]\naws_access_key_id = AKIA1\naws_secret_access_key = x\n"), 0o600)
	for _, args := range [][]string{{}, {"describe"}, {"close", "a", "b"}, {"frob"}, {"list", "--status", "maybe"}} {
		var out, errOut bytes.Buffer
		err := Run(context.Background(), append(args, "--data-dir", dir), &out, &errOut)
		if !errors.Is(err, ErrUsage) {
			t.Errorf("%v: %v, want ErrUsage", args, err)
		}
	}
	// No credentials: the error says where it looked.
	var out, errOut bytes.Buffer
	err := Run(context.Background(), []string{"list", "--data-dir", t.TempDir()}, &out, &errOut)
	if !errors.Is(err, operator.ErrNoCredentials) || !strings.Contains(err.Error(), "aws-credentials") {
		t.Errorf("no credentials: %v", err)
	}
}

func TestEndpointFor(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:8443":           "https://127.0.0.1:8443",
		"0.0.0.0:443":              "https://127.0.0.1:443",
		":9000":                    "https://127.0.0.1:9000",
		"[::]:8443":                "https://127.0.0.1:8443",
		"[::1]:8443":               "https://[::1]:8443",
		"tunnels.example.com:8443": "https://tunnels.example.com:8443",
	} {
		if got := endpointFor(in, false); got != want {
			t.Errorf("endpointFor(%q) = %q, want %q", in, got, want)
		}
	}
	if got := endpointFor("127.0.0.1:80", true); got != "http://127.0.0.1:80" {
		t.Errorf("plaintext: %q", got)
	}
}

func httpClient(t *testing.T, caPath string) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(caPath)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return operator.NewHTTPClient(&tls.Config{RootCAs: pool})
}
