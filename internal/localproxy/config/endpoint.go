package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/sectun/sectun/internal/endpoint"
)

// DefaultServicePort is the service port when an endpoint names none.
const DefaultServicePort = endpoint.DefaultPort

// DefaultWebProxyPort is the web proxy port when HTTPS_PROXY names none
// (the reference's choice).
const DefaultWebProxyPort = 3128

// The host and port syntax is package endpoint's, shared with package
// tunnel; mappings and the web proxy URL use its helpers too.
type portRangeError = endpoint.PortRangeError

var (
	validHostName  = endpoint.ValidHostName
	parsePort      = endpoint.ParsePort
	splitBracketed = endpoint.SplitBracketed
	parseHostPort  = endpoint.HostPort
)

// EndpointURL returns the base URL of the tunneling service, without the
// /tunnel path. With an endpoint (-e), it accepts what the reference
// accepts, "host" or "host:port" (port 443 by default, lower-cased), and,
// as sectun extensions, "[v6addr]:port" and a "ws://" or "wss://" URL
// (with an optional path prefix; a final "/tunnel" is dropped): see
// endpoint.Parse. With a region (-r), the host is
// s.RegionEndpointOverrides[region] if present, else s.EndpointFormat with
// the region in place of %s (s nil means DefaultSettings). Exactly one of
// endpoint and region must be non-empty.
func EndpointURL(ep, region string, s *Settings) (*url.URL, error) {
	if s == nil {
		d := DefaultSettings()
		s = &d
	}
	switch {
	case ep != "" && region != "":
		return nil, errorf(ErrEndpointAndRegion, "give either an endpoint or a region")
	case ep == "" && region == "":
		return nil, errorf(ErrNoEndpoint, "give a region (-r) or an endpoint (-e)")
	case ep != "":
		u, err := endpoint.Parse(ep)
		if err != nil {
			return nil, errorf(ErrEndpoint, "%v", err)
		}
		return u, nil
	}
	u, err := endpoint.Region(region, s.EndpointFormat, s.RegionEndpointOverrides)
	switch {
	case errors.Is(err, endpoint.ErrRegion):
		return nil, errorf(ErrEndpoint, "%v", err)
	case err != nil:
		return nil, errorf(ErrEndpoint, "%v (check the settings file)", err)
	}
	return u, nil
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
