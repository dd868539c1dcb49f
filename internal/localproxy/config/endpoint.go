package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// DefaultServicePort is the service port when an endpoint names none.
const DefaultServicePort = 443

// DefaultWebProxyPort is the web proxy port when HTTPS_PROXY names none
// (the reference's choice).
const DefaultWebProxyPort = 3128

// validHostName reports whether s can be a DNS name or IPv4 address: the
// reference passes it to the resolver unchanged, so only refuse what no
// host name holds (spaces, '/', '@', ':' and the like).
func validHostName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// portRangeError is a number that is no port; mapping errors turn it into
// ErrPort.
type portRangeError struct {
	text string
	min  int
}

func (e *portRangeError) Error() string {
	return fmt.Sprintf("port %s is not in %d..65535", e.text, e.min)
}

// parsePort parses a decimal port in min..65535.
func parsePort(s string, min int) (int, error) {
	if s == "" {
		return 0, errors.New("missing port")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("port %q is not a number", s)
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < min || n > 65535 {
		return 0, &portRangeError{s, min}
	}
	return n, nil
}

// splitBracketed parses "[v6addr]" or "[v6addr]:port"; port is "" when
// absent. ok is false when s does not start with '['.
func splitBracketed(s string) (host, port string, ok bool, err error) {
	if !strings.HasPrefix(s, "[") {
		return "", "", false, nil
	}
	end := strings.IndexByte(s, ']')
	if end < 0 {
		return "", "", true, fmt.Errorf("missing ']' in %q", s)
	}
	host = s[1:end]
	if _, perr := netip.ParseAddr(host); perr != nil || !strings.Contains(host, ":") {
		return "", "", true, fmt.Errorf("%q is not an IPv6 address", host)
	}
	rest := s[end+1:]
	switch {
	case rest == "":
		return host, "", true, nil
	case rest[0] == ':':
		return host, rest[1:], true, nil
	}
	return "", "", true, fmt.Errorf("unexpected %q after ']'", rest)
}

// parseHostPort parses the reference's endpoint syntax, "host" or
// "host:port" (port 1..65535, default 443), and also "[v6addr]:port".
// The caller lower-cases s first, as the reference does.
func parseHostPort(s string) (host string, port int, err error) {
	if h, p, ok, err := splitBracketed(s); ok {
		if err != nil {
			return "", 0, err
		}
		if p == "" {
			return h, DefaultServicePort, nil
		}
		port, err := parsePort(p, 1)
		return h, port, err
	}
	host, p, hasPort := strings.Cut(s, ":")
	if !validHostName(host) {
		return "", 0, fmt.Errorf("%q is not a host name or IPv4 address (IPv6 addresses go in brackets: [::1]:443)", host)
	}
	if !hasPort {
		return host, DefaultServicePort, nil
	}
	port, err = parsePort(p, 1)
	return host, port, err
}

// EndpointURL returns the base URL of the tunneling service, without the
// /tunnel path. With an endpoint (-e), it accepts what the reference
// accepts, "host" or "host:port" (port 443 by default, lower-cased), and,
// as sectun extensions, "[v6addr]:port" and a "ws://" or "wss://" URL
// (with an optional path prefix; a final "/tunnel" is dropped). With a
// region (-r), the host is s.RegionEndpointOverrides[region] if present,
// else s.EndpointFormat with the region in place of %s (s nil means
// DefaultSettings). Exactly one of endpoint and region must be non-empty.
func EndpointURL(endpoint, region string, s *Settings) (*url.URL, error) {
	if s == nil {
		d := DefaultSettings()
		s = &d
	}
	switch {
	case endpoint != "" && region != "":
		return nil, errorf(ErrEndpointAndRegion, "give either an endpoint or a region")
	case endpoint == "" && region == "":
		return nil, errorf(ErrNoEndpoint, "give a region (-r) or an endpoint (-e)")
	case endpoint != "":
		return parseEndpoint(endpoint)
	}
	r := strings.ToLower(region)
	if !validRegion(r) {
		return nil, errorf(ErrEndpoint, "region %q is not a region name such as us-east-1", region)
	}
	host, ok := s.RegionEndpointOverrides[r]
	if !ok {
		host = strings.Replace(s.EndpointFormat, "%s", r, 1)
	}
	h, port, err := parseHostPort(strings.ToLower(host))
	if err != nil {
		return nil, errorf(ErrEndpoint, "region %s maps to %q: %v (check the settings file)", r, host, err)
	}
	return &url.URL{Scheme: "wss", Host: net.JoinHostPort(h, strconv.Itoa(port))}, nil
}

func validRegion(r string) bool {
	if r == "" || len(r) > 64 {
		return false
	}
	for i := 0; i < len(r); i++ {
		c := r[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func parseEndpoint(endpoint string) (*url.URL, error) {
	lower := strings.ToLower(endpoint)
	if strings.HasPrefix(lower, "wss://") || strings.HasPrefix(lower, "ws://") {
		return parseEndpointURL(endpoint)
	}
	if strings.Contains(lower, "://") {
		return nil, errorf(ErrEndpoint, "%q: use host[:port] as the reference does, or a ws:// or wss:// URL", endpoint)
	}
	host, port, err := parseHostPort(lower)
	if err != nil {
		return nil, errorf(ErrEndpoint, "%q: %v; use host or host:port, e.g. data.tunneling.iot.us-east-1.amazonaws.com:443", endpoint, err)
	}
	return &url.URL{Scheme: "wss", Host: net.JoinHostPort(host, strconv.Itoa(port))}, nil
}

func parseEndpointURL(endpoint string) (*url.URL, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, errorf(ErrEndpoint, "%q: %v", endpoint, err)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return nil, errorf(ErrEndpoint, "%q: a service URL holds no user, query or fragment", endpoint)
	}
	hostport := strings.ToLower(u.Host)
	h, p, bracketed, err := splitBracketed(hostport)
	if !bracketed {
		var hasPort bool
		h, p, hasPort = strings.Cut(hostport, ":")
		if hasPort && p == "" {
			err = errors.New("missing port")
		}
		if err == nil && !validHostName(h) {
			err = fmt.Errorf("%q is not a host name or IPv4 address", h)
		}
	}
	if err != nil {
		return nil, errorf(ErrEndpoint, "%q: %v", endpoint, err)
	}
	port := DefaultServicePort
	if u.Scheme == "ws" {
		port = 80
	}
	if p != "" {
		if port, err = parsePort(p, 1); err != nil {
			return nil, errorf(ErrEndpoint, "%q: %v", endpoint, err)
		}
	}
	path := strings.TrimSuffix(strings.TrimSuffix(u.Path, "/"), "/tunnel")
	return &url.URL{Scheme: u.Scheme, Host: net.JoinHostPort(h, strconv.Itoa(port)), Path: strings.TrimSuffix(path, "/")}, nil
}

// ParseWebProxyURL parses an HTTPS_PROXY value as the reference does:
// "[http|https://][user:password@]host[:port]", scheme http when absent,
// port 3128 when absent or 0, user and password URL-decoded ('+' is a
// space). A path after the host is ignored. As an extension the host may
// be a bracketed IPv6 address. Errors wrap ErrProxyURL.
func ParseWebProxyURL(s string) (*url.URL, error) {
	scheme, rest, found := strings.Cut(s, "://")
	if !found {
		scheme, rest = "http", s
	}
	scheme = strings.ToLower(scheme)
	if scheme != "http" && scheme != "https" {
		return nil, errorf(ErrProxyURL, "scheme %q is not supported: use http:// or https://", scheme)
	}
	u := &url.URL{Scheme: scheme}
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		userinfo := rest[:at]
		rest = rest[at+1:]
		dec, err := url.QueryUnescape(userinfo)
		if err != nil {
			return nil, errorf(ErrProxyURL, "bad %%-escape in the user:password part")
		}
		user, pass, ok := strings.Cut(dec, ":")
		switch {
		case dec == "":
			return nil, errorf(ErrProxyURL, "empty user:password before '@': remove the '@' if the proxy needs no login")
		case !ok:
			return nil, errorf(ErrProxyURL, "the login before '@' needs a ':' between user and password")
		case user == "":
			return nil, errorf(ErrProxyURL, "the login before '@' has no user name")
		}
		u.User = url.UserPassword(user, pass)
	}
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		rest = rest[:i]
	}
	rest = strings.ToLower(rest)
	host, port, bracketed, err := splitBracketed(rest)
	if !bracketed {
		host, port, _ = strings.Cut(rest, ":")
		if !validHostName(host) {
			err = fmt.Errorf("%q is not a host name", host)
		}
	}
	if err != nil {
		return nil, errorf(ErrProxyURL, "%v", err)
	}
	n := DefaultWebProxyPort
	if port != "" {
		if n, err = parsePort(port, 0); err != nil {
			return nil, errorf(ErrProxyURL, "%v", err)
		}
		if n == 0 {
			n = DefaultWebProxyPort
		}
	}
	u.Host = net.JoinHostPort(host, strconv.Itoa(n))
	return u, nil
}
