package localproxy

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"os"
)

// machineIDFiles hold a stable ID of the machine (systemd, D-Bus).
var machineIDFiles = []string{"/etc/machine-id", "/var/lib/dbus/machine-id"}

// DerivedClientToken is the client token a local proxy without -i uses:
// an HMAC-SHA256, keyed with the access token, of this machine's host
// name and machine ID (/etc/machine-id), in hex (64 characters). The
// service binds the access token to the client token of its first
// connection, so a process restarted on the same machine with the same
// access token (after a mistake in -d or -s, say) reconnects, where a
// random client token would find the token used.
//
// The cost: a copy of the access token is no longer worthless once it has
// been used. Whoever holds it and also knows the host name and machine ID
// of the machine that used it can compute the client token and take over
// that end of the tunnel (the service replaces the first connection).
// The machine ID is not sent anywhere, but every local user can read it;
// --single-use-token restores the reference's behaviour.
func DerivedClientToken(accessToken string) string {
	h := hmac.New(sha256.New, []byte(accessToken))
	h.Write([]byte("sectun localproxy client token v1\x00"))
	host, _ := os.Hostname()
	h.Write([]byte(host))
	h.Write([]byte{0})
	for _, p := range machineIDFiles {
		if b, err := os.ReadFile(p); err == nil && len(bytes.TrimSpace(b)) > 0 {
			h.Write(bytes.TrimSpace(b))
			break
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}
