package cluster

import (
	"bytes"
	"crypto/tls"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/store"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLinkDialWrongPinRefused: two real link endpoints on loopback (a TLS
// acceptor with node A's link identity, node B dialing it). B dials with
// the fingerprint in A's row; when the row's fingerprint is not A's
// certificate's, the TLS handshake is refused, B gives up at once (no
// five seconds of retries against a certificate that will not change) and
// logs why, naming the node.
func TestLinkDialWrongPinRefused(t *testing.T) {
	a, err := newIdentity("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := newIdentity("b")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", a.serverConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accErr := make(chan error, 4)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			select {
			case accErr <- c.(*tls.Conn).Handshake():
			default:
			}
			c.Close()
		}
	}()
	defer wg.Wait()
	defer ln.Close()

	// The right pin: the handshake passes on both sides.
	c, err := tls.Dial("tcp", ln.Addr().String(), b.clientConfig(a.sha256))
	if err != nil {
		t.Fatalf("dial with the right pin: %v", err)
	}
	c.Close()
	if err := <-accErr; err != nil {
		t.Fatalf("acceptor, right pin: %v", err)
	}

	// A wrong pin (B's own fingerprint, as in a corrupted nodes row).
	var logs syncBuf
	n := &Node{cfg: Config{NodeID: "b", PingInterval: time.Second}, id: b,
		log: slog.New(slog.NewTextHandler(&logs, nil)), ends: map[key]held{}}
	k := key{"tun1", store.ModeSource}
	h := held{epoch: 1, other: store.PeerRoute{Mode: store.ModeDestination, Epoch: 1, Connected: true,
		Node: store.Node{ID: "a", Incarnation: 1, LinkAddr: ln.Addr().String(), LinkCertSHA256: b.sha256}}}
	n.ends[k] = h
	status, err := n.dialOnce(k, h)
	if status != "refused" || !errors.Is(err, errPin) {
		t.Fatalf("dialOnce with a wrong pin: %q, %v; want refused, %v", status, err, errPin)
	}
	if err := <-accErr; err == nil {
		t.Fatal("the acceptor's handshake succeeded although the dialer refused the certificate")
	}
	start := time.Now()
	n.dial(k, h)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("dial with a wrong pin took %v: it retried a certificate that cannot change", d)
	}
	out := logs.String()
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "fingerprint") || !strings.Contains(out, "node=a") {
		t.Errorf("the refusal is not logged as a warning naming the node and the fingerprint:\n%s", out)
	}
	t.Logf("log: %s", strings.TrimSpace(out))
}
