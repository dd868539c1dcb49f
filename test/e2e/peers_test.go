package e2e

import (
	"context"
	"encoding/json"
	"fmt"
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

	"github.com/sectun/sectun/tunnel"
)

// The real third-party peers: the AWS reference local proxy and the AWS
// IoT Device Client. The tests find them in ../shared/peers/ beside the
// module root (CI has that folder beside its checkout; see its README), or
// where an environment variable says (the override), and skip with a
// message when neither has the binary (a user's clone has no ../shared).

const (
	referenceEnv    = "SECTUN_REFERENCE_LOCALPROXY" // path of the reference localproxy
	deviceClientEnv = "SECTUN_DEVICE_CLIENT"        // path of aws-iot-device-client
	// requirePeersEnv, when set (CI sets it where ../shared/peers exists),
	// turns every "skipping: peer unavailable" below into a failure, so
	// the real-peer tests cannot silently stop running.
	requirePeersEnv = "SECTUN_REQUIRE_PEERS"
)

// peerUnavailable skips t with the reason, or fails it under
// SECTUN_REQUIRE_PEERS.
func peerUnavailable(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv(requirePeersEnv) != "" {
		t.Fatalf(format+" ("+requirePeersEnv+" is set: the real peers must run)", args...)
	}
	t.Skipf(format, args...)
}

// sharedPeersDir is ../shared/peers relative to the module root (this
// package is test/e2e).
func sharedPeersDir() string {
	d, err := filepath.Abs(filepath.Join("..", "..", "..", "shared", "peers"))
	if err != nil {
		return filepath.Join("..", "..", "..", "shared", "peers")
	}
	return d
}

// peerBinary returns the peer's binary: $env if set (it must then be an
// executable file), else ../shared/peers/<name>; it skips t when there is
// none.
func peerBinary(t *testing.T, env, name string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		if !isExecutable(p) {
			t.Fatalf("%s=%q is not an executable file", env, p)
		}
		return p
	}
	p := filepath.Join(sharedPeersDir(), name)
	if _, err := os.Stat(p); err != nil {
		peerUnavailable(t, "skipping: no %s: %s is absent and %s is not set (see docs/interop.md)", name, p, env)
	}
	if !isExecutable(p) {
		t.Fatalf("%s is not an executable file", p)
	}
	return p
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// peerRuns checks once per binary that "path --version" works: a binary
// whose shared libraries are missing fails the test with what to install
// (it is installed, so the test must not skip).
var peerVersions sync.Map // path -> error or version string

func peerRuns(t *testing.T, path, libs string) string {
	t.Helper()
	v, ok := peerVersions.Load(path)
	if !ok {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, path, "--version").CombinedOutput()
		cancel()
		if err != nil {
			v = fmt.Errorf("%s --version: %v\n%s\n(its runtime libraries: %s; .ci/run installs them)", path, err, strings.TrimSpace(string(out)), libs)
		} else {
			v = strings.TrimSpace(string(out))
		}
		peerVersions.Store(path, v)
	}
	if err, ok := v.(error); ok {
		t.Fatal(err)
	}
	return v.(string)
}

// referenceBinary returns the reference local proxy, or skips the test.
func referenceBinary(t *testing.T) string {
	t.Helper()
	p := peerBinary(t, referenceEnv, "localproxy")
	if _, err := exec.LookPath("openssl"); err != nil {
		peerUnavailable(t, "skipping: openssl (for openssl rehash) is not installed")
	}
	peerRuns(t, p, "Debian: libboost-program-options1.74.0 libboost-log1.74.0 libboost-thread1.74.0 libboost-filesystem1.74.0 libprotobuf-lite32 libssl3")
	return p
}

// deviceClientBinary returns the AWS IoT Device Client, or skips the test.
func deviceClientBinary(t *testing.T) string {
	t.Helper()
	p := peerBinary(t, deviceClientEnv, "aws-iot-device-client")
	peerRuns(t, p, "libc and libstdc++ only")
	return p
}

// hashedCADir returns a directory holding caFile, prepared with openssl
// rehash: the form the reference's -c wants (ours takes it too).
func hashedCADir(t *testing.T, caFile string) string {
	t.Helper()
	dir := t.TempDir()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), pem, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("openssl", "rehash", dir).CombinedOutput(); err != nil {
		t.Fatalf("openssl rehash: %v: %s", err, out)
	}
	return dir
}

// deviceClientMu serialises the tests that run the real Device Client:
// they share ports 443 and 22 and the Device Client's lock file
// (/run/lock/devicecl.lock).
var deviceClientMu sync.Mutex

// dcOptions adjusts startDeviceClient.
type dcOptions struct {
	TunneldArgs []string // more tunneld flags
	ClientArgs  []string // more aws-iot-device-client flags
}

// deviceClientRig is the real AWS IoT Device Client (from ../shared/peers)
// connected to a tunneld on 127.0.0.1:443, with a private sshd on
// 127.0.0.1:22 as its SSH service.
type deviceClientRig struct {
	*tunneld
	endpoint string // 127.0.0.1:443, for localproxy -e
	caFile   string // tunneld's CA
	caDir    string // the same CA as a hashed -c directory
	sshd     sshServer
	thing    string
	confFile string // the Device Client configuration from tunneld device create
	client   *proc  // the running aws-iot-device-client
}

// startDeviceClient starts tunneld on 127.0.0.1:443 (TLS, --tls-host
// 127.0.0.1, its MQTT broker on that port by ALPN), an sshd on
// 127.0.0.1:22, registers thing agentThing with `tunneld device create
// --endpoint 127.0.0.1` and runs the real Device Client with the
// configuration it wrote, until it logs that it is subscribed to its
// tunnel notifications. It skips the test when the Device Client is
// absent, when not root, or when port 443 or 22 is taken. Everything is
// stopped when the test ends. Tests using it do not run at the same time
// (deviceClientMu).
//
// Then rig.openSSH opens a tunnel for rig.thing with service SSH: tunneld
// notifies the Device Client over MQTT, and it connects the destination
// end (for 127.0.0.1:22). The source must speak
// V1 (see docs/device-client.md); rig.ourSource and rig.refSource start
// one.
func startDeviceClient(t *testing.T, opts ...dcOptions) *deviceClientRig {
	t.Helper()
	path := deviceClientBinary(t)
	if os.Geteuid() != 0 {
		peerUnavailable(t, "skipping: the Device Client needs tunneld on port 443 and sshd on port 22: run as root")
	}
	var o dcOptions
	for _, x := range opts {
		o.TunneldArgs = append(o.TunneldArgs, x.TunneldArgs...)
		o.ClientArgs = append(o.ClientArgs, x.ClientArgs...)
	}
	deviceClientMu.Lock()
	t.Cleanup(deviceClientMu.Unlock) // runs last: after the processes stop
	for _, port := range []string{"443", "22"} {
		ln, err := net.Listen("tcp", "127.0.0.1:"+port)
		if err != nil {
			peerUnavailable(t, "skipping: port %s on 127.0.0.1 is taken (the Device Client uses fixed ports 443 and 22): %v", port, err)
		}
		ln.Close()
	}
	sshd := startSSHDPort(t, 22)

	dir := t.TempDir()
	args := append([]string{"--listen", "127.0.0.1:443", "--data-dir", dir, "--tls-host", "127.0.0.1", "--mqtt-listen", "127.0.0.1:0"}, o.TunneldArgs...)
	p := start(t, "tunneld", nil, args...)
	u := p.waitLine(`listening on (https://\S+)`, agentWait)[1]
	ca := p.waitLine(`trust the CA at (\S+)`, agentWait)[1]
	p.waitLine(`AWS IoT Device Client: MQTT on this port`, agentWait)
	d := tunneldClient(t, p, u, dir, ca)

	out := filepath.Join(t.TempDir(), "device") // TempDir is 0700: the Device Client checks
	create := exec.Command(bin("tunneld"), "device", "create", "--data-dir", dir, "--thing", agentThing, "--out", out, "--endpoint", "127.0.0.1")
	if created, err := create.CombinedOutput(); err != nil {
		t.Fatalf("tunneld device create: %v\n%s", err, created)
	}
	confFile := filepath.Join(out, agentThing+".device-client.json")
	b, err := os.ReadFile(confFile)
	if err != nil {
		t.Fatal(err)
	}
	var conf deviceClientConfig
	if err := json.Unmarshal(b, &conf); err != nil {
		t.Fatalf("%s: %v", confFile, err)
	}
	if conf.Endpoint != "127.0.0.1" || conf.Tunneling.Endpoint != "127.0.0.1" || conf.ThingName != agentThing {
		t.Fatalf("configuration %s", b)
	}
	if err := os.Chmod(out, 0o700); err != nil {
		t.Fatal(err)
	}

	home := t.TempDir()
	cargs := append([]string{"--config-file", confFile, "--log-level", "DEBUG", "--log-type", "STDOUT"}, o.ClientArgs...)
	dc := startPath(t, "aws-iot-device-client", path, []string{"HOME=" + home}, cargs...)
	if _, err := dc.WaitLine(context.Background(), rxSubscribed, agentWait); err != nil {
		if strings.Contains(dc.output(), "devicecl.lock") && dc.Exited() {
			peerUnavailable(t, "skipping: another AWS IoT Device Client holds its lock file (/run/lock/devicecl.lock):\n%s", dc.Tail(5))
		}
		t.Fatalf("the Device Client did not subscribe to its notifications: %v", err)
	}
	return &deviceClientRig{tunneld: d, endpoint: strings.TrimPrefix(u, "https://"), caFile: ca,
		caDir: hashedCADir(t, ca), sshd: sshd, thing: agentThing, confFile: confFile, client: dc}
}

// ourSource starts our localproxy as the source of tok, "-s 0" (one free
// port), with extra flags (e.g. "-y", "V1"), and returns the local port.
func (r *deviceClientRig) ourSource(t *testing.T, tok string, extra ...string) (*proc, string) {
	t.Helper()
	p, addrs := startSource(t, r.endpoint, tok, "0", 1, append([]string{"-c", r.caDir}, extra...)...)
	var addr string
	for _, a := range addrs {
		addr = a
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("source listens on %v", addrs)
	}
	return p, port
}

// refSource starts the reference local proxy as the source of tok on a
// free port, "-s PORT", with extra flags, and returns the local port.
func (r *deviceClientRig) refSource(t *testing.T, tok string, extra ...string) (*proc, string) {
	t.Helper()
	rr := &refRig{tunneld: r.tunneld, ref: referenceBinary(t), endpoint: r.endpoint, caDir: r.caDir, listen: r.endpoint}
	p, addrs := rr.refSource(t, tok, []string{""}, extra...)
	_, port, err := net.SplitHostPort(addrs[""])
	if err != nil {
		t.Fatalf("source listens on %v", addrs)
	}
	return p, port
}

// closeTunnel closes a tunnel with the API.
func (r *deviceClientRig) closeTunnel(t *testing.T, id string) {
	t.Helper()
	if code := r.call(t, "CloseTunnel", map[string]any{"tunnelId": id}, nil); code != 200 {
		t.Fatalf("CloseTunnel %s: HTTP %d", id, code)
	}
}

// openSSH opens a tunnel for the rig's thing with service SSH, which
// notifies the Device Client, and waits until tunneld reports the Device
// Client connected as its destination.
func (r *deviceClientRig) openSSH(t *testing.T) openTunnelOut {
	t.Helper()
	tun := r.openTunnel(t, r.thing, "SSH")
	r.waitLine(`msg="peer connected" tunnel_id=`+regexp.QuoteMeta(tun.TunnelID)+` .*mode=destination`, agentWait)
	return tun
}

// rxSubscribed is what the Device Client logs once MQTT is up.
var rxSubscribed = regexp.MustCompile(`Subscribed to tunnel notification topic`)

// tunneldClient wraps a TLS tunneld started at url with data directory dir
// and CA file ca with an API client that trusts the CA.
func tunneldClient(t *testing.T, p *proc, url, dir, ca string) *tunneld {
	t.Helper()
	tlsCfg, err := tunnel.TLSConfig(ca, false)
	if err != nil {
		t.Fatal(err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg
	t.Cleanup(tr.CloseIdleConnections)
	d := &tunneld{proc: p, url: url, wsURL: strings.Replace(url, "https", "wss", 1), dataDir: dir,
		client: &http.Client{Timeout: 30 * time.Second, Transport: tr}}
	creds, err := os.ReadFile(filepath.Join(dir, "aws-credentials"))
	if err != nil {
		t.Fatal(err)
	}
	d.keyID = regexp.MustCompile(`aws_access_key_id = (\S+)`).FindStringSubmatch(string(creds))[1]
	d.secret = regexp.MustCompile(`aws_secret_access_key = (\S+)`).FindStringSubmatch(string(creds))[1]
	return d
}
