package wsconn

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"golang.org/x/net/http/httpproxy"
)

// DialOptions configures Dial.
type DialOptions struct {
	// Header is sent with the upgrade request.
	Header http.Header
	// Subprotocols are offered in order of preference.
	Subprotocols []string
	// TLS configures wss:// connections; nil means system roots.
	TLS *tls.Config
	// Proxy returns the HTTP CONNECT proxy for the target, nil for none. If
	// Proxy is nil, ProxyFromEnvironment is used. Only http:// proxies are
	// supported; user information in the URL is sent as basic
	// authentication.
	Proxy func(target *url.URL) (*url.URL, error)
	// WriteTimeout bounds each message write whose context has no
	// deadline; 0 means none.
	WriteTimeout time.Duration
	// KeepSocketBuffers leaves the kernel's socket buffers to autotuning.
	// By default (Linux) the connection gets short kernel queues: see
	// Dial.
	KeepSocketBuffers bool
}

// ProxyFromEnvironment returns the proxy named by HTTPS_PROXY or
// https_proxy (honouring NO_PROXY), for ws:// and wss:// targets alike, as
// the reference local proxy does. User information in the proxy URL is
// sent as basic authentication.
func ProxyFromEnvironment(target *url.URL) (*url.URL, error) {
	cfg := httpproxy.Config{
		HTTPSProxy: firstEnv("HTTPS_PROXY", "https_proxy"),
		NoProxy:    firstEnv("NO_PROXY", "no_proxy"),
	}
	u := *target
	u.Scheme = "https"
	return cfg.ProxyFunc()(&u)
}

func firstEnv(names ...string) string {
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			return v
		}
	}
	return ""
}

// Dial opens a WebSocket connection to rawURL (ws:// or wss://), through
// an HTTP CONNECT proxy if opts.Proxy names one (RFC 6455 section 4.1).
// The returned response is the server's answer (its headers carry
// channel-id); a refused upgrade is a *HandshakeError. ctx bounds the
// whole handshake (connect, proxy, TLS, upgrade), and so does a 30 s
// limit.
//
// On Linux, unless opts.KeepSocketBuffers, the TCP connection gets short
// kernel queues once connected: TCP_NOTSENT_LOWAT 32 KiB, and on a link
// whose round trip is under about 8 ms SO_SNDBUF and SO_RCVBUF of twice
// the bandwidth-delay product at 2 Gbit/s, at least 128 KiB (the doc
// comment of package wsconn says why). Through an HTTP CONNECT proxy the
// buffers keep autotuning: the round trip the kernel measures is the
// proxy's, not the path's.
func Dial(ctx context.Context, rawURL string, opts DialOptions) (*Conn, *http.Response, error) {
	c, resp, err := dial(ctx, rawURL, opts)
	if err != nil {
		// ctx's deadline is also the socket's: the poller can report it
		// before ctx's own timer has fired. Wait for ctx so that a caller
		// checking ctx.Err() sees why the dial failed, rather than an i/o
		// timeout it takes for the service's.
		if dl, ok := ctx.Deadline(); ok && ctx.Err() == nil && !time.Now().Before(dl) {
			<-ctx.Done()
		}
	}
	return c, resp, err
}

func dial(ctx context.Context, rawURL string, opts DialOptions) (*Conn, *http.Response, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, nil, fmt.Errorf("wsconn: bad URL: %w", err)
	}
	var secure bool
	switch u.Scheme {
	case "ws":
	case "wss":
		secure = true
	default:
		return nil, nil, fmt.Errorf("wsconn: bad URL scheme %q: want ws or wss", u.Scheme)
	}
	if u.User != nil {
		return nil, nil, errors.New("wsconn: user information in the URL is not supported")
	}
	hostPort, host := u.Host, u.Hostname()
	if u.Port() == "" {
		if secure {
			hostPort = net.JoinHostPort(host, "443")
		} else {
			hostPort = net.JoinHostPort(host, "80")
		}
	}
	proxyFn := opts.Proxy
	if proxyFn == nil {
		proxyFn = ProxyFromEnvironment
	}
	hu := *u
	hu.Scheme = map[bool]string{false: "http", true: "https"}[secure]
	proxyURL, err := proxyFn(&hu)
	if err != nil {
		return nil, nil, err
	}

	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	nd := &net.Dialer{}
	if !opts.KeepSocketBuffers && maxSegment > 0 {
		nd.Control = segmentControl(maxSegment)
	}
	addr := hostPort
	if proxyURL != nil {
		if proxyURL.Scheme != "http" {
			return nil, nil, fmt.Errorf("wsconn: proxy scheme %q is not supported: use an http:// proxy", proxyURL.Scheme)
		}
		addr = proxyURL.Host
		if proxyURL.Port() == "" {
			addr = net.JoinHostPort(proxyURL.Hostname(), "80")
		}
	}
	tc, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	var nc net.Conn = tc
	ok := false
	defer func() {
		if !ok {
			nc.Close()
		}
	}()
	// The handshake's reads and writes end with ctx.
	if dl, has := ctx.Deadline(); has {
		tc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { tc.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if proxyURL != nil {
		if err := connectProxy(tc, proxyURL, hostPort); err != nil {
			return nil, nil, err
		}
	}
	if secure {
		cfg := opts.TLS.Clone()
		if cfg == nil {
			cfg = &tls.Config{}
		}
		if cfg.ServerName == "" {
			cfg.ServerName = host
		}
		tlc := tls.Client(tc, cfg)
		if err := tlc.HandshakeContext(ctx); err != nil {
			return nil, nil, err
		}
		nc = tlc
	}

	var keyb [16]byte
	rand.Read(keyb[:])
	key := base64.StdEncoding.EncodeToString(keyb[:])
	req := &http.Request{
		Method:     http.MethodGet,
		URL:        &hu,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     make(http.Header),
		Host:       u.Host,
	}
	for k, vs := range opts.Header {
		if k == "Host" {
			if len(vs) > 0 {
				req.Host = vs[0]
			}
			continue
		}
		req.Header[k] = vs
	}
	req.Header["Upgrade"] = []string{"websocket"}
	req.Header["Connection"] = []string{"Upgrade"}
	req.Header["Sec-WebSocket-Key"] = []string{key}
	req.Header["Sec-WebSocket-Version"] = []string{"13"}
	if len(opts.Subprotocols) > 0 {
		req.Header["Sec-WebSocket-Protocol"] = []string{strings.Join(opts.Subprotocols, ", ")}
	}
	bw := bufio.NewWriter(nc)
	if err := req.Write(bw); err != nil {
		return nil, nil, err
	}
	if err := bw.Flush(); err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(nc, 4096)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("wsconn: handshake: %w", ctx.Err())
		}
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols ||
		!headerHasToken(resp.Header, "Upgrade", "websocket") ||
		!headerHasToken(resp.Header, "Connection", "upgrade") ||
		resp.Header.Get("Sec-Websocket-Accept") != acceptKey(key) {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return nil, resp, &HandshakeError{StatusCode: resp.StatusCode, Header: resp.Header, Body: string(body)}
	}
	if !stop() {
		return nil, nil, fmt.Errorf("wsconn: handshake: %w", context.Cause(ctx))
	}
	tc.SetDeadline(time.Time{})
	c := newConn(nc, RoleClient, resp.Header.Get("Sec-Websocket-Protocol"))
	if n := br.Buffered(); n > 0 {
		// Frames the server sent right after its answer (SERVICE_IDS).
		b, _ := br.Peek(n)
		c.pre = append([]byte(nil), b...)
	}
	c.writeTO = opts.WriteTimeout
	if !opts.KeepSocketBuffers {
		c.shortenQueues(proxyURL == nil) // best effort: the kernel's defaults otherwise
	}
	ok = true
	return c, resp, nil
}

// connectProxy asks the HTTP proxy on c for a tunnel to hostPort.
func connectProxy(c net.Conn, proxyURL *url.URL, hostPort string) error {
	req := &http.Request{
		Method: http.MethodConnect,
		URL:    &url.URL{Opaque: hostPort},
		Host:   hostPort,
		Header: make(http.Header),
	}
	if user := proxyURL.User; user != nil {
		pw, _ := user.Password()
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user.Username()+":"+pw)))
	}
	if err := req.Write(c); err != nil {
		return fmt.Errorf("wsconn: proxy %s: %w", proxyURL.Host, err)
	}
	// A bufio.Reader may read ahead: the server behind the proxy does not
	// speak before it is spoken to (the TLS client hello, the upgrade).
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		return fmt.Errorf("wsconn: proxy %s: %w", proxyURL.Host, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("wsconn: proxy %s refused the tunnel to %s: %s", proxyURL.Host, hostPort, resp.Status)
	}
	return nil
}
