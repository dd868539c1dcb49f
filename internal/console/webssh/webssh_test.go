package webssh_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/sectun/sectun/internal/console/sshdtest"
	"github.com/sectun/sectun/internal/console/webssh"
	"github.com/sectun/sectun/internal/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const wait = 30 * time.Second

// relay is a real tunneld (plaintext loopback, no auth, no MQTT).
type relay struct {
	url, ws string
}

func startRelay(t *testing.T) *relay {
	t.Helper()
	srv, err := server.New(context.Background(), server.Config{
		Listen: "127.0.0.1:0", DataDir: t.TempDir(), Plaintext: true, NoAuth: true, MQTT: server.MQTTConfig{Off: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return &relay{url: srv.URL(), ws: strings.Replace(srv.URL(), "http", "ws", 1)}
}

func (r *relay) call(t *testing.T, op string, in any) map[string]any {
	t.Helper()
	b, _ := json.Marshal(in)
	req, _ := http.NewRequest("POST", r.url+"/", bytes.NewReader(b))
	req.Header.Set("X-Amz-Target", "IoTSecuredTunneling."+op)
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || json.Unmarshal(body, &out) != nil {
		t.Fatalf("%s: %d %s", op, resp.StatusCode, body)
	}
	return out
}

// wsTransport is a WebSocket connected as the browser connects: the token
// in the awsiot-tunnel-token cookie, the three subprotocols offered.
type wsTransport struct {
	c  *websocket.Conn
	mu sync.Mutex
}

func dialSource(t *testing.T, r *relay, token string, protos ...string) (*wsTransport, int) {
	t.Helper()
	if protos == nil {
		protos = []string{"aws.iot.securetunneling-3.0", "aws.iot.securetunneling-2.0", "aws.iot.securetunneling-1.0"}
	}
	d := websocket.Dialer{Subprotocols: protos, HandshakeTimeout: wait}
	h := http.Header{"Cookie": {"__Host-sectun-console=x; awsiot-tunnel-token=" + token}, "Origin": {r.url}}
	c, _, err := d.Dial(r.ws+"/tunnel?local-proxy-mode=source", h)
	if err != nil {
		t.Fatalf("source handshake: %v", err)
	}
	v := map[string]int{"aws.iot.securetunneling-3.0": 3, "aws.iot.securetunneling-2.0": 2, "aws.iot.securetunneling-1.0": 1}[c.Subprotocol()]
	return &wsTransport{c: c}, v
}

func (w *wsTransport) Send(b []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.c.WriteMessage(websocket.BinaryMessage, b)
}

func (w *wsTransport) Recv() ([]byte, error) {
	_, b, err := w.c.ReadMessage()
	return b, err
}

func (w *wsTransport) Close() error { return w.c.Close() }

// output collects the shell's output.
type output struct {
	mu  sync.Mutex
	b   bytes.Buffer
	ch  chan struct{}
	got string
}

func newOutput() *output { return &output{ch: make(chan struct{}, 1)} }

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	o.b.Write(p)
	o.mu.Unlock()
	select {
	case o.ch <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (o *output) waitFor(t *testing.T, re *regexp.Regexp) {
	t.Helper()
	deadline := time.After(wait)
	for {
		o.mu.Lock()
		s := o.b.String()
		o.mu.Unlock()
		if re.MatchString(s) {
			return
		}
		select {
		case <-o.ch:
		case <-deadline:
			t.Fatalf("no %v in the output: %q", re, s)
		}
	}
}

// TestShellThroughRelay runs the terminal's client code (natively; the
// wasm build runs the same code) through the real relay to a real sshd:
// a V3 destination (sectun's) and a V1 destination (as the AWS IoT Device
// Client), key sign-in, the host key shown, a command and its output, a
// resize seen by the shell, and the end when the tunnel closes.
func TestShellThroughRelay(t *testing.T) {
	sshd := sshdtest.Start(t)
	r := startRelay(t)
	for _, tc := range []struct {
		name     string
		services []string
		dstProto []string
	}{
		{"V3 destination", []string{"SSH"}, nil},
		{"V1 destination", nil, []string{"aws.iot.securetunneling-1.0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := map[string]any{}
			if tc.services != nil {
				in["destinationConfig"] = map[string]any{"services": tc.services}
			}
			open := r.call(t, "OpenTunnel", in)
			sshdtest.StartDestination(t, r.ws, open["destinationAccessToken"].(string), nil, sshd.Addr, tc.dstProto...)
			tr, v := dialSource(t, r, open["sourceAccessToken"].(string))
			st, err := webssh.Open(tr, webssh.Options{Version: v})
			if err != nil {
				t.Fatal(err)
			}
			out := newOutput()
			var shownType, shownFP string
			sh, err := webssh.StartShell(st, webssh.SSHConfig{
				User: sshd.User, PrivateKey: sshd.Key, Cols: 100, Rows: 30,
				HostKey: func(typ, fp string) bool { shownType, shownFP = typ, fp; return true },
			}, out)
			if err != nil {
				t.Fatal(err)
			}
			defer sh.Close()
			if shownType != "ssh-ed25519" || shownFP != sshd.HostKeyFingerprint {
				t.Errorf("host key shown %s %s, want ssh-ed25519 %s", shownType, shownFP, sshd.HostKeyFingerprint)
			}
			fmt.Fprintf(sh, "echo hello-$((6*7)); stty size\n")
			out.waitFor(t, regexp.MustCompile(`hello-42[\s\S]*30 100`))
			if err := sh.Resize(120, 40); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(sh, "stty size\n")
			out.waitFor(t, regexp.MustCompile(`40 120`))
			// Closing the tunnel ends the shell.
			r.call(t, "CloseTunnel", map[string]any{"tunnelId": open["tunnelId"]})
			select {
			case <-sh.Done():
			case <-time.After(wait):
				t.Fatal("the shell did not end when the tunnel closed")
			}
			st.Close()
		})
	}
}

func TestHostKeyRejected(t *testing.T) {
	sshd := sshdtest.Start(t)
	r := startRelay(t)
	open := r.call(t, "OpenTunnel", map[string]any{"destinationConfig": map[string]any{"services": []string{"SSH"}}})
	sshdtest.StartDestination(t, r.ws, open["destinationAccessToken"].(string), nil, sshd.Addr)
	tr, v := dialSource(t, r, open["sourceAccessToken"].(string))
	st, err := webssh.Open(tr, webssh.Options{Version: v})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = webssh.StartShell(st, webssh.SSHConfig{User: sshd.User, PrivateKey: sshd.Key, HostKey: func(string, string) bool { return false }}, io.Discard)
	if !errors.Is(err, webssh.ErrHostKeyRejected) {
		t.Errorf("rejected host key: %v", err)
	}
}

func TestServiceChoice(t *testing.T) {
	r := startRelay(t)
	open := r.call(t, "OpenTunnel", map[string]any{"destinationConfig": map[string]any{"services": []string{"HTTP", "RDP"}}})
	tr, v := dialSource(t, r, open["sourceAccessToken"].(string))
	defer tr.Close()
	if _, err := webssh.Open(tr, webssh.Options{Version: v}); !errors.Is(err, webssh.ErrNoService) || !strings.Contains(err.Error(), "HTTP, RDP") {
		t.Errorf("no SSH service: %v", err)
	}
}

func TestBadKey(t *testing.T) {
	if _, err := webssh.Signers([]byte("not a key"), ""); err == nil {
		t.Error("a bad key parsed")
	}
}
