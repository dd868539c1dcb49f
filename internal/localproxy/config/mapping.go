package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// Mapping ties a service ID to a local port: where the source listens, or
// what the destination dials.
type Mapping struct {
	// ServiceID is the tunnel service this mapping serves; "" is the
	// anonymous (V1) form, "-s 5555", which serves a tunnel's only service.
	ServiceID string
	// Host: in destination mode, the host to dial (Parse and Resolve fill
	// in the default: the -b address if given, else 127.0.0.1, as the
	// reference does). In source mode, the host part of "-s host:port" if
	// given; the reference ignores it and so must the runtime: the listen
	// address is Config.ListenAddress.
	Host string
	// Port: the port to listen on (source; 0 = any free port) or to dial
	// (destination). Zero when Unix is set.
	Port int
	// Unix is a Unix socket path to dial (destination only; an endpoint
	// holding a '/', as the reference's newer releases accept).
	Unix string
}

// Network returns "unix" for a Unix socket mapping, else "tcp".
func (m Mapping) Network() string {
	if m.Unix != "" {
		return "unix"
	}
	return "tcp"
}

// Address returns the address to dial or listen on with Network: the
// socket path, or host:port (":port" when Host is empty).
func (m Mapping) Address() string {
	if m.Unix != "" {
		return m.Unix
	}
	return net.JoinHostPort(m.Host, strconv.Itoa(m.Port))
}

// target is the mapping's right-hand side in -s/-d syntax.
func (m Mapping) target() string {
	switch {
	case m.Unix != "":
		return m.Unix
	case m.Host == "":
		return strconv.Itoa(m.Port)
	}
	return m.Address()
}

// String returns the mapping in -s/-d syntax ("SSH1=host:22", "5555"),
// which ParseMappings reads back to the same Mapping.
func (m Mapping) String() string {
	if m.ServiceID == "" {
		return m.target()
	}
	return m.ServiceID + "=" + m.target()
}

// FormatMappings joins mappings in -s/-d syntax.
func FormatMappings(ms []Mapping) string {
	parts := make([]string, len(ms))
	for i, m := range ms {
		parts[i] = m.String()
	}
	return strings.Join(parts, ",")
}

// serviceIDPattern is what AWS accepts in DestinationConfig.services; a
// mapping for any other ID could never match a tunnel.
var serviceIDPattern = regexp.MustCompile(`^[a-zA-Z0-9:_-]{1,128}$`)

// splitCompress splits s at sep as boost::split with token_compress_on
// does: a run of separators counts as one, so "a,,b" is [a b] while a
// leading or trailing separator still yields an empty first or last token.
func splitCompress(s string, sep string) []string {
	parts := strings.Split(s, sep)
	out := parts[:1]
	for i := 1; i < len(parts); i++ {
		if parts[i] == "" && i < len(parts)-1 {
			continue
		}
		out = append(out, parts[i])
	}
	return out
}

// ParseMappings parses the value of -s (mode ModeSource) or -d
// (ModeDestination) as the reference does: "PORT" alone (anonymous, V1
// form), or "ID=TARGET,ID=TARGET,...", each part trimmed. A source TARGET
// is PORT (0..65535; 0 picks a free port) or HOST:PORT (host ignored, as
// the reference does); a destination TARGET is PORT, HOST:PORT,
// [V6ADDR]:PORT (sectun extension) or a Unix socket path holding '/'
// (port 1..65535). An empty value yields no mapping (the reference then
// behaves as with -m alone). Unlike the reference, which keeps the first
// of two mappings for one service ID with a warning, a repeated service
// ID is an error. Destination hosts are left empty when not given:
// Parse fills in the default.
func ParseMappings(value string, mode Mode) ([]Mapping, error) {
	opt := "-s"
	if mode == ModeDestination {
		opt = "-d"
	}
	example := opt + " SSH1=5555,HTTP1=8080"
	tokens := splitCompress(value, ",")
	var out []Mapping
	seen := map[string]bool{}
	nonEmpty := 0
	for _, tok := range tokens {
		if tok != "" {
			nonEmpty++
		}
	}
	for _, tok := range tokens {
		if tok == "" {
			continue
		}
		parts := splitCompress(tok, "=")
		switch {
		case len(parts) == 1:
			if len(tokens) > 1 {
				if nonEmpty == 1 {
					return nil, errorf(ErrMapping, "%s %q: a port without a service ID must stand alone: remove the stray comma", opt, value)
				}
				if strings.Contains(value, "=") {
					return nil, errorf(ErrMixedMappings, "%s %q: %q has no service ID while others have one: name every service, e.g. %s", opt, value, strings.TrimSpace(tok), example)
				}
				return nil, errorf(ErrMapping, "%s %q: several ports need service IDs, e.g. %s", opt, value, example)
			}
			m, err := parseTarget(strings.TrimSpace(tok), mode)
			if err != nil {
				return nil, mappingError(err, "%s %q: %v", opt, value, err)
			}
			out = append(out, m)
		case len(parts) == 2:
			id, tgt := strings.TrimSpace(parts[0]), strings.TrimSpace(parts[1])
			if id == "" || tgt == "" {
				return nil, errorf(ErrMapping, "%s %q: %q needs both a service ID and a port, e.g. SSH1=5555", opt, value, tok)
			}
			if !serviceIDPattern.MatchString(id) {
				return nil, errorf(ErrMapping, "%s %q: service ID %q may only hold letters, digits, ':', '_' and '-' (at most 128)", opt, value, id)
			}
			if seen[id] {
				return nil, errorf(ErrDuplicateService, "%s %q: %s is mapped twice: keep one mapping per service ID", opt, value, id)
			}
			seen[id] = true
			m, err := parseTarget(tgt, mode)
			if err != nil {
				return nil, mappingError(err, "%s %q: %s: %v", opt, value, id, err)
			}
			m.ServiceID = id
			out = append(out, m)
		default:
			return nil, errorf(ErrMapping, "%s %q: %q has more than one '=': use ID=PORT pairs separated by commas, e.g. %s", opt, value, tok, example)
		}
	}
	return out, nil
}

// mappingError wraps ErrPort for a port range problem, else ErrMapping.
func mappingError(err error, format string, args ...any) error {
	var pe *portRangeError
	if errors.As(err, &pe) {
		return errorf(ErrPort, format, args...)
	}
	return errorf(ErrMapping, format, args...)
}

// parseTarget parses one mapping's right-hand side (already trimmed).
func parseTarget(t string, mode Mode) (Mapping, error) {
	if t == "" {
		return Mapping{}, errors.New("empty mapping")
	}
	if mode == ModeSource {
		return parseSourceTarget(t)
	}
	return parseDestinationTarget(t)
}

func parseSourceTarget(t string) (Mapping, error) {
	host, port, bracketed, err := splitBracketed(strings.ToLower(t))
	if err != nil {
		return Mapping{}, err
	}
	if !bracketed {
		// The reference splits at ':' and uses only the last part: the port.
		if i := strings.LastIndexByte(t, ':'); i >= 0 {
			host, port = strings.ToLower(t[:i]), t[i+1:]
			// Brackets only around a whole IPv6 address (netip accepts
			// "::%]", with the zone "]", which formats as "[::%]]").
			if a, err := netip.ParseAddr(host); host != "" && !validHostName(host) && (err != nil || !a.Is6() || strings.ContainsAny(host, "[]")) {
				return Mapping{}, fmt.Errorf("%q is not a host name or IP address", host)
			}
		} else {
			port = t
		}
	}
	n, err := parsePort(port, 0)
	if err != nil {
		return Mapping{}, fmt.Errorf("listen %w", err)
	}
	return Mapping{Host: host, Port: n}, nil
}

func parseDestinationTarget(t string) (Mapping, error) {
	if strings.ContainsRune(t, '/') {
		return Mapping{Unix: t}, nil
	}
	lower := strings.ToLower(t)
	host, port, bracketed, err := splitBracketed(lower)
	if err != nil {
		return Mapping{}, err
	}
	if !bracketed {
		switch strings.Count(lower, ":") {
		case 0:
			port = lower
		case 1:
			host, port, _ = strings.Cut(lower, ":")
			if !validHostName(host) {
				return Mapping{}, fmt.Errorf("%q is not a host name or IPv4 address", host)
			}
		default:
			return Mapping{}, fmt.Errorf("%q: put an IPv6 address in brackets, e.g. [::1]:22", t)
		}
	}
	n, err := parsePort(port, 1)
	if err != nil {
		return Mapping{}, err
	}
	return Mapping{Host: host, Port: n}, nil
}
