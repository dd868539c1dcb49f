package alpnmux

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sectun/sectun/internal/certs"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The HTTP client keeps idle-connection helpers around briefly.
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// pki is a server CA with a server certificate for 127.0.0.1, and a
// separate client CA with one client certificate.
type pki struct {
	serverPool, clientPool *x509.CertPool
	server, client         tls.Certificate
	otherClient            tls.Certificate // from a CA nobody trusts
}

func newPKI(t testing.TB) pki {
	t.Helper()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	sca, err := certs.NewCA("server CA")
	must(err)
	cca, err := certs.NewCA("client CA")
	must(err)
	xca, err := certs.NewCA("unknown CA")
	must(err)
	si, err := sca.IssueServer([]string{"127.0.0.1", "localhost"}, time.Hour)
	must(err)
	ci, err := cca.IssueClient("dev-1", time.Hour)
	must(err)
	xi, err := xca.IssueClient("dev-1", time.Hour)
	must(err)
	var p pki
	p.server, err = si.TLSCertificate()
	must(err)
	p.client, err = ci.TLSCertificate()
	must(err)
	p.otherClient, err = xi.TLSCertificate()
	must(err)
	p.serverPool = x509.NewCertPool()
	p.serverPool.AddCert(sca.Cert)
	p.clientPool = x509.NewCertPool()
	p.clientPool.AddCert(cca.Cert)
	return p
}

// routed records the connections a route received.
type routed struct {
	conns chan *tls.Conn
}

func (r *routed) serve(ctx context.Context, c *tls.Conn) {
	select {
	case r.conns <- c:
	case <-ctx.Done():
		c.Close()
	}
}

func startMux(t *testing.T, p pki, mod func(*Config)) (*Mux, *routed) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &routed{conns: make(chan *tls.Conn, 16)}
	cfg := Config{
		TLS: &tls.Config{Certificates: []tls.Certificate{p.server}, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12},
		Routes: []Route{{
			Proto: "x-amzn-mqtt-ca",
			TLS: &tls.Config{Certificates: []tls.Certificate{p.server}, ClientCAs: p.clientPool,
				ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12},
			Serve: r.serve,
		}},
		HandshakeTimeout: 2 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	m, err := New(ln, cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Serve() }()
	t.Cleanup(func() {
		m.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		close(r.conns)
		for c := range r.conns {
			c.Close()
		}
	})
	return m, r
}

// dial makes a TLS client connection offering protos, with an optional
// client certificate; asked reports whether the server requested one.
func dial(t *testing.T, addr string, p pki, protos []string, cert *tls.Certificate) (c *tls.Conn, asked bool, err error) {
	t.Helper()
	cfg := &tls.Config{RootCAs: p.serverPool, ServerName: "127.0.0.1", NextProtos: protos,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			asked = true
			if cert == nil {
				return &tls.Certificate{}, nil
			}
			return cert, nil
		}}
	d := &net.Dialer{Timeout: 5 * time.Second}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	c = tls.Client(nc, cfg)
	if err = c.Handshake(); err == nil && c.ConnectionState().Version == tls.VersionTLS13 {
		// A TLS 1.3 client learns about a refused certificate on its first
		// read: do one, briefly.
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		var b [1]byte
		if _, rerr := c.Read(b[:]); rerr != nil && !isTimeout(rerr) {
			err = rerr
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
	}
	if err != nil {
		c.Close()
		return nil, asked, err
	}
	t.Cleanup(func() { c.Close() })
	return c, asked, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestDispatch(t *testing.T) {
	p := newPKI(t)
	m, r := startMux(t, p, nil)
	addr := m.Addr().String()

	tests := []struct {
		name      string
		protos    []string
		cert      *tls.Certificate
		wantRoute bool
		wantProto string
		wantAsked bool
		wantErr   bool
	}{
		{name: "https client", protos: []string{"h2", "http/1.1"}, wantProto: "http/1.1"},
		{name: "no ALPN", protos: nil, wantProto: ""},
		{name: "unknown protocol only", protos: []string{"h2"}, wantProto: ""},
		{name: "mqtt with device certificate", protos: []string{"x-amzn-mqtt-ca"}, cert: &p.client, wantRoute: true, wantProto: "x-amzn-mqtt-ca", wantAsked: true},
		{name: "mqtt offered with http/1.1", protos: []string{"http/1.1", "x-amzn-mqtt-ca"}, cert: &p.client, wantRoute: true, wantProto: "x-amzn-mqtt-ca", wantAsked: true},
		{name: "mqtt without certificate", protos: []string{"x-amzn-mqtt-ca"}, wantAsked: true, wantErr: true},
		{name: "mqtt with untrusted certificate", protos: []string{"x-amzn-mqtt-ca"}, cert: &p.otherClient, wantAsked: true, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, asked, err := dial(t, addr, p, tc.protos, tc.cert)
			if asked != tc.wantAsked {
				t.Errorf("client certificate requested: %v, want %v", asked, tc.wantAsked)
			}
			if tc.wantErr {
				if err == nil {
					// Under load the server's refusal can come after dial's
					// brief read: wait for it (a refused client sees an
					// alert or EOF, a served one a timeout).
					c.SetReadDeadline(time.Now().Add(5 * time.Second))
					if _, err = c.Read(make([]byte, 1)); isTimeout(err) {
						err = nil
					}
				}
				if err == nil {
					t.Fatal("handshake succeeded")
				}
				return
			}
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if got := c.ConnectionState().NegotiatedProtocol; got != tc.wantProto {
				t.Errorf("negotiated %q, want %q", got, tc.wantProto)
			}
			var sc net.Conn
			if tc.wantRoute {
				select {
				case rc := <-r.conns:
					if st := rc.ConnectionState(); len(st.VerifiedChains) == 0 || st.PeerCertificates[0].Subject.CommonName != "dev-1" {
						t.Fatalf("route got a connection without the verified device certificate")
					}
					sc = rc
				case <-time.After(5 * time.Second):
					t.Fatal("route got no connection")
				}
			} else {
				ac, err := acceptTimeout(m.Listener(), 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				sc = ac
			}
			defer sc.Close()
			// The connection works both ways.
			go io.WriteString(c, "ping")
			buf := make([]byte, 4)
			sc.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("server read %q, %v", buf, err)
			}
		})
	}
}

func acceptTimeout(ln net.Listener, d time.Duration) (net.Conn, error) {
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-time.After(d):
		ln.Close() // unblocks the Accept above
		r := <-ch
		if r.c != nil {
			r.c.Close()
		}
		return nil, errors.New("no connection accepted")
	}
}

// TestHTTPServer runs net/http on the Listener: an HTTPS GET without a
// client certificate succeeds on the port that requires one for MQTT.
func TestHTTPServer(t *testing.T) {
	p := newPKI(t)
	m, _ := startMux(t, p, nil)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok "+r.TLS.NegotiatedProtocol)
	}), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(m.Listener()) }()
	defer func() {
		srv.Close()
		<-done
	}()
	var asked atomic.Bool
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.serverPool, NextProtos: []string{"http/1.1"},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			asked.Store(true)
			return &tls.Certificate{}, nil
		}}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := client.Get("https://" + m.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "ok http/1.1" {
		t.Fatalf("body %q", body)
	}
	if asked.Load() {
		t.Fatal("an HTTPS client was asked for a certificate")
	}
}

// TestHandshakeTimeout: a client that never sends its hello is dropped.
func TestHandshakeTimeout(t *testing.T) {
	p := newPKI(t)
	m, _ := startMux(t, p, func(c *Config) { c.HandshakeTimeout = 100 * time.Millisecond })
	c, err := net.DialTimeout("tcp", m.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("silent client: read %v, want the server to close", err)
	}
}

// TestMaxHandshakes: with one handshake slot taken by a silent client,
// the next client waits until that slot frees.
func TestMaxHandshakes(t *testing.T) {
	p := newPKI(t)
	m, _ := startMux(t, p, func(c *Config) {
		c.MaxHandshakes = 1
		c.HandshakeTimeout = 300 * time.Millisecond
	})
	silent, err := net.DialTimeout("tcp", m.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// The kernel's accept queue is FIFO: the silent connection takes the
	// only slot, and the next handshake waits for its timeout.
	start := time.Now()
	if _, _, err := dial(t, m.Addr().String(), p, []string{"http/1.1"}, nil); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 150*time.Millisecond {
		t.Fatalf("second handshake took %v: the slot was not held", took)
	}
	if c, err := acceptTimeout(m.Listener(), 5*time.Second); err != nil {
		t.Fatal(err)
	} else {
		c.Close()
	}
}

// TestCloseDrains: Close ends Accept, closes connections not accepted,
// aborts handshakes in progress and ends Route.Serve contexts.
func TestCloseDrains(t *testing.T) {
	p := newPKI(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	m, err := New(ln, Config{
		TLS: &tls.Config{Certificates: []tls.Certificate{p.server}, NextProtos: []string{"http/1.1"}},
		Routes: []Route{{Proto: "blocking", Serve: func(ctx context.Context, c *tls.Conn) {
			close(served)
			<-ctx.Done()
			c.Close()
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Serve() }()
	// One connection waiting in the backlog, one in a route, one silent.
	waiting, _, err := dial(t, m.Addr().String(), p, []string{"http/1.1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := dial(t, m.Addr().String(), p, []string{"blocking"}, nil); err != nil {
		t.Fatal(err)
	}
	<-served
	silent, err := net.DialTimeout("tcp", m.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	closed := make(chan struct{})
	go func() {
		m.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := m.Listener().Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	waiting.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := waiting.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("backlogged connection: read %v, want closed", err)
	}
	m.Close() // idempotent
}

func TestConfigErrors(t *testing.T) {
	p := newPKI(t)
	base := &tls.Config{Certificates: []tls.Certificate{p.server}}
	serve := func(context.Context, *tls.Conn) {}
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no TLS", Config{}},
		{"GetConfigForClient", Config{TLS: &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return nil, nil }}}},
		{"empty protocol", Config{TLS: base, Routes: []Route{{Serve: serve}}}},
		{"duplicate", Config{TLS: base, Routes: []Route{{Proto: "a", Serve: serve}, {Proto: "a", Serve: serve}}}},
		{"no Serve", Config{TLS: base, Routes: []Route{{Proto: "a"}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			if _, err := New(ln, tc.cfg); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// BenchmarkDispatch measures a full TLS 1.3 handshake and dispatch to the
// default listener over loopback.
func BenchmarkDispatch(b *testing.B) {
	p := newPKI(b)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	m, err := New(ln, Config{TLS: &tls.Config{Certificates: []tls.Certificate{p.server}, NextProtos: []string{"http/1.1"}}})
	if err != nil {
		b.Fatal(err)
	}
	go m.Serve()
	defer m.Close()
	go func() {
		for {
			c, err := m.Listener().Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	cfg := &tls.Config{RootCAs: p.serverPool, ServerName: "127.0.0.1", NextProtos: []string{"http/1.1"}}
	b.ReportAllocs()
	for b.Loop() {
		c, err := tls.Dial("tcp", m.Addr().String(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// A route whose Admit says no aborts the handshake before the key
// exchange; the default protocol is served as before.
func TestRouteAdmit(t *testing.T) {
	p := newPKI(t)
	var open atomic.Bool
	var handshakeErrs atomic.Int64
	var lastErr atomic.Value
	m, r := startMux(t, p, func(c *Config) {
		c.Routes[0].Admit = open.Load
		c.OnHandshakeError = func(raw net.Conn, _ string, err error) {
			lastErr.Store(err)
			handshakeErrs.Add(1)
			raw.Close()
		}
	})
	addr := m.Addr().String()
	if _, _, err := dial(t, addr, p, []string{"x-amzn-mqtt-ca"}, &p.client); err == nil {
		t.Fatal("handshake completed although Admit said no")
	}
	deadline := time.Now().Add(5 * time.Second)
	for handshakeErrs.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err, _ := lastErr.Load().(error); !errors.Is(err, ErrRefused) {
		t.Fatalf("handshake error %v, want ErrRefused", err)
	}
	if c, _, err := dial(t, addr, p, []string{"http/1.1"}, nil); err != nil {
		t.Fatalf("default protocol: %v", err)
	} else {
		c.Close()
	}
	open.Store(true)
	c, _, err := dial(t, addr, p, []string{"x-amzn-mqtt-ca"}, &p.client)
	if err != nil {
		t.Fatalf("admitted: %v", err)
	}
	defer c.Close()
	select {
	case sc := <-r.conns:
		sc.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("admitted connection not served")
	}
}

// TestTCPReachable: the TLS connections the mux hands out reach their TCP
// socket through NetConn methods, as wsconn needs for its short kernel
// queues, the relay's read-ahead and the liveness check (without it
// tunneld's TLS WebSockets kept autotuned megabyte buffers: round trips
// beside a bulk transfer took twice as long).
func TestTCPReachable(t *testing.T) {
	p := newPKI(t)
	m, _ := startMux(t, p, nil)
	got := make(chan string, 1)
	go func() {
		c, err := m.Listener().Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		var nc net.Conn = c
		for range 4 {
			if _, ok := nc.(*net.TCPConn); ok {
				got <- "tcp"
				return
			}
			u, ok := nc.(interface{ NetConn() net.Conn })
			if !ok {
				break
			}
			nc = u.NetConn()
		}
		got <- fmt.Sprintf("%T has no NetConn", nc)
	}()
	c, err := tls.Dial("tcp", m.Addr().String(), &tls.Config{RootCAs: p.serverPool, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case s := <-got:
		if s != "tcp" {
			t.Fatalf("the TCP socket is not reachable: %s", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no connection accepted")
	}
}
