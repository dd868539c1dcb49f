package operator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// signingName is the service name in IoTSecuredTunneling's SigV4 scope.
const signingName = "IoTSecuredTunneling"

// maxResponse bounds an API answer.
const maxResponse = 1 << 20

// ErrAPI is wrapped by *APIError.
var ErrAPI = errors.New("operator: API error")

// APIError is an error answer of the management API (AWS JSON 1.1 form).
type APIError struct {
	Op         string
	StatusCode int
	Code       string // e.g. ResourceNotFoundException
	Message    string
}

func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.StatusCode)
	}
	return fmt.Sprintf("%s: %s (HTTP %d): %s", e.Op, e.Code, e.StatusCode, msg)
}

// Unwrap returns ErrAPI.
func (e *APIError) Unwrap() error { return ErrAPI }

// Client calls the IoTSecuredTunneling management API of tunneld or AWS
// with SigV4-signed requests. It is safe for concurrent use.
type Client struct {
	// Endpoint is the API's base URL, e.g. https://127.0.0.1:8443 or
	// https://api.tunneling.iot.us-east-1.amazonaws.com.
	Endpoint string
	// Region is the signing region.
	Region string
	// Credentials sign the requests.
	Credentials aws.Credentials
	// HTTP is the client used (nil: one with a 30 s timeout and TLS).
	HTTP *http.Client
}

// DefaultEndpoint returns AWS's API endpoint for a region.
func DefaultEndpoint(region string) string {
	host := "api.tunneling.iot." + region + ".amazonaws.com"
	if strings.HasPrefix(region, "cn-") {
		host += ".cn"
	}
	return "https://" + host
}

// NewHTTPClient returns an HTTP client for the API with the given TLS
// configuration (nil: system roots).
func NewHTTPClient(t *tls.Config) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if t != nil {
		tr.TLSClientConfig = t
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// Call invokes operation op with in as the JSON request and decodes the
// answer into out (unless nil). API errors are *APIError.
func (c *Client) Call(ctx context.Context, op string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	u, err := url.Parse(strings.TrimSuffix(c.Endpoint, "/") + "/")
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%s: endpoint %q: want http(s)://host[:port]", op, c.Endpoint)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "IoTSecuredTunneling."+op)
	sum := sha256.Sum256(body)
	if err := v4.NewSigner().SignHTTP(ctx, c.Credentials, req, hex.EncodeToString(sum[:]), signingName, c.Region, time.Now()); err != nil {
		return fmt.Errorf("%s: signing: %w", op, err)
	}
	hc := c.HTTP
	if hc == nil {
		hc = NewHTTPClient(nil)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("%s: reading the answer: %w", op, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Type    string `json:"__type"`
			Message string `json:"message"`
			Msg     string `json:"Message"`
		}
		json.Unmarshal(data, &e)
		code := e.Type
		if code == "" {
			code = resp.Header.Get("X-Amzn-ErrorType")
		}
		if i := strings.LastIndexByte(code, '#'); i >= 0 {
			code = code[i+1:]
		}
		code, _, _ = strings.Cut(code, ":")
		if e.Message == "" {
			e.Message = e.Msg
		}
		if code == "" {
			code = "UnknownError"
		}
		return &APIError{Op: op, StatusCode: resp.StatusCode, Code: code, Message: e.Message}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s: decoding the answer: %w", op, err)
		}
	}
	return nil
}

// OpenTunnelInput is the OpenTunnel request.
type OpenTunnelInput struct {
	Description       string             `json:"description,omitempty"`
	DestinationConfig *DestinationConfig `json:"destinationConfig,omitempty"`
	TimeoutConfig     *TimeoutConfig     `json:"timeoutConfig,omitempty"`
}

// DestinationConfig names the device and the tunnel's services.
type DestinationConfig struct {
	ThingName string   `json:"thingName,omitempty"`
	Services  []string `json:"services"`
}

// TimeoutConfig bounds the tunnel's lifetime.
type TimeoutConfig struct {
	MaxLifetimeTimeoutMinutes int `json:"maxLifetimeTimeoutMinutes"`
}

// OpenTunnelOutput is the OpenTunnel answer. The tokens are secrets.
type OpenTunnelOutput struct {
	TunnelID               string `json:"tunnelId"`
	TunnelArn              string `json:"tunnelArn"`
	SourceAccessToken      string `json:"sourceAccessToken"`
	DestinationAccessToken string `json:"destinationAccessToken"`
}

// OpenTunnel opens a tunnel.
func (c *Client) OpenTunnel(ctx context.Context, in OpenTunnelInput) (OpenTunnelOutput, error) {
	var out OpenTunnelOutput
	err := c.Call(ctx, "OpenTunnel", in, &out)
	if err == nil && (out.TunnelID == "" || out.SourceAccessToken == "") {
		err = errors.New("OpenTunnel: the answer has no tunnelId or sourceAccessToken")
	}
	return out, err
}

// CloseTunnel closes a tunnel (both ends are disconnected).
func (c *Client) CloseTunnel(ctx context.Context, tunnelID string) error {
	return c.Call(ctx, "CloseTunnel", map[string]any{"tunnelId": tunnelID}, nil)
}

// ConnectionState is one end's state in DescribeTunnel.
type ConnectionState struct {
	Status string `json:"status"` // CONNECTED or DISCONNECTED
}

// TunnelDescription is the part of DescribeTunnel's answer used here.
type TunnelDescription struct {
	TunnelID                   string           `json:"tunnelId"`
	Status                     string           `json:"status"` // OPEN or CLOSED
	SourceConnectionState      *ConnectionState `json:"sourceConnectionState"`
	DestinationConnectionState *ConnectionState `json:"destinationConnectionState"`
}

// DescribeTunnel returns a tunnel's status and connection states.
func (c *Client) DescribeTunnel(ctx context.Context, tunnelID string) (TunnelDescription, error) {
	var out struct {
		Tunnel TunnelDescription `json:"tunnel"`
	}
	err := c.Call(ctx, "DescribeTunnel", map[string]any{"tunnelId": tunnelID}, &out)
	return out.Tunnel, err
}
