package broker

import (
	"crypto/tls"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/sectun/sectun/internal/notify"
	"github.com/sectun/sectun/internal/notify/internal/testpki"
)

// ownershipBroker has an anonymous loopback listener, and a TLS listener
// where a device certificate (or a password) authenticates.
func ownershipBroker(t *testing.T) (b *Broker, logs *logBuffer, certTLS func(cn string) *tls.Config, tlsURL string) {
	t.Helper()
	ca := testpki.New(t, "devices")
	srv := ca.Server("broker")
	b, logs = startBroker(t, Config{
		TLSAddr: "127.0.0.1:0", CertFile: srv.CertFile, KeyFile: srv.KeyFile, ClientCAFile: ca.CertFile,
		Users: []User{{Name: "dev-1", Password: "pw1"}},
	})
	return b, logs, func(cn string) *tls.Config {
		c := &tls.Config{RootCAs: ca.Pool}
		if cn != "" {
			c.Certificates = []tls.Certificate{ca.Client(cn, nil).TLS}
		}
		return c
	}, sslURL(b.TLSAddr())
}

// An anonymous loopback client cannot take over, nor resume, the session
// of a device that authenticated with its certificate: CONNACK
// "identifier rejected", the live device stays connected, and the
// notification queued while it was away is delivered to it, not to the
// intruder.
func TestSessionOwnedByCertificate(t *testing.T) {
	b, logs, certTLS, tlsURL := ownershipBroker(t)
	topic := "$aws/things/dev-1/tunnels/notify"
	dev := mustDial(t, clientOpts{url: tlsURL, id: "dev-1", persistent: true, tls: certTLS("dev-1")})
	if code := dev.subscribe(t, topic); code != 1 {
		t.Fatalf("SUBACK %#x", code)
	}

	for _, persistent := range []bool{true, false} {
		_, err := dial(t, clientOpts{url: tcpURL(b), id: "dev-1", persistent: persistent})
		if !errors.Is(err, packets.ErrorRefusedIDRejected) {
			t.Fatalf("anonymous dev-1 (persistent %v) against a live certificate session: %v, want identifier rejected", persistent, err)
		}
	}
	// Nor with another client ID naming the same thing: while its device
	// holds an authenticated session, the thing cannot be claimed
	// anonymously (CONNACK "not authorized"), so its notifications do not
	// go to an anonymous subscriber either.
	if _, err := dial(t, clientOpts{url: tcpURL(b), id: "dev-1@intruder"}); !errors.Is(err, packets.ErrorRefusedNotAuthorised) {
		t.Fatalf("anonymous dev-1@intruder beside a certificate session: %v, want not authorized", err)
	}
	// Nor through the TLS listener without a certificate.
	if _, err := dial(t, clientOpts{url: tlsURL, id: "dev-1", persistent: true, tls: certTLS("")}); !errors.Is(err, packets.ErrorRefusedIDRejected) {
		t.Fatalf("anonymous TLS dev-1: %v", err)
	}
	select {
	case err := <-dev.lost:
		t.Fatalf("the device was disconnected: %v", err)
	default:
	}
	mustNotify(t, b, note("dev-1"))
	if m := dev.expectOnly(t, topic); !strings.Contains(string(m.Payload()), "tok-dev-1") {
		t.Fatalf("payload %s", m.Payload())
	}

	// Offline: the session is kept with a queued notification.
	dev.Disconnect(100)
	waitFor(t, "the device's session to go offline", func() bool {
		cl, ok := b.srv.Clients.Get("dev-1")
		return ok && cl.Closed()
	})
	mustNotify(t, b, notifyWith("dev-1", "queued-token"))
	if _, err := dial(t, clientOpts{url: tcpURL(b), id: "dev-1", persistent: true}); !errors.Is(err, packets.ErrorRefusedIDRejected) {
		t.Fatalf("anonymous resume of the offline certificate session: %v", err)
	}
	dev2 := mustDial(t, clientOpts{url: tlsURL, id: "dev-1", persistent: true, tls: certTLS("dev-1")})
	if m := dev2.expectOnly(t, topic); !strings.Contains(string(m.Payload()), "queued-token") {
		t.Fatalf("resumed session got %s", m.Payload())
	}
	// Another certificate, and a certificate's suffixed client ID, are
	// other identities or other sessions: dev-2's certificate may not
	// take dev-1's client ID (the client ID rule), dev-1@x is a new session.
	if _, err := dial(t, clientOpts{url: tlsURL, id: "dev-1", persistent: true, tls: certTLS("dev-2")}); err == nil {
		t.Fatal("dev-2's certificate took dev-1's client ID")
	}
	mustDial(t, clientOpts{url: tlsURL, id: "dev-1@x", persistent: true, tls: certTLS("dev-1")})
	// The thing's password is an operator-issued credential for the same
	// thing: it may take the session over.
	dev3 := mustDial(t, clientOpts{url: tcpURL(b), id: "dev-1", persistent: true, user: "dev-1", pass: "pw1"})
	mustNotify(t, b, notifyWith("dev-1", "after-password-takeover"))
	if m := dev3.expectOnly(t, topic); !strings.Contains(string(m.Payload()), "after-password-takeover") {
		t.Fatalf("payload %s", m.Payload())
	}

	if n := b.Stats().Refused[ReasonSessionOwner]; n != 4 {
		t.Errorf("Stats.Refused[%s] = %d, want 4", ReasonSessionOwner, n)
	}
	if n := b.Stats().Refused[ReasonThingAuthenticated]; n != 1 {
		t.Errorf("Stats.Refused[%s] = %d, want 1", ReasonThingAuthenticated, n)
	}
	if !strings.Contains(logs.String(), `belongs to thing \"dev-1\" (client certificate), not to anonymous thing \"dev-1\"`) {
		t.Errorf("refusal not logged:\n%s", logs.String())
	}
}

// A session an anonymous client made may be taken over by the thing's
// certificate, which then owns it: the anonymous client cannot come back.
func TestAnonymousSessionTakenByCertificate(t *testing.T) {
	b, _, certTLS, tlsURL := ownershipBroker(t)
	topic := "$aws/things/dev-2/tunnels/notify"
	anon := mustDial(t, clientOpts{url: tcpURL(b), id: "dev-2", persistent: true})
	anon.subscribe(t, topic)
	anon.Disconnect(100)
	waitFor(t, "the anonymous session to go offline", func() bool {
		cl, ok := b.srv.Clients.Get("dev-2")
		return ok && cl.Closed()
	})
	mustNotify(t, b, note("dev-2"))
	dev := mustDial(t, clientOpts{url: tlsURL, id: "dev-2", persistent: true, tls: certTLS("dev-2")})
	dev.expectOnly(t, topic)
	if _, err := dial(t, clientOpts{url: tcpURL(b), id: "dev-2", persistent: true}); !errors.Is(err, packets.ErrorRefusedIDRejected) {
		t.Fatalf("anonymous client back on the session the certificate took: %v", err)
	}
}

// Anonymous clients racing a device's reconnections never win its session:
// the check and the registration of one client ID are serialised.
func TestSessionOwnershipRace(t *testing.T) {
	b, _, certTLS, tlsURL := ownershipBroker(t)
	mustDial(t, clientOpts{url: tlsURL, id: "dev-1", persistent: true, tls: certTLS("dev-1")}).Disconnect(50)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var won sync.Map
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := dialQuiet(tcpURL(b), "dev-1")
				if err == nil {
					won.Store("won", true)
					c.Disconnect(0)
				}
			}
		}()
	}
	for range 20 {
		c := mustDial(t, clientOpts{url: tlsURL, id: "dev-1", persistent: true, tls: certTLS("dev-1")})
		c.Disconnect(0)
	}
	close(stop)
	wg.Wait()
	if _, ok := won.Load("won"); ok {
		t.Fatal("an anonymous client got the certificate's session")
	}
}

func notifyWith(thing, token string) (n notify.Notification) {
	n = note(thing)
	n.Token = token
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// dialQuiet connects an anonymous persistent client, for goroutines (no t).
func dialQuiet(url, id string) (paho.Client, error) {
	c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID(id).SetProtocolVersion(4).
		SetCleanSession(false).SetAutoReconnect(false).SetConnectTimeout(wait))
	tok := c.Connect()
	if !tok.WaitTimeout(wait) {
		return nil, errors.New("CONNECT timed out")
	}
	return c, tok.Error()
}
