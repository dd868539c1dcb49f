package api

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// TestInvoke runs operations in process as the console does: the same
// operation code as the HTTP API (a tunnel opened by Invoke is described
// over HTTP and the other way round), errors as *OpError with the API's
// code and message, and every change logged with the principal and the
// caller, never a token.
func TestInvoke(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	b, err := e.srv.Invoke(ctx, "OpenTunnel", []byte(`{"destinationConfig":{"thingName":"pi","services":["SSH"]}}`), "AKIDCONSOLE", "console")
	if err != nil {
		t.Fatalf("OpenTunnel: %v", err)
	}
	e.collectTokens(b)
	var open openTunnelOut
	if err := json.Unmarshal(b, &open); err != nil || open.TunnelID == "" || open.SourceAccessToken == "" {
		t.Fatalf("OpenTunnel answer %s: %v", b, err)
	}
	if r := e.call("DescribeTunnel", map[string]string{"tunnelId": open.TunnelID}); r.status != 200 || !strings.Contains(string(r.body), `"thingName":"pi"`) {
		t.Errorf("described over HTTP: %d %s", r.status, r.body)
	}
	if _, err := e.srv.Invoke(ctx, "CloseTunnel", []byte(`{"tunnelId":"`+open.TunnelID+`","delete":true}`), "AKIDCONSOLE", "console"); err != nil {
		t.Fatalf("CloseTunnel: %v", err)
	}
	_, err = e.srv.Invoke(ctx, "DescribeTunnel", []byte(`{"tunnelId":"`+open.TunnelID+`"}`), "AKIDCONSOLE", "console")
	var oe *OpError
	if !errors.As(err, &oe) || oe.Code != CodeResourceNotFound || oe.Status != 404 && oe.Status != 400 || oe.Message == "" {
		t.Errorf("DescribeTunnel of a deleted tunnel: %v", err)
	}
	if _, err := e.srv.Invoke(ctx, "DeleteEverything", nil, "AKIDCONSOLE", "console"); !errors.As(err, &oe) || oe.Code != CodeUnknownOperation {
		t.Errorf("unknown operation: %v", err)
	}
	if _, err := e.srv.Invoke(ctx, "OpenTunnel", []byte(`{"timeoutConfig":{"maxLifetimeTimeoutMinutes":0}}`), "AKIDCONSOLE", "console"); !errors.As(err, &oe) || oe.Code != CodeValidation {
		t.Errorf("invalid OpenTunnel: %v", err)
	}
	logs := e.logs.String()
	for _, want := range []string{"op=OpenTunnel via=console access_key_id=AKIDCONSOLE", "op=CloseTunnel via=console access_key_id=AKIDCONSOLE"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
}
