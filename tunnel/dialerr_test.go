package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sectun/sectun/tunnel/internal/fakeservice"
)

// TestEndpointMistakes: a wrong scheme or a missing CA is recognized,
// named in terms of Config (no program's flags), and ends Connect at once
// instead of being retried until the deadline.
func TestEndpointMistakes(t *testing.T) {
	_, cert := testPKI(t)
	tlsSvc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1"}, TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	plainSvc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1"}})
	for _, tc := range []struct {
		name     string
		svc      *fakeservice.Service
		endpoint string
		tls      *tls.Config
		want     error
		say      string
	}{
		{"ws against TLS", tlsSvc, "ws://" + strings.TrimPrefix(tlsSvc.URL, "wss://"), nil, ErrTLSRequired, "use a wss:// Endpoint"},
		{"wss against plain", plainSvc, "wss://" + strings.TrimPrefix(plainSvc.URL, "ws://"), nil, ErrTLSNotSpoken, "use a ws:// Endpoint"},
		{"missing CA", tlsSvc, tlsSvc.URL, nil, ErrCertificateUntrusted, "Config.TLS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := baseConfig(t, tc.svc, ModeSource)
			cfg.Endpoint = tc.endpoint
			cfg.TLS = tc.tls
			cfg.ReconnectMin, cfg.ReconnectMax = 50*time.Millisecond, 50*time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			start := time.Now()
			_, err := Connect(ctx, cfg)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Connect: %v, want %v", err, tc.want)
			}
			if ctx.Err() != nil || time.Since(start) > 5*time.Second {
				t.Fatalf("Connect retried for %v: the error is permanent", time.Since(start))
			}
			if !strings.Contains(err.Error(), tc.say) {
				t.Errorf("error %q does not say %q", err, tc.say)
			}
			for _, flag := range []string{"-c", "-k", "--ca", "--tunnel-ca"} {
				if strings.Contains(err.Error(), " "+flag+" ") || strings.Contains(err.Error(), "("+flag+")") {
					t.Errorf("library error names the flag %s: %v", flag, err)
				}
			}
		})
	}
}
