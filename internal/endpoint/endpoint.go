package endpoint

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// DefaultPort is the service port when an endpoint names none (80 for a
// ws:// URL).
const DefaultPort = 443

// DefaultFormat makes the service host of a region: the region in place
// of %s.
const DefaultFormat = "data.tunneling.iot.%s.amazonaws.com"

// DefaultOverrides returns the regions whose host DefaultFormat does not
// make (China regions are on .amazonaws.com.cn). Each call returns a new
// map.
func DefaultOverrides() map[string]string {
	return map[string]string{
		"cn-north-1":     "data.tunneling.iot.cn-north-1.amazonaws.com.cn",
		"cn-northwest-1": "data.tunneling.iot.cn-northwest-1.amazonaws.com.cn",
	}
}

// ValidHostName reports whether s can be a DNS name or IPv4 address: the
// reference passes it to the resolver unchanged, so only refuse what no
// host name holds (spaces, '/', '@', ':' and the like).
func ValidHostName(s string) bool {
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

// PortRangeError is a number that is no port.
type PortRangeError struct {
	Text string
	Min  int
}

func (e *PortRangeError) Error() string {
	return fmt.Sprintf("port %s is not in %d..65535", e.Text, e.Min)
}

// ParsePort parses a decimal port in min..65535. A number out of range is
// a *PortRangeError.
func ParsePort(s string, min int) (int, error) {
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
		return 0, &PortRangeError{s, min}
	}
	return n, nil
}

// SplitBracketed parses "[v6addr]" or "[v6addr]:port"; port is "" when
// absent. ok is false when s does not start with '['.
func SplitBracketed(s string) (host, port string, ok bool, err error) {
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

// HostPort parses the reference's endpoint syntax, "host" or "host:port"
// (port 1..65535, default 443), and also "[v6addr]:port". The caller
// lower-cases s first, as the reference does.
func HostPort(s string) (host string, port int, err error) {
	if h, p, ok, err := SplitBracketed(s); ok {
		if err != nil {
			return "", 0, err
		}
		if p == "" {
			return h, DefaultPort, nil
		}
		port, err := ParsePort(p, 1)
		return h, port, err
	}
	host, p, hasPort := strings.Cut(s, ":")
	if !ValidHostName(host) {
		return "", 0, fmt.Errorf("%q is not a host name or IPv4 address (IPv6 addresses go in brackets: [::1]:443)", host)
	}
	if !hasPort {
		return host, DefaultPort, nil
	}
	port, err = ParsePort(p, 1)
	return host, port, err
}

// Parse returns the base URL of the service named by endpoint, without the
// /tunnel path. It accepts what the reference accepts, "host" or
// "host:port" (port 443 by default, lower-cased), and, as sectun
// extensions, "[v6addr]:port" and a "ws://" or "wss://" URL (port 80 or 443
// by default, with an optional path prefix; a final "/tunnel" is dropped).
// The URL always has an explicit port.
func Parse(endpoint string) (*url.URL, error) {
	lower := strings.ToLower(endpoint)
	if strings.HasPrefix(lower, "wss://") || strings.HasPrefix(lower, "ws://") {
		return parseURL(endpoint)
	}
	if strings.Contains(lower, "://") {
		return nil, fmt.Errorf("%q: use host[:port] as the reference does, or a ws:// or wss:// URL", endpoint)
	}
	host, port, err := HostPort(lower)
	if err != nil {
		return nil, fmt.Errorf("%q: %v; use host or host:port, e.g. data.tunneling.iot.us-east-1.amazonaws.com:443", endpoint, err)
	}
	return &url.URL{Scheme: "wss", Host: net.JoinHostPort(host, strconv.Itoa(port))}, nil
}

func parseURL(endpoint string) (*url.URL, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, fmt.Errorf("%q: %v", endpoint, err)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return nil, fmt.Errorf("%q: a service URL holds no user, query or fragment", endpoint)
	}
	hostport := strings.ToLower(u.Host)
	h, p, bracketed, err := SplitBracketed(hostport)
	if !bracketed {
		var hasPort bool
		h, p, hasPort = strings.Cut(hostport, ":")
		if hasPort && p == "" {
			err = errors.New("missing port")
		}
		if err == nil && !ValidHostName(h) {
			err = fmt.Errorf("%q is not a host name or IPv4 address", h)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%q: %v", endpoint, err)
	}
	port := DefaultPort
	if u.Scheme == "ws" {
		port = 80
	}
	if p != "" {
		if port, err = ParsePort(p, 1); err != nil {
			return nil, fmt.Errorf("%q: %v", endpoint, err)
		}
	}
	path := strings.TrimSuffix(strings.TrimSuffix(u.Path, "/"), "/tunnel")
	return &url.URL{Scheme: u.Scheme, Host: net.JoinHostPort(h, strconv.Itoa(port)), Path: strings.TrimSuffix(path, "/")}, nil
}

// ErrRegion is wrapped by Region's error for a name that is no region.
var ErrRegion = errors.New("not a region name")

// Region returns the base URL of region's service (case-insensitive): the
// host overrides[region] if present, else format with the region in place
// of %s, port 443 unless the host names one. A malformed host is an error
// that does not wrap ErrRegion (it is the settings' fault).
func Region(region, format string, overrides map[string]string) (*url.URL, error) {
	r := strings.ToLower(region)
	if !validRegion(r) {
		return nil, fmt.Errorf("region %q is %w such as us-east-1", region, ErrRegion)
	}
	host, ok := overrides[r]
	if !ok {
		host = strings.Replace(format, "%s", r, 1)
	}
	h, port, err := HostPort(strings.ToLower(host))
	if err != nil {
		return nil, fmt.Errorf("region %s maps to %q: %v", r, host, err)
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
