package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/ratelimit"
)

// TestOperatorLogs reads the log for what operators need to see: plain
// HTTP refused on the TLS port (answered with a 400 that says to use
// https://), failed TLS handshakes, an address blocked by the failure
// limiters (once per block), all rate-limited, and the shutdown (start,
// what it waited for, done).
func TestOperatorLogs(t *testing.T) {
	var logs syncWriter
	cfg := Config{
		Listen:                "127.0.0.1:0",
		DataDir:               t.TempDir(),
		MQTT:                  MQTTConfig{Off: true},
		Logger:                slogTo(&logs),
		HandshakeFailureLimit: ratelimit.Config{PerMinute: 1, Burst: 3},
		APIFailureLimit:       ratelimit.Config{PerMinute: 1, Burst: 3},
	}
	srv, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	clock := time.Now()
	srv.connLog.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	addr := srv.Addr().String()

	// Plain HTTP on the TLS port: answered, logged, at most 10 a minute.
	plain := func() string {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
		b, _ := io.ReadAll(c)
		return string(b)
	}
	for i := range 15 {
		if got := plain(); !strings.HasPrefix(got, "HTTP/1.0 400 Bad Request") || !strings.Contains(got, "https://") {
			t.Fatalf("plain HTTP %d answered %q; want a 400 saying to use https://", i, got)
		}
	}
	waitLog(t, &logs, "refused plain HTTP on the TLS port", 10)
	mu.Lock()
	clock = clock.Add(time.Minute)
	mu.Unlock()
	plain()
	waitLog(t, &logs, "suppressed_before=5", 1)
	if n := strings.Count(logs.String(), "refused plain HTTP on the TLS port"); n != 11 {
		t.Errorf("plain HTTP logged %d times, want 10 + 1 after a minute", n)
	}

	// A TLS client that does not trust the certificate aborts the
	// handshake: logged with the address.
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, &tls.Config{ServerName: "localhost"})
	if err == nil {
		c.Close()
		t.Fatal("handshake with an untrusted certificate succeeded")
	}
	waitLog(t, &logs, `msg="TLS handshake failed"`, 1)
	if !strings.Contains(logs.String(), "bad certificate") && !strings.Contains(logs.String(), "unknown certificate authority") {
		t.Errorf("the failed handshake's log does not say why:\n%s", logs.String())
	}

	// An address blocked by each failure limiter: logged once per block.
	pool := tlsPool(t, srv)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer client.CloseIdleConnections()
	for range 8 {
		resp, err := client.Get(srv.URL() + "/tunnel?local-proxy-mode=source")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		req, _ := http.NewRequest(http.MethodPost, srv.URL()+"/", strings.NewReader("{}"))
		req.Header.Set("X-Amz-Target", "IoTSecuredTunneling.ListTunnels")
		if resp, err = client.Do(req); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	waitLog(t, &logs, "too many failed handshakes: refusing the address", 1)
	waitLog(t, &logs, "too many api requests with failed authentication: refusing the address", 1)
	for _, m := range []string{"too many failed handshakes: refusing the address", "too many api requests with failed authentication: refusing the address"} {
		if n := strings.Count(logs.String(), m); n != 1 {
			t.Errorf("%q logged %d times during one block, want once", m, n)
		}
	}

	// Shutdown: start, what it waited for, done.
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	done <- nil
	for _, m := range []string{`msg="tunneld shutting down"`, "api_requests_in_flight=", `msg="shutdown: API requests finished"`, `msg="shutdown: tunnel connections dropped`, `msg="tunneld stopped"`} {
		if !strings.Contains(logs.String(), m) {
			t.Errorf("shutdown log lacks %q:\n%s", m, logs.String())
		}
	}
}

// waitLog waits until the log holds at least n lines containing s.
func waitLog(t *testing.T, logs *syncWriter, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(logs.String(), s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the log has %d lines with %q, want %d:\n%s", strings.Count(logs.String(), s), s, n, logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func tlsPool(t *testing.T, srv *Server) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(srv.CAPath())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b)
	return pool
}
