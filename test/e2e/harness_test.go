package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/sectun/sectun/internal/proctest"
)

// binDir holds the binaries built once for the whole package.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sectun-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cmd := exec.Command("go", "build", "-o", dir, "../../cmd/...")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building binaries:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func bin(name string) string { return filepath.Join(binDir, name) }

// outputTail is how many output lines a proc keeps: far more than any test
// here prints, so that assertions on the output see all of it (output
// fails the test if lines were dropped).
const outputTail = 1 << 16

// proc is a started binary whose output is collected for assertions and
// shown when the test fails.
type proc struct {
	*proctest.Proc
	t    *testing.T
	name string
	cmd  *exec.Cmd
	done <-chan struct{}

	droppedOnce sync.Once
}

func start(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	return startPath(t, name, bin(name), env, args...)
}

// startPath starts the program at path (one of ours or a system program
// such as sshd) as a proc named name.
func startPath(t *testing.T, name, path string, env []string, args ...string) *proc {
	t.Helper()
	pp, err := proctest.Start(proctest.Config{
		Name: name, Path: path, Args: args, Env: env,
		Tail:       outputTail,
		StopSignal: os.Interrupt,
	})
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{Proc: pp, t: t, name: name, cmd: pp.Cmd, done: pp.Done()}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() || os.Getenv("SECTUN_E2E_OUTPUT") != "" {
			t.Logf("--- output of %s %s:\n%s", name, strings.Join(args, " "), p.output())
		}
	})
	return p
}

// output returns everything the process printed so far.
func (p *proc) output() string {
	if n := p.Dropped(); n > 0 {
		p.droppedOnce.Do(func() {
			p.t.Errorf("%s printed more than %d lines (%d dropped): checks of its output are incomplete", p.name, outputTail, n)
		})
	}
	return p.Output()
}

// stop sends SIGINT and waits (killing after 10 s).
func (p *proc) stop() { p.Stop(10 * time.Second) }

// waitLine waits for an output line matching re and returns its
// submatches. Lines taken by an earlier waitLine, or dropped by drain, do
// not count.
func (p *proc) waitLine(re string, timeout time.Duration) []string {
	p.t.Helper()
	m, err := p.WaitLine(context.Background(), regexp.MustCompile(re), timeout)
	if err != nil {
		p.t.Fatal(err)
	}
	return m
}

// waitExit waits for the process to end and returns its exit code.
func (p *proc) waitExit(timeout time.Duration) int {
	p.t.Helper()
	code, err := p.WaitExit(context.Background(), timeout)
	if err != nil {
		p.t.Fatal(err)
	}
	return code
}

// tunneld is a running tunneld with an API client.
type tunneld struct {
	*proc
	url     string // http(s)://127.0.0.1:port
	wsURL   string
	dataDir string
	keyID   string
	secret  string
	client  *http.Client
}

// brokerAddr returns the embedded MQTT broker's address from the banner.
// It reads the collected output, leaving the line for waitLine callers.
func (d *tunneld) brokerAddr(t *testing.T) string {
	t.Helper()
	rx := regexp.MustCompile(`embedded MQTT broker on mqtt://([^, ]+)`)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := rx.FindStringSubmatch(d.output()); m != nil {
			return m[1]
		}
		time.Sleep(20 * time.Millisecond) // polling collected output, not readiness of a socket
	}
	t.Fatal("tunneld printed no embedded broker address")
	return ""
}

func startTunneld(t *testing.T, extra ...string) *tunneld {
	t.Helper()
	dir := t.TempDir()
	args := []string{"--listen", "127.0.0.1:0", "--data-dir", dir, "--plaintext"}
	if !hasFlag(extra, "--mqtt-listen") && !hasFlag(extra, "--mqtt-broker") {
		// A broker on a port of its own, so tests can run in parallel.
		args = append(args, "--mqtt-listen", "127.0.0.1:0")
	}
	args = append(args, extra...)
	p := start(t, "tunneld", nil, args...)
	m := p.waitLine(`listening on (\S+)`, 30*time.Second)
	d := &tunneld{proc: p, url: m[1], dataDir: dir, client: &http.Client{Timeout: 30 * time.Second}}
	d.wsURL = strings.Replace(d.url, "http", "ws", 1)
	creds, err := os.ReadFile(filepath.Join(dir, "aws-credentials"))
	if err == nil {
		d.keyID = regexp.MustCompile(`aws_access_key_id = (\S+)`).FindStringSubmatch(string(creds))[1]
		d.secret = regexp.MustCompile(`aws_secret_access_key = (\S+)`).FindStringSubmatch(string(creds))[1]
	}
	return d
}

// call invokes a management API operation, signed with SigV4, and decodes
// the JSON answer into out. It returns the HTTP status.
func (d *tunneld) call(t *testing.T, op string, in, out any) int {
	t.Helper()
	body, _ := json.Marshal(in)
	req, _ := http.NewRequest("POST", d.url+"/", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "IoTSecuredTunneling."+op)
	sum := sha256.Sum256(body)
	if d.keyID != "" {
		err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: d.keyID, SecretAccessKey: d.secret},
			req, hex.EncodeToString(sum[:]), "IoTSecuredTunneling", "us-east-1", time.Now())
		if err != nil {
			t.Fatal(err)
		}
	}
	resp, err := d.client.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", op, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s: decoding %q: %v", op, data, err)
		}
	}
	return resp.StatusCode
}

type openTunnelOut struct {
	TunnelID               string `json:"tunnelId"`
	TunnelArn              string `json:"tunnelArn"`
	SourceAccessToken      string `json:"sourceAccessToken"`
	DestinationAccessToken string `json:"destinationAccessToken"`
}

func (d *tunneld) openTunnel(t *testing.T, thing string, services ...string) openTunnelOut {
	t.Helper()
	in := map[string]any{}
	if thing != "" || len(services) > 0 {
		dc := map[string]any{"services": services}
		if thing != "" {
			dc["thingName"] = thing
		}
		in["destinationConfig"] = dc
	}
	var out openTunnelOut
	if code := d.call(t, "OpenTunnel", in, &out); code != 200 {
		t.Fatalf("OpenTunnel: HTTP %d %+v", code, out)
	}
	return out
}

func hasFlag(args []string, name string) bool {
	for _, a := range args {
		if a == name || strings.HasPrefix(a, name+"=") {
			return true
		}
	}
	return false
}

// freePort returns a TCP port that was free a moment ago on 127.0.0.1, for
// programs that cannot listen on :0 and report the port.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
