package operator

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sectun/sectun/internal/server"
	"github.com/sectun/sectun/tunnel"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// modernc sqlite and idle HTTP connections keep helper goroutines.
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreTopFunction("database/sql.(*DB).connectionOpener"),
	)
}

const testTimeout = 20 * time.Second

func env(m map[string]string) Env { return func(k string) string { return m[k] } }

func TestLoadCredentials(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "credentials")
	os.WriteFile(file, []byte(`# comment
[default]
aws_access_key_id = AKDEFAULT
aws_secret_access_key = secret-default

[ops]
aws_access_key_id=AKOPS
aws_secret_access_key=secret-ops
aws_session_token = tok

[broken]
aws_access_key_id = AKBROKEN
`), 0o600)
	home := filepath.Join(dir, "home")
	os.MkdirAll(filepath.Join(home, ".aws"), 0o700)
	os.WriteFile(filepath.Join(home, ".aws", "credentials"), []byte("[default]\naws_access_key_id=AKHOME\naws_secret_access_key=s\n"), 0o600)
	cases := []struct {
		name    string
		profile string
		env     map[string]string
		id      string
		session string
		err     string
	}{
		{name: "environment", env: map[string]string{"AWS_ACCESS_KEY_ID": "AKENV", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "st"}, id: "AKENV", session: "st"},
		{name: "file default", env: map[string]string{"AWS_SHARED_CREDENTIALS_FILE": file}, id: "AKDEFAULT"},
		{name: "file profile", profile: "ops", env: map[string]string{"AWS_SHARED_CREDENTIALS_FILE": file}, id: "AKOPS", session: "tok"},
		{name: "AWS_PROFILE", env: map[string]string{"AWS_SHARED_CREDENTIALS_FILE": file, "AWS_PROFILE": "ops"}, id: "AKOPS", session: "tok"},
		{name: "profile beats env keys", profile: "ops", env: map[string]string{"AWS_SHARED_CREDENTIALS_FILE": file, "AWS_ACCESS_KEY_ID": "AKENV", "AWS_SECRET_ACCESS_KEY": "s"}, id: "AKOPS", session: "tok"},
		{name: "home", env: map[string]string{"HOME": home}, id: "AKHOME"},
		{name: "no profile", profile: "nope", env: map[string]string{"AWS_SHARED_CREDENTIALS_FILE": file}, err: "no [nope] profile"},
		{name: "incomplete profile", profile: "broken", env: map[string]string{"AWS_SHARED_CREDENTIALS_FILE": file}, err: "lacks"},
		{name: "no file", env: map[string]string{"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "none")}, err: "AWS_ACCESS_KEY_ID"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := LoadCredentials(tc.profile, env(tc.env))
			if tc.err != "" {
				if !errors.Is(err, ErrNoCredentials) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("LoadCredentials: %v; want ErrNoCredentials containing %q", err, tc.err)
				}
				if strings.Contains(err.Error(), "secret-") {
					t.Fatalf("error %q shows a secret", err)
				}
				return
			}
			if err != nil || c.AccessKeyID != tc.id || c.SessionToken != tc.session || c.SecretAccessKey == "" {
				t.Fatalf("LoadCredentials = %+v, %v; want key %s, session token %q", c, err, tc.id, tc.session)
			}
		})
	}
}

func TestRegion(t *testing.T) {
	if r := Region("eu-west-1", env(map[string]string{"AWS_REGION": "x"})); r != "eu-west-1" {
		t.Fatal(r)
	}
	if r := Region("", env(map[string]string{"AWS_DEFAULT_REGION": "ap-south-1"})); r != "ap-south-1" {
		t.Fatal(r)
	}
	if r := Region("", env(nil)); r != "us-east-1" {
		t.Fatal(r)
	}
}

func TestParseServiceSpec(t *testing.T) {
	cases := []struct {
		in, id, listen, err string
	}{
		{in: "SSH", id: "SSH", listen: "127.0.0.1:0"},
		{in: "SSH=5555", id: "SSH", listen: "127.0.0.1:5555"},
		{in: "HTTP=0.0.0.0:8080", id: "HTTP", listen: "0.0.0.0:8080"},
		{in: "HTTP=[::1]:8080", id: "HTTP", listen: "[::1]:8080"},
		{in: "SSH=", err: "give a port"},
		{in: "=22", err: "the ID must be"},
		{in: "S S=22", err: "the ID must be"},
		{in: "SSH=host", err: "want SSH=PORT"},
		{in: "SSH=99999", err: "bad port"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			s, err := ParseServiceSpec(tc.in, "127.0.0.1")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseServiceSpec = %+v, %v; want error containing %q", s, err, tc.err)
				}
				return
			}
			if err != nil || s.ID != tc.id || s.Listen != tc.listen {
				t.Fatalf("ParseServiceSpec = %+v, %v; want %s at %s", s, err, tc.id, tc.listen)
			}
		})
	}
}

func TestUsage(t *testing.T) {
	addr := func(s string) net.Addr { a, _ := net.ResolveTCPAddr("tcp", s); return a }
	cases := []struct {
		id, addr, user, want string
	}{
		{"SSH", "127.0.0.1:5555", "", "ssh -p 5555 USER@localhost"},
		{"ssh2", "127.0.0.1:5555", "pi", "ssh -p 5555 pi@localhost"},
		{"HTTP", "127.0.0.1:8080", "", "http://localhost:8080/"},
		{"HTTPS", "[::1]:8443", "", "https://localhost:8443/"},
		{"VNC", "0.0.0.0:5900", "", "vncviewer localhost::5900"},
		{"MQTT", "10.1.2.3:1883", "", "10.1.2.3:1883"},
	}
	for _, tc := range cases {
		if got := usage(tc.id, addr(tc.addr), tc.user); got != tc.want {
			t.Errorf("usage(%s, %s) = %q, want %q", tc.id, tc.addr, got, tc.want)
		}
	}
	if got, err := wsEndpoint("https://h:8443/"); err != nil || got != "wss://h:8443" {
		t.Errorf("wsEndpoint: %q, %v", got, err)
	}
	if got, err := wsEndpoint("http://127.0.0.1:1"); err != nil || got != "ws://127.0.0.1:1" {
		t.Errorf("wsEndpoint: %q, %v", got, err)
	}
	if _, err := wsEndpoint("ftp://h"); err == nil {
		t.Error("wsEndpoint accepted ftp")
	}
}

// tunneld is an in-process tunneld with TLS (its development CA) and
// generated API credentials.
type tunneld struct {
	srv    *server.Server
	api    *Client
	tlsCfg *tls.Config
	wsURL  string
}

func startTunneld(t *testing.T) *tunneld {
	t.Helper()
	srv, err := server.New(context.Background(), server.Config{
		Listen:  "127.0.0.1:0",
		DataDir: t.TempDir(),
		MQTT:    server.MQTTConfig{Off: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(testTimeout):
			t.Error("tunneld did not stop")
		}
	})
	creds, err := LoadCredentials("", env(map[string]string{"AWS_SHARED_CREDENTIALS_FILE": srv.CredentialsPath()}))
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := tunnel.TLSConfig(srv.CAPath(), false)
	if err != nil {
		t.Fatal(err)
	}
	hc := NewHTTPClient(tlsCfg)
	t.Cleanup(hc.CloseIdleConnections)
	return &tunneld{
		srv:    srv,
		api:    &Client{Endpoint: srv.URL(), Region: "us-east-1", Credentials: creds, HTTP: hc},
		tlsCfg: tlsCfg,
		wsURL:  strings.Replace(srv.URL(), "https", "wss", 1),
	}
}

func TestCallErrors(t *testing.T) {
	d := startTunneld(t)
	ctx := context.Background()
	bad := *d.api
	bad.Credentials.SecretAccessKey = "wrong"
	_, err := bad.OpenTunnel(ctx, OpenTunnelInput{DestinationConfig: &DestinationConfig{Services: []string{"SSH"}}})
	var ae *APIError
	if !errors.As(err, &ae) || ae.StatusCode != 403 || ae.Code == "" || !errors.Is(err, ErrAPI) {
		t.Fatalf("bad signature: %v", err)
	}
	if err := d.api.CloseTunnel(ctx, "00000000-0000-0000-0000-000000000000"); !errors.As(err, &ae) || ae.Code != "ResourceNotFoundException" {
		t.Fatalf("CloseTunnel of an unknown tunnel: %v", err)
	}
	unknown := *d.api
	unknown.Endpoint = "ftp://x"
	if err := unknown.Call(ctx, "ListTunnels", struct{}{}, nil); err == nil {
		t.Fatal("ftp endpoint accepted")
	}
}

func lines(t *testing.T) (io.Writer, <-chan string) {
	pr, pw := io.Pipe()
	ch := make(chan string, 100)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			t.Logf("out: %s", sc.Text())
			ch <- sc.Text()
		}
	}()
	t.Cleanup(func() { pw.Close() })
	return pw, ch
}

func waitLine(t *testing.T, ch <-chan string, re string) []string {
	t.Helper()
	rx := regexp.MustCompile(re)
	timeout := time.After(testTimeout)
	for {
		select {
		case l, ok := <-ch:
			if !ok {
				t.Fatalf("output ended before %q", re)
			}
			if m := rx.FindStringSubmatch(l); m != nil {
				return m
			}
		case <-timeout:
			t.Fatalf("no line matching %q within %v", re, testTimeout)
		}
	}
}

// buildAgent builds cmd/tunnel-agent into a directory and returns it.
func buildAgent(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir, "github.com/sectun/sectun/cmd/tunnel-agent")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build tunnel-agent: %v\n%s", err, out)
	}
	return dir
}

// TestConnect runs Connect against an in-process tunneld over TLS, without
// a thing: the printed device commands, run as shown by a shell with the
// real tunnel-agent (only the SSH service's address is changed, to the
// test's), serve the destination end. The token is in the environment,
// not on the command line, and the CA given is in the command.
func TestConnect(t *testing.T) {
	d := startTunneld(t)
	agentDir := buildAgent(t)
	out, ch := lines(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Connect(ctx, ConnectConfig{
			API:              d.api,
			Services:         []ServiceSpec{{ID: "SSH", Listen: "127.0.0.1:0"}, {ID: "HTTP", Listen: "127.0.0.1:0"}},
			TunnelTLS:        d.tlsCfg,
			TunnelCAFile:     d.srv.CAPath(),
			CloseOnExit:      true,
			SSHUser:          "pi",
			ProgressInterval: 200 * time.Millisecond,
			Out:              out,
		})
	}()
	id := waitLine(t, ch, `^Opened tunnel (\S+) for no thing`)[1]
	export := waitLine(t, ch, `^  (export AWSIOT_TUNNEL_ACCESS_TOKEN=\S+)$`)[1]
	command := waitLine(t, ch, `^  (tunnel-agent .*)$`)[1]
	for _, want := range []string{"--tunnel-endpoint " + d.wsURL, "--tunnel-ca " + d.srv.CAPath(), "--map HTTP=localhost:80"} {
		if !strings.Contains(command, want) {
			t.Errorf("device command %q lacks %q", command, want)
		}
	}
	if strings.Contains(command, "--token") || strings.Contains(command, strings.TrimPrefix(export, "export AWSIOT_TUNNEL_ACCESS_TOKEN=")) {
		t.Fatalf("the token is on the command line: %q", command)
	}
	// The device is slow to start: progress lines meanwhile.
	waitLine(t, ch, `^Still waiting for the device: \S+ of 1m0s \(destination DISCONNECTED\)`)
	ssh, httpSvc := greeter(t, "ssh-server"), greeter(t, "http-server")
	sh := exec.Command("sh", "-c", export+"\n"+command+" --map SSH="+ssh+" --map HTTP="+httpSvc)
	sh.Env = append(os.Environ(), "PATH="+agentDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	sh.Stdout, sh.Stderr = t.Output(), t.Output()
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan error, 1)
	exited := make(chan struct{})
	go func() { agentDone <- sh.Wait(); close(exited) }()
	t.Cleanup(func() {
		sh.Process.Kill()
		<-exited
	})
	waitLine(t, ch, `^Device connected`)
	sshPort := waitLine(t, ch, `^\s+SSH\s+ssh -p (\d+) pi@localhost$`)[1]
	httpPort := waitLine(t, ch, `^\s+HTTP\s+http://localhost:(\d+)/$`)[1]
	checkGreeting(t, "127.0.0.1:"+sshPort, "ssh-server")
	checkGreeting(t, "127.0.0.1:"+httpPort, "http-server")
	checkGreeting(t, "127.0.0.1:"+sshPort, "ssh-server")

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Connect: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Connect did not return after cancel")
	}
	waitLine(t, ch, `^Closed tunnel `+regexp.QuoteMeta(id))
	desc, err := d.api.DescribeTunnel(context.Background(), id)
	if err != nil || desc.Status != "CLOSED" {
		t.Fatalf("after exit: %+v, %v; want CLOSED", desc, err)
	}
	// Closing the tunnel ends the device's session: tunnel-agent exits.
	select {
	case err := <-agentDone:
		if err != nil {
			t.Fatalf("tunnel-agent: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("the device session did not end after the tunnel closed")
	}
}

// TestConnectTunnelClosed: closing the tunnel elsewhere ends Connect.
func TestConnectTunnelClosed(t *testing.T) {
	d := startTunneld(t)
	out, ch := lines(t)
	done := make(chan error, 1)
	go func() {
		done <- Connect(context.Background(), ConnectConfig{
			API: d.api, ThingName: "dev-1", Services: []ServiceSpec{{ID: "SSH", Listen: "127.0.0.1:0"}},
			TunnelTLS: d.tlsCfg, WaitDevice: 300 * time.Millisecond, Out: out,
		})
	}()
	id := waitLine(t, ch, `^Opened tunnel (\S+) for thing dev-1`)[1]
	waitLine(t, ch, `^The device has not connected`)
	waitLine(t, ch, `close-tunnel --tunnel-id `+regexp.QuoteMeta(id))
	if err := d.api.CloseTunnel(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Connect: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Connect did not return after the tunnel closed")
	}
	waitLine(t, ch, `^The tunnel was closed by the service`)
}

func TestConnectErrors(t *testing.T) {
	d := startTunneld(t)
	cases := []struct {
		name string
		cfg  ConnectConfig
		err  string
	}{
		{"no services", ConnectConfig{API: d.api}, "no services"},
		{"twice", ConnectConfig{API: d.api, Services: []ServiceSpec{{ID: "SSH", Listen: "127.0.0.1:0"}, {ID: "SSH", Listen: "127.0.0.1:0"}}}, "twice"},
		{"bad thing", ConnectConfig{API: d.api, ThingName: "a/b", Services: []ServiceSpec{{ID: "SSH", Listen: "127.0.0.1:0"}}}, "thing name"},
		{"too many services", ConnectConfig{API: d.api, Services: []ServiceSpec{{ID: "A", Listen: "127.0.0.1:0"}, {ID: "B", Listen: "127.0.0.1:0"}, {ID: "C", Listen: "127.0.0.1:0"}, {ID: "D", Listen: "127.0.0.1:0"}}}, "OpenTunnel"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Connect(context.Background(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Connect: %v; want error containing %q", err, tc.err)
			}
		})
	}
}

// greeter is a local service that writes "<name>\n" and echoes.
func greeter(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "%s\n", name)
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

func checkGreeting(t *testing.T, addr, want string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testTimeout))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != want {
		t.Fatalf("%s: greeting %q, %v; want %q", addr, line, err, want)
	}
	fmt.Fprintf(c, "ping\n")
	if echo, err := br.ReadString('\n'); err != nil || echo != "ping\n" {
		t.Fatalf("%s: echo %q, %v", addr, echo, err)
	}
}

// TestConnectListenFails: a busy local port fails Connect before any
// tunnel is opened (no device is notified for nothing).
func TestConnectListenFails(t *testing.T) {
	d := startTunneld(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	var out strings.Builder
	err = Connect(context.Background(), ConnectConfig{
		API: d.api, ThingName: "dev-1", Services: []ServiceSpec{{ID: "HTTP", Listen: "127.0.0.1:0"}, {ID: "SSH", Listen: busy.Addr().String()}},
		TunnelTLS: d.tlsCfg, Out: &out,
	})
	if err == nil || !strings.Contains(err.Error(), "no tunnel was opened") {
		t.Fatalf("Connect on a busy port: %v", err)
	}
	if strings.Contains(out.String(), "Opened tunnel") {
		t.Fatalf("a tunnel was opened:\n%s", out.String())
	}
	var list struct {
		TunnelSummaries []json.RawMessage `json:"tunnelSummaries"`
	}
	if err := d.api.Call(context.Background(), "ListTunnels", struct{}{}, &list); err != nil || len(list.TunnelSummaries) != 0 {
		t.Fatalf("ListTunnels: %d tunnels, %v; want none", len(list.TunnelSummaries), err)
	}
}
