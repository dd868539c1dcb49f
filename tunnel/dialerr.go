package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	neturl "net/url"
	"strings"
	"time"

	"github.com/sectun/sectun/internal/wsconn"
)

// tlsProbeTimeout bounds the extra TLS handshake that tells whether a
// ws:// endpoint that failed oddly speaks TLS.
const tlsProbeTimeout = 3 * time.Second

// classifyDialError turns a failed WebSocket dial into the error the user
// sees: a *HandshakeError for an HTTP refusal, ErrTLSRequired or
// ErrTLSNotSpoken for a wrong scheme, ErrCertificateUntrusted for a
// certificate that does not verify, else the network error.
func classifyDialError(ctx context.Context, cfg *Config, url string, err error) error {
	var he *wsconn.HandshakeError
	if errors.As(err, &he) {
		if he.StatusCode == 400 && strings.Contains(he.Body, "HTTPS server") {
			// Go's TLS servers answer a plain HTTP request so.
			return fmt.Errorf("%w (%s)", ErrTLSRequired, url)
		}
		return &HandshakeError{
			StatusCode: he.StatusCode,
			ChannelID:  he.Header.Get("channel-id"),
			Body:       he.Body,
			Reason:     handshakeReason(he.StatusCode, he.Body, cfg.Mode),
		}
	}
	var rh tls.RecordHeaderError
	if errors.As(err, &rh) {
		return fmt.Errorf("%w (%s: %v)", ErrTLSNotSpoken, url, err)
	}
	var ua x509.UnknownAuthorityError
	var hne x509.HostnameError
	var ci x509.CertificateInvalidError
	var ve *tls.CertificateVerificationError
	if errors.As(err, &ua) || errors.As(err, &hne) || errors.As(err, &ci) || errors.As(err, &ve) {
		return fmt.Errorf("%w: %v: add its CA to Config.TLS (RootCAs; TLSConfig reads a CA file or directory), or skip verification (InsecureSkipVerify, tests only)", ErrCertificateUntrusted, err)
	}
	if u, perr := neturl.Parse(url); perr == nil && u.Scheme == "ws" && ctx.Err() == nil && speaksTLS(ctx, u) {
		return fmt.Errorf("%w (%s: %v)", ErrTLSRequired, url, err)
	}
	return fmt.Errorf("tunnel: connect: %w", err)
}

// speaksTLS reports whether the ws:// endpoint u completes a TLS
// handshake: then the plain WebSocket failed because it wants wss://.
func speaksTLS(ctx context.Context, u *neturl.URL) bool {
	ctx, cancel := context.WithTimeout(ctx, tlsProbeTimeout)
	defer cancel()
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return false
	}
	defer c.Close()
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, ServerName: u.Hostname()}) // #nosec: only asks whether TLS is spoken
	return tc.HandshakeContext(ctx) == nil
}
