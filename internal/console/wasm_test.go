package console_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/console/sshdtest"
)

// TestWasmUpToDate rebuilds the WebAssembly SSH client as
// scripts/build-wasm.sh does (GOOS=js GOARCH=wasm): it must build, and
// with the Go version recorded next to the committed module it must give
// the same bytes (run go generate ./internal/console after changing
// webssh or wasm).
func TestWasmUpToDate(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the wasm module (-short)")
	}
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out := filepath.Join(t.TempDir(), "sshclient.wasm")
	cmd := exec.Command(goBin, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=", "-o", out, "./wasm")
	cmd.Env = append(os.Environ(), "GOOS=js", "GOARCH=wasm", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("GOOS=js GOARCH=wasm go build ./wasm: %v\n%s", err, b)
	}
	built, _ := os.ReadFile(out)
	committed, err := os.ReadFile("assets/sshclient.wasm")
	if err != nil {
		t.Fatal(err)
	}
	ver, _ := os.ReadFile("assets/sshclient.wasm.go-version")
	if strings.TrimSpace(string(ver)) != runtime.Version() {
		t.Skipf("the committed module was built with %s, this is %s: it builds; bytes not compared", strings.TrimSpace(string(ver)), runtime.Version())
	}
	if !bytes.Equal(built, committed) {
		t.Errorf("assets/sshclient.wasm (%d bytes) is not what ./wasm builds (%d bytes): run go generate ./internal/console", len(committed), len(built))
	}
	exec1, _ := os.ReadFile(filepath.Join(runtime.GOROOT(), "lib", "wasm", "wasm_exec.js"))
	exec2, _ := os.ReadFile("assets/wasm_exec.js")
	if len(exec1) > 0 && !bytes.Equal(exec1, exec2) {
		t.Error("assets/wasm_exec.js is not this Go's: run go generate ./internal/console")
	}
}

// TestWasmUnderNode runs the committed WebAssembly module under Node
// against the real relay and a real sshd: the protocol code (handshake
// with the token in the cookie, SERVICE_IDS, STREAM_START, DATA) and SSH
// as the browser runs them.
func TestWasmUnderNode(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not installed")
	}
	if err := exec.Command(node, "--experimental-websocket", "-e", "if (typeof WebSocket === 'undefined') process.exit(3)").Run(); err != nil {
		t.Skipf("this node has no WebSocket (Node 20.10 or later needed): %v", err)
	}
	sshd := sshdtest.Start(t)
	e := newEnv(t, nil)
	b := e.browser()
	b.signIn(e.akid, e.secret)
	for _, v1 := range []bool{false, true} {
		in := map[string]any{"destinationConfig": map[string]any{"services": []string{"SSH"}}}
		var protos []string
		if v1 {
			in = map[string]any{}
			protos = []string{"aws.iot.securetunneling-1.0"}
		}
		a := b.op("OpenTunnel", in, nil)
		open := decode(t, a.body)
		sshdtest.StartDestination(t, strings.Replace(e.base, "https", "wss", 1), open["destinationAccessToken"], e.tls, sshd.Addr, protos...)
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		cmd := exec.CommandContext(ctx, node, "--experimental-websocket", "testdata/node_ssh.js")
		wasmExec, _ := filepath.Abs("assets/wasm_exec.js")
		wasm, _ := filepath.Abs("assets/sshclient.wasm")
		cmd.Env = append(os.Environ(), "WASM="+wasm, "WASM_EXEC="+wasmExec,
			"URL="+strings.Replace(e.base, "https", "wss", 1)+"/tunnel?local-proxy-mode=source",
			"TOKEN="+open["sourceAccessToken"], "SSH_USER="+sshd.User, "SSH_KEY_FILE="+sshd.KeyFile,
			"COMMAND=echo node-$((20+22))", "WANT=node-42", "NODE_EXTRA_CA_CERTS="+e.srv.CAPath())
		outb, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("V1=%v: node: %v\n%s", v1, err, outb)
		}
		if !strings.Contains(string(outb), "HOSTKEY ssh-ed25519 "+sshd.HostKeyFingerprint) || !strings.Contains(string(outb), "node-42") {
			t.Errorf("V1=%v: output:\n%s", v1, outb)
		}
		t.Logf("V1=%v:\n%s", v1, outb)
	}
}
