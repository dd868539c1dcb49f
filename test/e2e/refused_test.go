package e2e

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReferenceSourceRefusedService: our destination answers a refused
// local service with CONNECTION_RESET on V3 (issue 17 item 2; the
// reference sends STREAM_RESET), so that our source can tell it from a
// missing destination. The reference source closes that connection and
// goes on: once the service listens, the next connection (a
// CONNECTION_START on the same stream) works. Our source says why.
func TestReferenceSourceRefusedService(t *testing.T) {
	rig := startRefRig(t, "127.0.0.1:0", "")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	ln.Close() // connection refused from now on
	settings := filepath.Join(t.TempDir(), "settings.json")
	if err := os.WriteFile(settings, []byte(`{"tunneling":{"proxy":{"tcp":{"connection_retry_count":"0"}}}}`), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Run("reference source", func(t *testing.T) {
		tun := rig.openTunnel(t, "thing1", "ECHO")
		dst := rig.ourDestination(t, tun.DestinationAccessToken, "ECHO="+target, "--settings-json", settings)
		_, addrs := rig.refSource(t, tun.SourceAccessToken, []string{"ECHO"})
		c := dialRetry(t, addrs["ECHO"])
		c.Write([]byte("hello?"))
		expectClosed(t, c, 10*time.Second)
		dst.waitLine(`cannot connect to the local service`, lpWait)
		echo := echoOn(t, target)
		defer echo.Close()
		c2 := dialRetry(t, addrs["ECHO"])
		echoRoundTrip(t, c2, "after the service came up")
	})
	t.Run("our source", func(t *testing.T) {
		tun := rig.openTunnel(t, "thing1", "ECHO")
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := ln.Addr().String()
		ln.Close()
		rig.ourDestination(t, tun.DestinationAccessToken, "ECHO="+dead, "--settings-json", settings)
		src, addrs := rig.ourSource(t, tun.SourceAccessToken, []string{"ECHO"})
		c := dialTCP(t, addrs["ECHO"])
		c.Write([]byte("hello?"))
		expectClosed(t, c, 10*time.Second)
		src.waitLine(`the destination could not connect to its service \(connection refused\? check its mapping`, lpWait)
		if out := src.output(); strings.Contains(out, "older local proxy") {
			t.Errorf("version hint after a refusal:\n%s", out)
		}
	})
}

// echoOn runs an echo server on addr (a port known to be free).
func echoOn(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						c.Write(buf[:n])
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln
}
