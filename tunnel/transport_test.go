package tunnel

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sectun/sectun/tunnel/internal/fakeservice"
)

// connectProxy is a tiny HTTP CONNECT proxy requiring basic auth.
type connectProxy struct {
	ln      net.Listener
	auth    string
	tunnels atomic.Int32
	refused atomic.Int32
	mu      sync.Mutex
	conns   []net.Conn
	wg      sync.WaitGroup
}

func startConnectProxy(t *testing.T, user, pass string) *connectProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &connectProxy{ln: ln, auth: "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.track(c)
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.serve(c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *connectProxy) track(c net.Conn) {
	p.mu.Lock()
	p.conns = append(p.conns, c)
	p.mu.Unlock()
}

func (p *connectProxy) serve(c net.Conn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(testTimeout))
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	if req.Method != http.MethodConnect || req.Header.Get("Proxy-Authorization") != p.auth {
		p.refused.Add(1)
		io.WriteString(c, "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n")
		return
	}
	up, err := net.DialTimeout("tcp", req.Host, testTimeout)
	if err != nil {
		io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		return
	}
	p.track(up)
	defer up.Close()
	p.tunnels.Add(1)
	io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
	done := make(chan struct{})
	go func() {
		io.Copy(up, br) // br holds anything read past the request
		up.Close()
		close(done)
	}()
	io.Copy(c, up)
	c.Close()
	<-done
}

func TestHTTPConnectProxy(t *testing.T) {
	proxy := startConnectProxy(t, "alice", "s3cret")
	_, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1"}}, func(s, d *Config) {
		s.Proxy = func(*url.URL) (*url.URL, error) {
			return &url.URL{Scheme: "http", Host: proxy.ln.Addr().String(), User: url.UserPassword("alice", "s3cret")}, nil
		}
	})
	if n := proxy.tunnels.Load(); n != 1 {
		t.Fatalf("%d proxied connections, want 1", n)
	}
	a, b := dialAccept(t, src, dst, "SSH1")
	writeAll(t, a, []byte("via proxy"))
	if got := readN(t, b, 9); string(got) != "via proxy" {
		t.Fatalf("got %q", got)
	}

	// Wrong credentials: the proxy refuses; the session keeps trying until
	// the context ends, and says why.
	svc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1"}})
	cfg := baseConfig(t, svc, ModeSource)
	cfg.Proxy = func(*url.URL) (*url.URL, error) {
		return &url.URL{Scheme: "http", Host: proxy.ln.Addr().String(), User: url.UserPassword("alice", "wrong")}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := Connect(ctx, cfg)
	if err == nil || proxy.refused.Load() == 0 {
		t.Fatalf("Connect through a refusing proxy: %v", err)
	}
	t.Logf("refused by the proxy: %v", err)
}

// testPKI makes a CA and a server certificate for 127.0.0.1.
func testPKI(t *testing.T) (caPEM []byte, server tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "sectun test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestTLS(t *testing.T) {
	caPEM, cert := testPKI(t)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, caPEM, 0o600)
	os.WriteFile(filepath.Join(dir, "README"), []byte("not a certificate"), 0o600)
	os.Mkdir(filepath.Join(dir, "sub"), 0o700)
	empty := t.TempDir()
	os.WriteFile(filepath.Join(empty, "x"), []byte("nothing"), 0o600)

	svc := fakeservice.Start(t, fakeservice.Options{Services: []string{"SSH1"}, TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	if !strings.HasPrefix(svc.URL, "wss://") {
		t.Fatal(svc.URL)
	}
	for _, tc := range []struct {
		name     string
		ca       string
		insecure bool
		ok       bool
	}{
		{"CA file", caFile, false, true},
		{"CA directory", dir, false, true},
		{"insecure", "", true, true},
		{"system roots", "", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tlsCfg, err := TLSConfig(tc.ca, tc.insecure)
			if err != nil {
				t.Fatal(err)
			}
			cfg := baseConfig(t, svc, ModeSource)
			cfg.ClientToken = "c0ffee00-0000-0000-0000-000000000000"
			cfg.TLS = tlsCfg
			// One attempt, so the certificate error itself comes back rather
			// than whatever a later retry met when the deadline struck.
			cfg.MaxAttempts = 1
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s, err := Connect(ctx, cfg)
			if tc.ok != (err == nil) {
				t.Fatalf("Connect: %v", err)
			}
			if err != nil {
				var ue x509.UnknownAuthorityError
				if !errors.As(err, &ue) && !strings.Contains(err.Error(), "certificate") {
					t.Fatalf("error does not name the certificate problem: %v", err)
				}
				return
			}
			s.Close()
			svc.WaitConnected(testCtx(t), fakeservice.Source, false)
		})
	}
	if _, err := TLSConfig(empty, false); err == nil {
		t.Fatal("TLSConfig of a directory without certificates: no error")
	}
	if _, err := TLSConfig(filepath.Join(dir, "missing"), false); err == nil {
		t.Fatal("TLSConfig of a missing path: no error")
	}
}
