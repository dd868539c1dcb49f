package wsconn

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// dialRaw dials u with a plain gorilla client (the test plays the peer
// byte by byte) within 5 s. ctx is those 5 s, for the test's own waits;
// both end with the test.
func dialRaw(t *testing.T, u string) (context.Context, *websocket.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	ws, _, err := websocket.DefaultDialer.DialContext(ctx, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	return ctx, ws
}

// serve starts a server that upgrades with Accept and hands the Conn to fn.
func serve(t *testing.T, fn func(*Conn)) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/refuse" {
			w.Header().Set("channel-id", "c1")
			http.Error(w, "invalid access token", http.StatusUnauthorized)
			return
		}
		c, err := Accept(w, r, AcceptOptions{Subprotocol: "proto-1", Header: http.Header{"Channel-Id": {"abc"}}})
		if err != nil {
			return
		}
		fn(c)
	}))
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http")
}

func dialT(t *testing.T, u string) (*Conn, *http.Response) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, resp, err := Dial(ctx, u, DialOptions{Subprotocols: []string{"proto-1"}, Proxy: noProxy})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(CloseNormal, "") })
	return c, resp
}

func noProxy(*url.URL) (*url.URL, error) { return nil, nil }

func TestMessagesAreOneByteStream(t *testing.T) {
	u := serve(t, func(c *Conn) {
		c.WriteMessage(context.Background(), []byte("hel"))
		c.WriteMessage(context.Background(), []byte("lo "))
		c.WriteMessage(context.Background(), []byte("world"))
		c.Close(CloseNormal, "")
	})
	c, resp := dialT(t, u)
	if resp.Header.Get("channel-id") != "abc" || c.Subprotocol() != "proto-1" {
		t.Fatalf("headers %v, subprotocol %q", resp.Header, c.Subprotocol())
	}
	c.SetLiveness(5 * time.Second)
	b, err := io.ReadAll(io.LimitReader(c, 11))
	if err != nil || string(b) != "hello world" {
		t.Fatalf("read %q, %v", b, err)
	}
	_, err = c.Read(make([]byte, 1))
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != CloseNormal {
		t.Fatalf("after close: %v", err)
	}
}

func TestTextMessageRefused(t *testing.T) {
	got := make(chan error, 1)
	u := serve(t, func(c *Conn) {
		c.SetLiveness(5 * time.Second)
		_, err := c.Read(make([]byte, 10))
		got <- err
	})
	_, ws := dialRaw(t, u)
	ws.WriteMessage(websocket.TextMessage, []byte("hi"))
	if err := <-got; !errors.Is(err, ErrTextMessage) {
		t.Fatalf("server read: %v", err)
	}
	ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := ws.ReadMessage()
	if !websocket.IsCloseError(err, CloseUnsupportedData) {
		t.Fatalf("client got %v, want close 1003", err)
	}
}

func TestOversizedMessageRefused(t *testing.T) {
	got := make(chan error, 1)
	u := serve(t, func(c *Conn) {
		c.SetLiveness(5 * time.Second)
		_, err := io.ReadAll(c)
		got <- err
	})
	_, ws := dialRaw(t, u)
	ws.WriteMessage(websocket.BinaryMessage, make([]byte, MaxMessageSize+1))
	if err := <-got; err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("server read: %v", err)
	}
	ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := ws.ReadMessage(); !websocket.IsCloseError(err, CloseMessageTooBig) {
		t.Fatalf("client got %v, want close 1009", err)
	}
}

func TestLivenessDeadline(t *testing.T) {
	release := make(chan struct{})
	u := serve(t, func(c *Conn) { <-release; c.Close(CloseNormal, "") })
	defer close(release)
	c, _ := dialT(t, u)
	c.SetLiveness(100 * time.Millisecond)
	start := time.Now()
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("silent peer: %v, want a timeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("timeout took %v", d)
	}
}

// TestLivenessLateReader: data the peer sent is a sign of life even while
// the reader is too busy to read it (a full consumer, a starved process):
// a reader that comes back after the liveness period gets the data, not a
// timeout. Once the peer is silent and nothing waits, reads time out as
// before. Both readers: gorilla's (client) and wsconn's own (server).
func TestLivenessLateReader(t *testing.T) {
	const live = 200 * time.Millisecond
	check := func(t *testing.T, c *Conn) {
		t.Helper()
		c.SetLiveness(live)
		time.Sleep(3 * live) // busy elsewhere while the message waits
		b := make([]byte, 16)
		if n, err := c.Read(b); err != nil || string(b[:n]) != "hello" {
			t.Fatalf("late read: %q, %v; want the waiting message", b[:n], err)
		}
		start := time.Now()
		_, err := c.Read(b)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("silent peer: %v, want a timeout", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("timeout took %v", d)
		}
	}
	t.Run("client", func(t *testing.T) {
		dialed := make(chan struct{})
		release := make(chan struct{})
		u := serve(t, func(c *Conn) {
			<-dialed // after the handshake: the message waits in the kernel
			c.WriteMessage(context.Background(), []byte("hello"))
			<-release
			c.Close(CloseNormal, "")
		})
		defer close(release)
		c, _ := dialT(t, u)
		close(dialed)
		check(t, c)
	})
	t.Run("server", func(t *testing.T) {
		result := make(chan error, 1)
		u := serve(t, func(c *Conn) {
			defer c.Close(CloseNormal, "")
			ok := t.Run("read", func(t *testing.T) { check(t, c) })
			if !ok {
				result <- errors.New("failed")
				return
			}
			result <- nil
		})
		_, ws := dialRaw(t, u)
		if err := ws.WriteMessage(websocket.BinaryMessage, []byte("hello")); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-result:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("server side did not finish")
		}
	})
}

// TestLivenessStopsWithConn: closing or aborting a connection stops its
// watchdog at once (it holds the connection while armed), and a later
// SetLiveness does not re-arm it.
func TestLivenessStopsWithConn(t *testing.T) {
	release := make(chan struct{})
	u := serve(t, func(c *Conn) { <-release; c.Close(CloseNormal, "") })
	defer close(release)
	closeNormal := func(c *Conn) error { return c.Close(CloseNormal, "") }
	for _, end := range []func(*Conn) error{closeNormal, (*Conn).Abort} {
		c, _ := dialT(t, u)
		c.SetLiveness(time.Hour)
		end(c)
		c.SetLiveness(time.Minute)
		c.live.mu.Lock()
		over, stopped := c.live.over, !c.live.dog.Stop()
		c.live.mu.Unlock()
		if !over || !stopped {
			t.Errorf("after closing: watchdog over %v, stopped %v", over, stopped)
		}
	}
}

func TestHandshakeError(t *testing.T) {
	u := serve(t, func(*Conn) {})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _, err := Dial(ctx, u+"/refuse", DialOptions{Proxy: noProxy})
	var he *HandshakeError
	if !errors.As(err, &he) || he.StatusCode != 401 || !strings.Contains(he.Body, "invalid access token") || he.Header.Get("channel-id") != "c1" {
		t.Fatalf("got %#v", err)
	}
	if !errors.Is(err, ErrBadHandshake) {
		t.Fatal("not ErrBadHandshake")
	}
}

func TestProxyFromEnvironment(t *testing.T) {
	t.Setenv("HTTPS_PROXY", "http://user:pw@proxy.example:3128")
	t.Setenv("NO_PROXY", "skip.example")
	for _, target := range []string{"ws://svc.example:80/tunnel", "wss://svc.example/tunnel"} {
		u, _ := url.Parse(target)
		p, err := ProxyFromEnvironment(u)
		if err != nil || p == nil || p.Host != "proxy.example:3128" || p.User.Username() != "user" {
			t.Errorf("%s: proxy %v, %v", target, p, err)
		}
	}
	u, _ := url.Parse("wss://skip.example/tunnel")
	if p, _ := ProxyFromEnvironment(u); p != nil {
		t.Errorf("NO_PROXY ignored: %v", p)
	}
}

// TestDialThroughConnectProxy checks ws:// through an HTTP CONNECT proxy with
// basic authentication taken from the proxy URL.
func TestDialThroughConnectProxy(t *testing.T) {
	u := serve(t, func(c *Conn) { c.WriteMessage(context.Background(), []byte("via proxy")); c.Close(CloseNormal, "") })
	proxyURL, auth := testConnectProxy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := Dial(ctx, u, DialOptions{Proxy: func(*url.URL) (*url.URL, error) { return proxyURL, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(CloseNormal, "")
	c.SetLiveness(5 * time.Second)
	b, _ := io.ReadAll(io.LimitReader(c, 9))
	if string(b) != "via proxy" {
		t.Fatalf("read %q", b)
	}
	if a := <-auth; a != "Basic YWxpY2U6c2VjcmV0" {
		t.Fatalf("Proxy-Authorization %q", a)
	}
}

// connectProxy starts an HTTP CONNECT proxy for one connection; its URL
// carries user information, and the Proxy-Authorization header received
// is sent on the channel.
func testConnectProxy(t *testing.T) (*url.URL, <-chan string) {
	t.Helper()
	auth := make(chan string, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	t.Cleanup(func() { ln.Close() })
	wg.Go(func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		br := bufio.NewReader(conn)
		req, err := http.ReadRequest(br)
		if err != nil || req.Method != http.MethodConnect {
			return
		}
		auth <- req.Header.Get("Proxy-Authorization")
		up, err := net.Dial("tcp", req.Host)
		if err != nil {
			return
		}
		defer up.Close()
		io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n")
		go func() { io.Copy(up, br); up.(*net.TCPConn).CloseWrite() }()
		io.Copy(conn, up)
	})
	proxyURL, _ := url.Parse("http://alice:secret@" + ln.Addr().String())
	return proxyURL, auth
}

// A dial that fails because ctx's deadline passed returns with ctx done:
// the socket's deadline (the same instant) can fire before ctx's timer,
// and a caller checking ctx.Err() took the i/o timeout for a failed
// attempt (tunnel TestServerErrorRetried, under load).
func TestDialDeadlineIsContexts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // runs after ln.Close (cleanups run last first)
	t.Cleanup(func() { ln.Close() })
	wg.Go(func() { // accepts and never answers the upgrade request
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	})
	for i := range 200 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+i%5)*time.Millisecond)
		_, _, err := Dial(ctx, "ws://"+ln.Addr().String()+"/", DialOptions{Proxy: noProxy})
		cerr := ctx.Err()
		cancel()
		if err == nil {
			t.Fatal("dial succeeded")
		}
		if cerr == nil {
			t.Fatalf("attempt %d: Dial returned %v with ctx not done", i, err)
		}
	}
}
