package relay

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sectun/sectun/internal/token"
)

// failure is why a handshake was refused; the names label metrics.
type failure int

const (
	failPath failure = iota
	failTooLarge
	failUpgradeForm
	failMode
	failToken
	failClientToken
	failSubprotocol
	failShutdown
	failUnauthorized
	failInternal
	failUpgrade // the upgrade or the first write failed after Authorize
	failFenced  // closed or rotated while the handshake was in flight
	failRateLimited
	failEarlyData // bytes after the request, before the 101
	numFailures
)

var failureNames = [numFailures]string{
	failPath:         "path",
	failTooLarge:     "request_too_large",
	failUpgradeForm:  "not_websocket",
	failMode:         "mode",
	failToken:        "access_token",
	failClientToken:  "client_token",
	failSubprotocol:  "subprotocol",
	failShutdown:     "shutting_down",
	failUnauthorized: "unauthorized",
	failInternal:     "internal",
	failUpgrade:      "upgrade",
	failFenced:       "fenced",
	failRateLimited:  "rate_limited",
	failEarlyData:    "early_data",
}

func (f failure) String() string { return failureNames[f] }

type handshakeError struct {
	status int
	reason failure
	text   string
}

const (
	headerAccessToken = "Access-Token"
	headerClientToken = "Client-Token"
	cookieToken       = "awsiot-tunnel-token"
	queryMode         = "local-proxy-mode"
)

// checkRequest applies the protocol's HTTP-level handshake rules. The
// returned request carries what was parsed so far, even on error (for
// logs).
func (r *Relay) checkRequest(req *http.Request) (HandshakeRequest, *handshakeError) {
	var hs HandshakeRequest
	if req.URL.Path != r.cfg.Path {
		return hs, &handshakeError{http.StatusBadRequest, failPath, fmt.Sprintf("unknown path %q: the tunnel endpoint is %s", req.URL.Path, r.cfg.Path)}
	}
	if n := requestSize(req); n > r.cfg.MaxRequestSize {
		return hs, &handshakeError{http.StatusRequestHeaderFieldsTooLarge, failTooLarge, fmt.Sprintf("request of %d bytes exceeds the limit of %d bytes", n, r.cfg.MaxRequestSize)}
	}
	if msg := upgradeProblem(req); msg != "" {
		return hs, &handshakeError{http.StatusBadRequest, failUpgradeForm, "not a WebSocket upgrade request: " + msg}
	}
	modes := req.URL.Query()[queryMode]
	if len(modes) != 1 || !Mode(modes[0]).Valid() {
		return hs, &handshakeError{http.StatusBadRequest, failMode, "query parameter local-proxy-mode must be given once, as source or destination"}
	}
	hs.Mode = Mode(modes[0])

	tokens := req.Header.Values(headerAccessToken)
	cookies := req.CookiesNamed(cookieToken)
	switch n := len(tokens) + len(cookies); {
	case n == 0:
		return hs, &handshakeError{http.StatusBadRequest, failToken, "missing access token: send it in the access-token header or the awsiot-tunnel-token cookie"}
	case n > 1:
		return hs, &handshakeError{http.StatusBadRequest, failToken, fmt.Sprintf("%d access tokens in the request (access-token header and awsiot-tunnel-token cookie): send exactly one", n)}
	case len(tokens) == 1:
		hs.AccessToken = tokens[0]
	default:
		hs.AccessToken = cookies[0].Value
	}
	if hs.AccessToken == "" {
		return hs, &handshakeError{http.StatusBadRequest, failToken, "empty access token"}
	}

	switch cts := req.Header.Values(headerClientToken); {
	case len(cts) > 1:
		return hs, &handshakeError{http.StatusBadRequest, failClientToken, "more than one client-token header: send at most one"}
	case len(cts) == 1:
		if !token.ValidClientToken(cts[0]) {
			return hs, &handshakeError{http.StatusBadRequest, failClientToken, "client-token must be 32 to 128 letters, digits or dashes"}
		}
		hs.ClientToken = cts[0]
	}

	hs.Subprotocol = r.pickSubprotocol(req)
	if hs.Subprotocol == "" {
		return hs, &handshakeError{http.StatusBadRequest, failSubprotocol, "Sec-WebSocket-Protocol must offer one of: " + strings.Join(r.subprot, ", ")}
	}
	return hs, nil
}

// requestSize is the size of the request line and headers as the client
// sent them, give or take the whitespace around header values.
func requestSize(req *http.Request) int {
	n := len(req.Method) + 1 + len(req.RequestURI) + 1 + len(req.Proto) + 2
	if req.Host != "" { // net/http moves Host out of Header
		n += len("Host: ") + len(req.Host) + 2
	}
	for k, vs := range req.Header {
		for _, v := range vs {
			n += len(k) + 2 + len(v) + 2
		}
	}
	return n + 2
}

// upgradeProblem says what makes req not a WebSocket upgrade, or "".
func upgradeProblem(req *http.Request) string {
	switch {
	case req.Method != http.MethodGet:
		return "method must be GET"
	case !headerHasToken(req.Header, "Connection", "upgrade"):
		return "missing Connection: Upgrade"
	case !headerHasToken(req.Header, "Upgrade", "websocket"):
		return "missing Upgrade: websocket"
	case req.Header.Get("Sec-WebSocket-Version") != "13":
		return "Sec-WebSocket-Version must be 13"
	case !validKey(req.Header.Get("Sec-WebSocket-Key")):
		return "Sec-WebSocket-Key must be 16 bytes in base64"
	}
	return ""
}

// validKey checks the key as the upgrader will, so that a request it would
// refuse never reaches Authorize (which may consume the token).
func validKey(s string) bool {
	b, err := base64.StdEncoding.DecodeString(s)
	return err == nil && len(b) == 16
}

func headerHasToken(h http.Header, name, want string) bool {
	for _, v := range h.Values(name) {
		for part := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(part), want) {
				return true
			}
		}
	}
	return false
}

// pickSubprotocol returns the highest accepted version the client offered.
func (r *Relay) pickSubprotocol(req *http.Request) string {
	offered := req.Header.Values("Sec-WebSocket-Protocol")
	for _, want := range r.subprot {
		for _, v := range offered {
			for part := range strings.SplitSeq(v, ",") {
				if p := strings.TrimSpace(part); p == want || want == SubprotocolV1 && p == SubprotocolV1Secured {
					return p
				}
			}
		}
	}
	return ""
}

// hijackedWriter is the ResponseWriter of a handshake whose connection the
// relay took from net/http before Authorize, so that everything that can
// refuse the request is known before the token is used: bytes the client
// sent after its request (which the upgrade would otherwise find only
// after Authorize, and answer by closing the connection), or a
// connection that cannot be taken over. A refusal written to it is sent
// as a complete HTTP response, then the connection is closed; the
// upgrade takes the connection through Hijack.
type hijackedWriter struct {
	conn         net.Conn
	brw          *bufio.ReadWriter
	header       http.Header
	status       int
	body         bytes.Buffer
	taken        bool
	writeTimeout time.Duration
}

// errNoHijack: the ResponseWriter cannot give up its connection.
var errNoHijack = errors.New("relay: the HTTP server cannot hand over the connection (HTTP/2 is not a WebSocket transport)")

// hijackHandshake takes the connection of w. The returned writer keeps
// w's headers.
func hijackHandshake(w http.ResponseWriter, writeTimeout time.Duration) (*hijackedWriter, error) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		if errors.Is(err, http.ErrNotSupported) {
			err = errNoHijack
		}
		return nil, err
	}
	return &hijackedWriter{conn: conn, brw: brw, header: w.Header(), writeTimeout: writeTimeout}, nil
}

// earlyData reports whether the client sent bytes after its request.
func (h *hijackedWriter) earlyData() bool { return h.brw.Reader.Buffered() > 0 }

func (h *hijackedWriter) Header() http.Header { return h.header }

func (h *hijackedWriter) WriteHeader(code int) {
	if h.status == 0 {
		h.status = code
	}
}

func (h *hijackedWriter) Write(p []byte) (int, error) {
	h.WriteHeader(http.StatusOK)
	if h.body.Len()+len(p) > 64<<10 {
		return 0, errors.New("relay: refusal too long")
	}
	return h.body.Write(p)
}

// Hijack hands the connection to the WebSocket upgrade.
func (h *hijackedWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if h.taken || h.status != 0 {
		return nil, nil, http.ErrHijacked
	}
	h.taken = true
	return h.conn, h.brw, nil
}

// finish sends what was written as an HTTP response and closes the
// connection, unless the upgrade took it.
func (h *hijackedWriter) finish() {
	if h.taken {
		return
	}
	defer h.conn.Close()
	if h.status == 0 {
		return
	}
	h.conn.SetWriteDeadline(time.Now().Add(h.writeTimeout))
	bw := h.brw.Writer
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\n", h.status, http.StatusText(h.status))
	h.header.Del("Connection")
	h.header.Set("Content-Length", strconv.Itoa(h.body.Len()))
	h.header.Set("Connection", "close")
	h.header.Write(bw)
	bw.WriteString("\r\n")
	bw.Write(h.body.Bytes())
	if bw.Flush() != nil {
		return
	}
	// Closing a socket with unread input resets it, and the reset can
	// destroy the answer before the client reads it (the early data is
	// such input): end the output, then read what the client still sends
	// until it closes, briefly, as net/http does before closing.
	closeWrite(h.conn)
	h.conn.SetReadDeadline(time.Now().Add(refusalLinger))
	io.CopyN(io.Discard, h.conn, 64<<10)
}

// refusalLinger is how long a refused handshake's connection is kept open
// for the client to read the answer and close.
const refusalLinger = time.Second

// closeWrite ends c's output: a TLS close_notify, or a TCP FIN (through
// wrappers that expose their connection).
func closeWrite(c net.Conn) {
	for range 4 {
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
			return
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return
		}
		c = u.NetConn()
	}
}
