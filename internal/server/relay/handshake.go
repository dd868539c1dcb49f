package relay

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"

	"github.com/sectun/sectun/internal/store"
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
	if len(modes) != 1 || (modes[0] != string(store.ModeSource) && modes[0] != string(store.ModeDestination)) {
		return hs, &handshakeError{http.StatusBadRequest, failMode, "query parameter local-proxy-mode must be given once, as source or destination"}
	}
	hs.Mode = store.Mode(modes[0])

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
				if strings.TrimSpace(part) == want {
					return want
				}
			}
		}
	}
	return ""
}
