package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Sentinel errors. Returned errors wrap them with details.
var (
	// ErrInvalidNotification reports a Notification that cannot be sent.
	ErrInvalidNotification = errors.New("notify: invalid notification")
	// ErrInvalidDocument reports a notify payload a device must not act on.
	ErrInvalidDocument = errors.New("notify: invalid notification document")
	// ErrNotConnected reports a publish attempted while the client has no
	// connection to its broker (it keeps reconnecting in the background).
	ErrNotConnected = errors.New("notify: not connected to the MQTT broker")
	// ErrClosed reports use of a Publisher after Close.
	ErrClosed = errors.New("notify: publisher closed")
)

// DefaultTopicPrefix is the first level of the notify topic, as on AWS IoT.
const DefaultTopicPrefix = "$aws"

// ModeDestination is the only clientMode a notification carries.
const ModeDestination = "destination"

// MaxDocumentSize bounds the payload ParseDocument accepts. Real documents
// are well under 2 KiB (AWS tokens are a few hundred bytes).
const MaxDocumentSize = 64 << 10

// Notification is what the service tells one device about one tunnel.
type Notification struct {
	// ThingName selects the topic; it must satisfy ValidThingName.
	ThingName string
	// Token is the destination client access token. Never log it.
	Token string
	// Region is the region the device reports to its local proxy; never
	// empty (device SDKs derive the tunneling endpoint from it).
	Region string
	// Services are the tunnel's service IDs; none means a V1 tunnel.
	Services []string
	// TunnelID is optional and only used in logs.
	TunnelID string
}

// Document is the JSON payload published on the notify topic. Field order
// and names are the wire form.
type Document struct {
	ClientAccessToken string   `json:"clientAccessToken"`
	ClientMode        string   `json:"clientMode"`
	Region            string   `json:"region"`
	Services          []string `json:"services"`
}

// AWS's patterns for thing names and service IDs. They also guarantee that
// a thing name cannot contain the MQTT separators and wildcards '/', '+'
// and '#', which the broker's access rules rely on.
var (
	thingNameRE = regexp.MustCompile(`^[a-zA-Z0-9:_-]{1,128}$`)
	serviceIDRE = regexp.MustCompile(`^[a-zA-Z0-9:_-]{1,128}$`)
	// A region ends up in a host name (device SDKs dial
	// data.tunneling.iot.<region>.amazonaws.com): one DNS label.
	regionRE = regexp.MustCompile(`^[a-zA-Z0-9-]{1,63}$`)
)

// MaxTokenLength bounds a client access token: it travels in an HTTP header
// of a handshake that must fit in 4 KiB.
const MaxTokenLength = 2048

// ValidRegion reports whether s can be a region: 1 to 63 letters, digits
// and '-' (one DNS label).
func ValidRegion(s string) bool { return regionRE.MatchString(s) }

// validToken reports whether s can be sent as an HTTP header value by a
// device: 1 to MaxTokenLength visible ASCII characters (no space, no
// control character, so no header injection).
func validToken(s string) bool {
	if s == "" || len(s) > MaxTokenLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// ValidThingName reports whether s is a valid AWS IoT thing name: 1 to 128
// letters, digits, ':', '_' or '-'.
func ValidThingName(s string) bool { return thingNameRE.MatchString(s) }

// ValidServiceID reports whether s is a valid service ID (AWS's pattern:
// 1 to 128 letters, digits, ':', '_' or '-').
func ValidServiceID(s string) bool { return serviceIDRE.MatchString(s) }

// ValidTopicPrefix reports whether p can start a topic: non-empty, no
// wildcard, no NUL, no leading or trailing '/'.
func ValidTopicPrefix(p string) bool {
	return p != "" && !strings.ContainsAny(p, "+#\x00") &&
		!strings.HasPrefix(p, "/") && !strings.HasSuffix(p, "/")
}

// NotifyTopic returns "<prefix>/things/<thing>/tunnels/notify"; an empty
// prefix means DefaultTopicPrefix.
func NotifyTopic(prefix, thing string) string {
	if prefix == "" {
		prefix = DefaultTopicPrefix
	}
	return prefix + "/things/" + thing + "/tunnels/notify"
}

// Validate reports whether n can be published.
func (n Notification) Validate() error {
	if !ValidThingName(n.ThingName) {
		return fmt.Errorf("%w: thing name %q is not 1-128 letters, digits, ':', '_' or '-'", ErrInvalidNotification, n.ThingName)
	}
	if !validToken(n.Token) {
		return fmt.Errorf("%w: destination access token is empty, longer than %d bytes or not visible ASCII", ErrInvalidNotification, MaxTokenLength)
	}
	if !ValidRegion(n.Region) {
		return fmt.Errorf("%w: region %q is not 1-63 letters, digits or '-'", ErrInvalidNotification, n.Region)
	}
	if err := checkServices(n.Services); err != nil {
		return fmt.Errorf("%w: %s", ErrInvalidNotification, err)
	}
	return nil
}

// Document returns n's payload document. Services is never nil, so that
// the JSON carries "services":[] rather than null.
func (n Notification) Document() Document {
	svcs := make([]string, len(n.Services))
	copy(svcs, n.Services)
	return Document{
		ClientAccessToken: n.Token,
		ClientMode:        ModeDestination,
		Region:            n.Region,
		Services:          svcs,
	}
}

// Marshal validates n and returns its exact payload:
// {"clientAccessToken":"…","clientMode":"destination","region":"…","services":[…]}.
func (n Notification) Marshal() ([]byte, error) {
	if err := n.Validate(); err != nil {
		return nil, err
	}
	return n.Document().Marshal()
}

// Marshal returns d as compact JSON without HTML escaping and without a
// trailing newline.
func (d Document) Marshal() ([]byte, error) {
	if d.Services == nil {
		d.Services = []string{}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(d); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// ParseDocument decodes and validates a notify payload, as a device agent
// must before acting on it: one JSON object of at most MaxDocumentSize
// bytes; clientMode exactly "destination"; a clientAccessToken of 1 to
// MaxTokenLength visible ASCII characters (it becomes an HTTP header); a
// region that is one DNS label (it becomes part of a host name); services absent, null or an array of distinct valid service IDs
// (empty means a V1 tunnel). Unknown fields are ignored, so that additions
// by AWS do not break devices. Errors wrap ErrInvalidDocument.
func ParseDocument(b []byte) (Document, error) {
	if len(b) > MaxDocumentSize {
		return Document{}, fmt.Errorf("%w: %d bytes, more than the %d allowed", ErrInvalidDocument, len(b), MaxDocumentSize)
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return Document{}, fmt.Errorf("%w: not a JSON object", ErrInvalidDocument)
	}
	var d Document
	if err := json.Unmarshal(b, &d); err != nil {
		return Document{}, fmt.Errorf("%w: %v", ErrInvalidDocument, err)
	}
	switch {
	case d.ClientMode != ModeDestination:
		return Document{}, fmt.Errorf("%w: clientMode is %q, want %q", ErrInvalidDocument, d.ClientMode, ModeDestination)
	case d.ClientAccessToken == "":
		return Document{}, fmt.Errorf("%w: missing or empty clientAccessToken", ErrInvalidDocument)
	case !validToken(d.ClientAccessToken):
		// Never echo the token, even a malformed one.
		return Document{}, fmt.Errorf("%w: clientAccessToken is longer than %d bytes or not visible ASCII", ErrInvalidDocument, MaxTokenLength)
	case d.Region == "":
		return Document{}, fmt.Errorf("%w: missing or empty region", ErrInvalidDocument)
	case !ValidRegion(d.Region):
		return Document{}, fmt.Errorf("%w: region %q is not 1-63 letters, digits or '-'", ErrInvalidDocument, d.Region)
	}
	if err := checkServices(d.Services); err != nil {
		return Document{}, fmt.Errorf("%w: %s", ErrInvalidDocument, err)
	}
	if d.Services == nil {
		d.Services = []string{}
	}
	return d, nil
}

func checkServices(svcs []string) error {
	for i, s := range svcs {
		if !ValidServiceID(s) {
			return fmt.Errorf("service ID %q is not 1-128 letters, digits, ':', '_' or '-'", s)
		}
		for _, prev := range svcs[:i] {
			if prev == s {
				return fmt.Errorf("service ID %q appears twice", s)
			}
		}
	}
	return nil
}

// Publisher delivers notifications to devices.
type Publisher interface {
	// NotifyTunnel publishes n on n.ThingName's notify topic at QoS 1.
	NotifyTunnel(ctx context.Context, n Notification) error
	// Close releases the Publisher and waits for its goroutines.
	Close() error
}
