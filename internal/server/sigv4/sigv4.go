package sigv4

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Algorithm is the only signing algorithm accepted.
const Algorithm = "AWS4-HMAC-SHA256"

// DefaultService is the signing name the AWS CLI and SDKs use for the
// IoTSecuredTunneling API (botocore's signingName).
const DefaultService = "IoTSecuredTunneling"

// DefaultMaxSkew is how far X-Amz-Date may be from the server's clock.
const DefaultMaxSkew = 15 * time.Minute

// AWS error codes Verify reports.
const (
	CodeMissingAuthenticationToken = "MissingAuthenticationTokenException"
	CodeIncompleteSignature        = "IncompleteSignatureException"
	CodeUnrecognizedClient         = "UnrecognizedClientException"
	CodeInvalidSignature           = "InvalidSignatureException"
)

// Sentinel errors wrapped by *Error.
var (
	// ErrMissingAuthentication: the request has no Authorization header.
	ErrMissingAuthentication = errors.New("sigv4: missing authentication")
	// ErrIncompleteSignature: the Authorization header or X-Amz-Date is
	// malformed or incomplete.
	ErrIncompleteSignature = errors.New("sigv4: incomplete signature")
	// ErrUnrecognizedClient: the access key ID is unknown.
	ErrUnrecognizedClient = errors.New("sigv4: unrecognized access key")
	// ErrInvalidSignature: the signature, credential scope or signed header
	// list is wrong.
	ErrInvalidSignature = errors.New("sigv4: invalid signature")
	// ErrSignatureExpired: X-Amz-Date is too far from the server's clock.
	// It is reported with the InvalidSignatureException code, as AWS does,
	// and also matches ErrInvalidSignature.
	ErrSignatureExpired = fmt.Errorf("%w: signature expired", ErrInvalidSignature)
)

// Error is a verification failure as AWS reports it.
type Error struct {
	// Code is the AWS error code (the X-Amzn-ErrorType / __type value).
	Code string
	// Status is the HTTP status AWS answers with.
	Status int
	// Message is AWS's human-readable message.
	Message string
	err     error
}

func (e *Error) Error() string { return "sigv4: " + e.Code + ": " + e.Message }

// Unwrap returns the sentinel this error belongs to.
func (e *Error) Unwrap() error { return e.err }

func newError(sentinel error, code string, status int, msg string) *Error {
	return &Error{Code: code, Status: status, Message: msg, err: sentinel}
}

func incomplete(msg string) *Error {
	return newError(ErrIncompleteSignature, CodeIncompleteSignature, http.StatusBadRequest, msg)
}

func invalid(msg string) *Error {
	return newError(ErrInvalidSignature, CodeInvalidSignature, http.StatusForbidden, msg)
}

const mismatchMessage = "The request signature we calculated does not match the signature you provided. " +
	"Check your AWS Secret Access Key and signing method. Consult the service documentation for details."

// CredentialStore finds the secret access key of an access key ID.
type CredentialStore interface {
	Lookup(accessKeyID string) (secret string, ok bool)
}

// Credentials maps access key IDs to secret access keys. It must not be
// modified while a Verifier uses it.
type Credentials map[string]string

// Lookup returns the secret of accessKeyID.
func (c Credentials) Lookup(accessKeyID string) (string, bool) {
	s, ok := c[accessKeyID]
	return s, ok
}

// CredentialsFunc adapts a function to CredentialStore.
type CredentialsFunc func(accessKeyID string) (secret string, ok bool)

// Lookup calls f.
func (f CredentialsFunc) Lookup(accessKeyID string) (string, bool) { return f(accessKeyID) }

// Verifier checks SigV4 signatures.
type Verifier struct {
	// Credentials finds secrets by access key ID. Required.
	Credentials CredentialStore
	// Service is the signing name the credential scope must carry;
	// "" means DefaultService.
	Service string
	// MaxSkew is how far X-Amz-Date may be from now in either direction;
	// 0 means DefaultMaxSkew.
	MaxSkew time.Duration
}

// Authorization is a parsed AWS4-HMAC-SHA256 Authorization header.
type Authorization struct {
	AccessKeyID   string
	Date          string // YYYYMMDD of the credential scope
	Region        string
	Service       string
	Terminator    string // "aws4_request" when well formed
	SignedHeaders []string
	Signature     string
	// rawSignedHeaders is the SignedHeaders value as sent; it is what the
	// client put in its canonical request.
	rawSignedHeaders string
}

// ParseAuthorization parses the value of an Authorization header of the
// form "AWS4-HMAC-SHA256 Credential=AKID/YYYYMMDD/region/service/aws4_request,
// SignedHeaders=a;b, Signature=hex". It checks syntax only. Errors are
// *Error with the IncompleteSignatureException code.
func ParseAuthorization(h string) (*Authorization, error) {
	alg, rest, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || alg != Algorithm {
		return nil, incomplete("Authorization header requires the '" + Algorithm + "' algorithm.")
	}
	var cred, signed, sig string
	var haveCred, haveSigned, haveSig bool
	for part := range strings.SplitSeq(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, incomplete("Authorization header parameters must be of the form 'Key=Value'.")
		}
		var dst *string
		var seen *bool
		switch k {
		case "Credential":
			dst, seen = &cred, &haveCred
		case "SignedHeaders":
			dst, seen = &signed, &haveSigned
		case "Signature":
			dst, seen = &sig, &haveSig
		default:
			return nil, incomplete("Authorization header has an unknown parameter '" + truncate(k, 32) + "'.")
		}
		if *seen {
			return nil, incomplete("Authorization header has a repeated '" + k + "' parameter.")
		}
		*dst, *seen = v, true
	}
	var missing []string
	if !haveCred {
		missing = append(missing, "Authorization header requires 'Credential' parameter.")
	}
	if !haveSig {
		missing = append(missing, "Authorization header requires 'Signature' parameter.")
	}
	if !haveSigned {
		missing = append(missing, "Authorization header requires 'SignedHeaders' parameter.")
	}
	if len(missing) > 0 {
		return nil, incomplete(strings.Join(missing, " "))
	}
	scope := strings.Split(cred, "/")
	if len(scope) != 5 || scope[0] == "" || scope[1] == "" || scope[2] == "" || scope[3] == "" {
		return nil, incomplete("Credential must have the form 'AccessKeyId/YYYYMMDD/region/service/aws4_request'.")
	}
	if signed == "" || sig == "" {
		return nil, incomplete("Authorization header has an empty 'SignedHeaders' or 'Signature' parameter.")
	}
	a := &Authorization{
		AccessKeyID:      scope[0],
		Date:             scope[1],
		Region:           scope[2],
		Service:          scope[3],
		Terminator:       scope[4],
		SignedHeaders:    strings.Split(signed, ";"),
		Signature:        sig,
		rawSignedHeaders: signed,
	}
	for _, name := range a.SignedHeaders {
		if name == "" || name != strings.ToLower(name) {
			return nil, incomplete("SignedHeaders must be a ';'-separated list of lower-case header names.")
		}
	}
	return a, nil
}

const amzDateFormat = "20060102T150405Z"

// Verify checks the SigV4 signature of r, whose body (already read) is
// body, at time now, and returns the access key ID that signed it. r.Body
// is not read.
func (v *Verifier) Verify(r *http.Request, body []byte, now time.Time) (accessKeyID string, err error) {
	hs := r.Header.Values("Authorization")
	if len(hs) == 0 {
		return "", newError(ErrMissingAuthentication, CodeMissingAuthenticationToken, http.StatusForbidden, "Missing Authentication Token")
	}
	if len(hs) > 1 {
		return "", incomplete("Only one Authorization header is allowed.")
	}
	a, err := ParseAuthorization(hs[0])
	if err != nil {
		return "", err
	}

	service := v.Service
	if service == "" {
		service = DefaultService
	}
	if a.Service != service {
		return "", invalid("Credential should be scoped to correct service: '" + service + "'. ")
	}
	if a.Terminator != "aws4_request" {
		return "", invalid("Credential should be scoped with a valid terminator: 'aws4_request', not '" + truncate(a.Terminator, 32) + "'. ")
	}

	dates := r.Header.Values("X-Amz-Date")
	if len(dates) != 1 {
		return "", incomplete("Authorization header requires existence of exactly one 'X-Amz-Date' header.")
	}
	amzDate := dates[0]
	t, err := time.Parse(amzDateFormat, amzDate)
	if err != nil {
		return "", incomplete("X-Amz-Date must be in the ISO-8601 basic format YYYYMMDD'T'HHMMSS'Z'.")
	}
	if a.Date != amzDate[:8] {
		return "", invalid(fmt.Sprintf("Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '%s' != '%s', from '%s'.",
			truncate(a.Date, 16), amzDate[:8], amzDate))
	}
	if !hasHost(a.SignedHeaders) {
		return "", invalid("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
	}
	if name := unsignedRequired(r, a.SignedHeaders); name != "" {
		return "", invalid("'" + name + "' is in the request but not in the SignedHeaders of the AWS Authorization: it selects the operation or describes the body, so it must be signed (the AWS SDKs and CLI sign it).")
	}

	skew := v.MaxSkew
	if skew <= 0 {
		skew = DefaultMaxSkew
	}
	nowS := now.UTC().Format(amzDateFormat)
	mins := strconv.Itoa(int(skew / time.Minute))
	if t.Before(now.Add(-skew)) {
		return "", newError(ErrSignatureExpired, CodeInvalidSignature, http.StatusForbidden,
			"Signature expired: "+amzDate+" is now earlier than "+now.Add(-skew).UTC().Format(amzDateFormat)+" ("+nowS+" - "+mins+" min.)")
	}
	if t.After(now.Add(skew)) {
		return "", newError(ErrSignatureExpired, CodeInvalidSignature, http.StatusForbidden,
			"Signature not yet current: "+amzDate+" is still later than "+now.Add(skew).UTC().Format(amzDateFormat)+" ("+nowS+" + "+mins+" min.)")
	}

	if v.Credentials == nil {
		return "", newError(ErrUnrecognizedClient, CodeUnrecognizedClient, http.StatusForbidden, "The security token included in the request is invalid.")
	}
	secret, ok := v.Credentials.Lookup(a.AccessKeyID)
	if !ok {
		return "", newError(ErrUnrecognizedClient, CodeUnrecognizedClient, http.StatusForbidden, "The security token included in the request is invalid.")
	}

	sum := sha256.Sum256(body)
	payloadHash := hex.EncodeToString(sum[:])
	if hs := r.Header.Values("X-Amz-Content-Sha256"); len(hs) > 0 {
		// The header is part of what was signed, but the body must also be
		// the one it describes; UNSIGNED-PAYLOAD is not accepted here.
		if len(hs) != 1 || hs[0] != payloadHash {
			return "", invalid("The provided 'x-amz-content-sha256' header does not match what was computed.")
		}
	}

	creq := CanonicalRequest(r, a.SignedHeaders, a.rawSignedHeaders, payloadHash)
	scope := a.Date + "/" + a.Region + "/" + a.Service + "/aws4_request"
	creqSum := sha256.Sum256([]byte(creq))
	sts := Algorithm + "\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(creqSum[:])
	key := SigningKey(secret, a.Date, a.Region, a.Service)
	want := hex.EncodeToString(hmacSHA256(key, []byte(sts)))
	if subtle.ConstantTimeCompare([]byte(want), []byte(a.Signature)) != 1 {
		return "", invalid(mismatchMessage)
	}
	return a.AccessKeyID, nil
}

// mustSign are the headers that, when a request carries them, must be
// among its signed headers: they select the operation (X-Amz-Target) or
// describe the body (Content-Type, X-Amz-Content-Sha256; the body itself
// is always covered through the payload hash). Otherwise a signature
// captured for one operation could be replayed as another. The AWS SDKs
// and CLI sign every header they send but a few (User-Agent, Expect,
// X-Amzn-Trace-Id), these included.
var mustSign = [...]string{"X-Amz-Target", "Content-Type", "X-Amz-Content-Sha256"}

// unsignedRequired returns the first header of mustSign that r carries but
// signed does not list, or "".
func unsignedRequired(r *http.Request, signed []string) string {
	for _, name := range mustSign {
		if _, ok := r.Header[name]; !ok {
			continue
		}
		lower := strings.ToLower(name)
		found := false
		for _, n := range signed {
			if n == lower {
				found = true
				break
			}
		}
		if !found {
			return name
		}
	}
	return ""
}

func hasHost(names []string) bool {
	for _, n := range names {
		if n == "host" || n == ":authority" {
			return true
		}
	}
	return false
}

// SigningKey derives the SigV4 signing key.
func SigningKey(secret, date, region, service string) []byte {
	k := hmacSHA256([]byte("AWS4"+secret), []byte(date))
	k = hmacSHA256(k, []byte(region))
	k = hmacSHA256(k, []byte(service))
	return hmacSHA256(k, []byte("aws4_request"))
}

func hmacSHA256(key, data []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(data)
	return h.Sum(nil)
}

// CanonicalRequest builds the SigV4 canonical request of r for the given
// signed header names (in the order the client listed them; rawSigned is
// that list as sent) and payload hash.
func CanonicalRequest(r *http.Request, signed []string, rawSigned, payloadHash string) string {
	var b strings.Builder
	b.WriteString(r.Method)
	b.WriteByte('\n')
	b.WriteString(canonicalURI(r.URL))
	b.WriteByte('\n')
	b.WriteString(canonicalQuery(r.URL.RawQuery))
	b.WriteByte('\n')
	for _, name := range signed {
		b.WriteString(name)
		b.WriteByte(':')
		for i, v := range headerValues(r, name) {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(trimValue(v))
		}
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	b.WriteString(rawSigned)
	b.WriteByte('\n')
	b.WriteString(payloadHash)
	return b.String()
}

// headerValues returns the values of a header as the client sent them. Go's
// server moves Host, Content-Length and Transfer-Encoding out of r.Header.
func headerValues(r *http.Request, name string) []string {
	switch name {
	case "host", ":authority":
		return []string{r.Host}
	case "content-length":
		if vs := r.Header.Values(name); len(vs) > 0 {
			return vs
		}
		if r.ContentLength >= 0 {
			return []string{strconv.FormatInt(r.ContentLength, 10)}
		}
		return nil
	case "transfer-encoding":
		if vs := r.Header.Values(name); len(vs) > 0 {
			return vs
		}
		if len(r.TransferEncoding) > 0 {
			return []string{strings.Join(r.TransferEncoding, ",")}
		}
		return nil
	}
	return r.Header.Values(name)
}

// trimValue trims a header value and collapses inner runs of spaces, as
// the SDK signers do.
func trimValue(v string) string {
	v = strings.TrimSpace(v)
	if !strings.Contains(v, "  ") {
		return v
	}
	var b strings.Builder
	b.Grow(len(v))
	space := false
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == ' ' {
			if space {
				continue
			}
			space = true
		} else {
			space = false
		}
		b.WriteByte(c)
	}
	return b.String()
}

// canonicalURI returns the path as sent, percent-encoded once more (all
// services but S3 sign the double-encoded path).
func canonicalURI(u *url.URL) string {
	p := u.EscapedPath()
	if p == "" {
		return "/"
	}
	return escape(p, true)
}

// canonicalQuery decodes each name and value, encodes it the SigV4 way and
// sorts the pairs after encoding.
func canonicalQuery(raw string) string {
	if raw == "" {
		return ""
	}
	type pair struct{ k, v string }
	var ps []pair
	for part := range strings.SplitSeq(raw, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		ps = append(ps, pair{escape(unescapeQuery(k), false), escape(unescapeQuery(v), false)})
	}
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].k != ps[j].k {
			return ps[i].k < ps[j].k
		}
		return ps[i].v < ps[j].v
	})
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(p.k)
		b.WriteByte('=')
		b.WriteString(p.v)
	}
	return b.String()
}

func unescapeQuery(s string) string {
	u, err := url.QueryUnescape(s)
	if err != nil {
		return s // malformed escapes are signed as sent
	}
	return u
}

// escape percent-encodes everything outside the RFC 3986 unreserved set
// (and '/' when keepSlash), with upper-case hex.
func escape(s string, keepSlash bool) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
			c == '-' || c == '_' || c == '.' || c == '~' || c == '/' && keepSlash {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
