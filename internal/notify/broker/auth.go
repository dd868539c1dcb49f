package broker

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/sectun/sectun/internal/notify"
)

// identity is who a client is, for access control.
type identity struct {
	name  string // the thing for a device; the user or certificate name for an admin
	admin bool
	via   string // "certificate", "password" or "anonymous"
}

// authHook implements the package doc's authentication and access rules.
// It keeps no per-client state: identify recomputes a client's identity
// from what the connection proved (certificate, checked username, client
// ID), so that sessions kept after a disconnect need no bookkeeping.
type authHook struct {
	mqtt.HookBase
	b *Broker
}

func (h *authHook) ID() string { return "sectun-auth" }

func (h *authHook) Provides(b byte) bool {
	return b == mqtt.OnConnect || b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

// OnConnect decides whether a CONNECT is accepted: authentication, the
// session ownership rule and the limits. A refusal sends its own CONNACK
// (mochi's OnConnectAuthenticate path has one code only) and returns an error, on which mochi closes the connection.
func (h *authHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	attrs := []any{"client_id", cl.ID, "remote", cl.Net.Remote, "listener", cl.Net.Listener}
	id, err := h.b.authenticate(cl, pk)
	if err != nil {
		h.b.log.Info("broker: connection refused", append(attrs, "reason", err.Error())...)
		return h.b.connack(cl, packets.ErrBadUsernameOrPassword)
	}
	if r := h.b.lim.connect(cl, id); r != nil {
		attrs = append(attrs, "thing", id.name, "via", id.via, "error", r.err.Error())
		if r.reason == ReasonSessionOwner || r.reason == ReasonThingAuthenticated {
			h.b.lim.refused[r.reason].Add(1)
			h.b.log.Warn("broker: connection refused: client ID of another identity's session", attrs...)
		} else {
			h.b.lim.refuse(r.reason, attrs...)
		}
		return h.b.connack(cl, r.code)
	}
	h.b.log.Debug("broker: client connected", append(attrs, "thing", id.name, "admin", id.admin, "via", id.via)...)
	return nil
}

// OnConnectAuthenticate accepts: OnConnect, which mochi calls first, has
// decided.
func (h *authHook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

// connack sends a refusing CONNACK (MQTT 3.1.1 clients get the matching
// 3.1.1 code: "server unavailable" for MQTT 5's "quota exceeded", "not
// authorized" for its "bad user name or password" and "not authorized")
// and returns the code as the error that makes mochi close the connection.
func (b *Broker) connack(cl *mqtt.Client, code packets.Code) error {
	switch v5 := cl.Properties.ProtocolVersion >= 5; {
	case code == packets.ErrServerUnavailable && v5:
		code = packets.ErrQuotaExceeded
	case code == packets.ErrNotAuthorized && !v5:
		code = packets.ErrBadUsernameOrPassword // 3.1.1: 0x05 "not authorized"
	}
	b.srv.SendConnack(cl, code, false, nil)
	return code
}

// OnACLCheck decides whether cl may subscribe to (write false) or publish
// to (write true) topic.
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	id, err := h.b.identify(cl)
	if err != nil {
		return false
	}
	ok := allowed(id, h.b.cfg.TopicPrefix, topic, write)
	if !ok {
		h.b.log.Info("broker: access refused", "thing", id.name, "topic", topic, "publish", write, "client_id", cl.ID)
		return false
	}
	// A read check on a disconnected client is mochi about to queue a
	// message for its session (a SUBSCRIBE comes from a connected one).
	return write || h.b.lim.mayQueue(cl, topic)
}

var errAnonymous = errors.New("anonymous clients are not allowed on this listener: give a username and password or a client certificate")

// authenticate checks a CONNECT and returns the client's identity.
func (b *Broker) authenticate(cl *mqtt.Client, pk packets.Packet) (identity, error) {
	if cl.ID == mqtt.InlineClientId {
		return identity{}, fmt.Errorf("client ID %q is reserved", cl.ID)
	}
	id, err := b.identify(cl)
	if err != nil {
		return identity{}, err
	}
	if id.via == "password" && !passwordOK(b.users[id.name].Password, pk.Connect.Password) {
		return identity{}, fmt.Errorf("wrong password for user %q", id.name)
	}
	if !id.admin && pk.Connect.ClientIdentifier != "" &&
		cl.ID != id.name && !strings.HasPrefix(cl.ID, id.name+"@") {
		return identity{}, fmt.Errorf("client ID %q does not belong to thing %q: use %q, %q or an empty client ID", cl.ID, id.name, id.name, id.name+"@<suffix>")
	}
	if cl.Properties.Will.Flag == 1 && !allowed(id, b.cfg.TopicPrefix, cl.Properties.Will.TopicName, true) {
		return identity{}, fmt.Errorf("will topic %q is not one %q may publish to", cl.Properties.Will.TopicName, id.name)
	}
	return id, nil
}

// identify returns who cl is, by the package doc's rules, without
// checking the password (authenticate does, once, at CONNECT).
func (b *Broker) identify(cl *mqtt.Client) (identity, error) {
	if name, ok := certIdentity(cl.Net.Conn); ok {
		if b.adminCerts[name] {
			return identity{name: name, admin: true, via: "certificate"}, nil
		}
		if !notify.ValidThingName(name) {
			return identity{}, fmt.Errorf("certificate identity %q is not a valid thing name", name)
		}
		return identity{name: name, via: "certificate"}, nil
	}
	if len(cl.Properties.Username) > 0 {
		u, ok := b.users[string(cl.Properties.Username)]
		if !ok {
			return identity{}, fmt.Errorf("unknown user %q", cl.Properties.Username)
		}
		return identity{name: u.Name, admin: u.Admin, via: "password"}, nil
	}
	if !b.anonymous[cl.Net.Listener] {
		return identity{}, errAnonymous
	}
	thing, _, _ := strings.Cut(cl.ID, "@")
	if !notify.ValidThingName(thing) {
		return identity{}, fmt.Errorf("anonymous client ID %q does not start with a valid thing name (it names the client's thing)", cl.ID)
	}
	return identity{name: thing, via: "anonymous"}, nil
}

// certIdentity returns the identity of c's verified client certificate:
// Subject CommonName, else the first DNS SAN, else the first URI SAN.
func certIdentity(c net.Conn) (string, bool) {
	cs, ok := c.(interface{ ConnectionState() tls.ConnectionState })
	if !ok {
		return "", false
	}
	st := cs.ConnectionState()
	if len(st.VerifiedChains) == 0 || len(st.PeerCertificates) == 0 {
		return "", false
	}
	leaf := st.PeerCertificates[0]
	switch {
	case leaf.Subject.CommonName != "":
		return leaf.Subject.CommonName, true
	case len(leaf.DNSNames) > 0:
		return leaf.DNSNames[0], true
	case len(leaf.URIs) > 0:
		return leaf.URIs[0].String(), true
	}
	return "", false
}

// passwordOK compares in constant time (hashing first hides the length).
func passwordOK(want string, got []byte) bool {
	w := sha256.Sum256([]byte(want))
	g := sha256.Sum256(got)
	return subtle.ConstantTimeCompare(w[:], g[:]) == 1 && len(got) > 0
}

// allowed is the access rule of the package doc. topic is a topic filter
// when subscribing (write false) and a topic name when publishing.
func allowed(id identity, prefix, topic string, write bool) bool {
	if id.admin {
		return true
	}
	own := prefix + "/things/" + id.name + "/"
	if !strings.HasPrefix(topic, own) {
		return false
	}
	if write && strings.HasPrefix(topic, own+"tunnels/") {
		return false
	}
	// A thing name holds no '/', '+' or '#' (checked again here), so own is
	// literal and any wildcard after it stays within the thing's topics.
	return !strings.ContainsAny(id.name, "/+#")
}
