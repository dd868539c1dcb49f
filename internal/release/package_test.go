package release

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/operator"
)

// lineWatch collects a process's output lines and waits for a pattern.
type lineWatch struct {
	lines chan string
	seen  strings.Builder
}

func watch(r io.Reader) *lineWatch {
	w := &lineWatch{lines: make(chan string, 1024)}
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			select {
			case w.lines <- sc.Text():
			default: // nobody waits any more: drop
			}
		}
		close(w.lines)
	}()
	return w
}

func (w *lineWatch) wait(t *testing.T, re string, timeout time.Duration) []string {
	t.Helper()
	m, seen := w.find(re, timeout)
	if m == nil {
		t.Fatalf("no %q within %v (or the output ended):\n%s", re, timeout, seen)
	}
	return m
}

// find waits for re; nil and the output so far if the output ends or
// the timeout passes first.
func (w *lineWatch) find(re string, timeout time.Duration) ([]string, string) {
	rx := regexp.MustCompile(re)
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-w.lines:
			if !ok {
				return nil, w.seen.String()
			}
			w.seen.WriteString(l + "\n")
			if m := rx.FindStringSubmatch(l); m != nil {
				return m, ""
			}
		case <-deadline:
			return nil, w.seen.String()
		}
	}
}

// echoServer is a TCP echo service on 127.0.0.1.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

// passTunnel opens a tunnel on the tunneld at endpoint (credentials and
// CA files given), connects the two localproxy ends (the binary at
// localproxy) and sends bytes through it to a TCP echo service.
func passTunnel(t *testing.T, ctx context.Context, localproxy, endpoint, credFile, caFile string) {
	t.Helper()
	creds, err := operator.LoadCredentials("", func(k string) string {
		if k == "AWS_SHARED_CREDENTIALS_FILE" {
			return credFile
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	api := &operator.Client{Endpoint: endpoint, Region: "us-east-1", Credentials: creds, HTTP: operator.NewHTTPClient(&tls.Config{RootCAs: pool})}
	o, err := api.OpenTunnel(ctx, operator.OpenTunnelInput{DestinationConfig: &operator.DestinationConfig{Services: []string{"ECHO"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer api.CloseTunnel(context.Background(), o.TunnelID)
	ws := strings.Replace(endpoint, "https://", "wss://", 1)
	echo := echoServer(t)
	start := func(mode, mapping, token string) *lineWatch {
		flag := "-d"
		if mode == "src" {
			flag = "-s"
		}
		cmd := exec.CommandContext(ctx, localproxy, "-m", mode, "-e", ws, "-c", caFile, flag, mapping, "-v", "5")
		cmd.Env = []string{"AWSIOT_TUNNEL_ACCESS_TOKEN=" + token}
		pr, pw := io.Pipe()
		cmd.Stdout, cmd.Stderr = pw, pw
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			pw.Close()
		})
		return watch(pr)
	}
	dst := start("dst", "ECHO="+echo, o.DestinationAccessToken)
	dst.wait(t, `(?i)connected|ready`, 30*time.Second)
	src := start("src", "ECHO=0", o.SourceAccessToken)
	addr := src.wait(t, `Listening for ECHO on (127\.0\.0\.1:\d+)`, 30*time.Second)[1]
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	msg := "through the packaged tunneld\n"
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != msg {
		t.Fatalf("echo through the tunnel: %q, %v", got, err)
	}
}

// TestDebInstallRunPurge installs the tunneld and localproxy .debs with
// dpkg, verifies the installed units, runs tunneld exactly as the unit's
// ExecStart says, as the package's user, passes a tunnel through it with
// the packaged localproxy, then purges both and checks nothing is left.
// It needs root and dpkg, and leaves an already installed tunneld alone.
func TestDebInstallRunPurge(t *testing.T) {
	for _, tool := range []string{"dpkg", "dpkg-query", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed: the .deb is not tested here", tool)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("not root: dpkg cannot install the .deb")
	}
	for _, p := range []string{"tunneld", "localproxy"} {
		if out, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", p).Output(); strings.Contains(string(out), "installed") {
			t.Skipf("a %s package is installed on this machine: not touching it", p)
		}
	}
	out, _ := testRelease(t)
	arch := map[string]string{"amd64": "amd64", "arm64": "arm64"}[hostTarget(t).GOARCH]
	debs := []string{filepath.Join(out, PackageFile(testVersion, "tunneld", "deb", arch)), filepath.Join(out, PackageFile(testVersion, "localproxy", "deb", arch))}
	run := func(name string, args ...string) string {
		t.Helper()
		o, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, o)
		}
		return string(o)
	}
	purged := false
	purge := func() {
		if !purged {
			purged = true
			run("dpkg", "--purge", "tunneld", "localproxy")
		}
	}
	run("dpkg", append([]string{"-i"}, debs...)...)
	t.Cleanup(purge)
	files := strings.Fields(run("dpkg", "-L", "tunneld"))

	// Installed as the issue says; nothing started or enabled.
	for _, p := range []string{"/usr/bin/tunneld", "/usr/bin/localproxy", "/usr/bin/sectun", "/usr/lib/systemd/system/tunneld.service", "/usr/lib/sysusers.d/tunneld.conf", "/etc/sectun/tunneld.conf"} {
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
	if conf := run("dpkg-query", "-W", "-f=${Conffiles}", "tunneld"); !strings.Contains(conf, "/etc/sectun/tunneld.conf") {
		t.Errorf("tunneld.conf is not a conffile: %q", conf)
	}
	if _, err := os.Stat("/etc/systemd/system/multi-user.target.wants/tunneld.service"); err == nil {
		t.Error("the package enabled tunneld.service")
	}
	if o, err := exec.Command("pgrep", "-x", "tunneld").Output(); err == nil {
		t.Errorf("a tunneld runs right after install: %s", o)
	}
	st, err := os.Stat("/var/lib/tunneld")
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o750 {
		t.Errorf("/var/lib/tunneld mode %v", st.Mode())
	}
	uid := strings.TrimSpace(run("id", "-u", "tunneld"))
	if uid == "0" || st.Sys().(*syscall.Stat_t).Uid != parseUint(t, uid) {
		t.Errorf("tunneld uid %s, /var/lib/tunneld owner %d", uid, st.Sys().(*syscall.Stat_t).Uid)
	}
	if sa, err := exec.LookPath("systemd-analyze"); err == nil {
		if o, err := exec.Command(sa, "verify", "/usr/lib/systemd/system/tunneld.service").CombinedOutput(); err != nil || strings.Contains(string(o), "tunneld.service") {
			t.Errorf("systemd-analyze verify: %v\n%s", err, o)
		}
	} else {
		t.Log("systemd-analyze is not installed: unit not verified")
	}

	// Configure it as an operator would (a free port, no MQTT), then start
	// it as the unit does: ExecStart's words, as User=, in
	// WorkingDirectory=.
	conf, err := os.ReadFile("/etc/sectun/tunneld.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf = []byte(strings.Replace(string(conf), "listen = 127.0.0.1:8443", "listen = 127.0.0.1:0\nmqtt-listen = off", 1))
	if err := os.WriteFile("/etc/sectun/tunneld.conf", conf, 0o644); err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile("/usr/lib/systemd/system/tunneld.service")
	if err != nil {
		t.Fatal(err)
	}
	exe := unitValue(t, string(unit), "ExecStart")
	user := unitValue(t, string(unit), "User")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := append([]string{"--reuid=" + user, "--regid=" + user, "--init-groups", "--"}, strings.Fields(exe)...)
	cmd := exec.CommandContext(ctx, "setpriv", args...)
	cmd.Dir = unitValue(t, string(unit), "WorkingDirectory")
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			pw.Close()
		}
	}
	defer stop()
	w := watch(pr)
	endpoint := w.wait(t, `tunneld is listening on (https://127\.0\.0\.1:\d+)`, time.Minute)[1]
	passTunnel(t, ctx, "/usr/bin/localproxy", endpoint, "/var/lib/tunneld/aws-credentials", "/var/lib/tunneld/tls/ca.pem")
	// The operator command the README gives, against the running service.
	if o, err := exec.Command("/usr/bin/tunneld", "tunnels", "list", "--config", "/etc/sectun/tunneld.conf", "--data-dir", "/var/lib/tunneld", "--endpoint", endpoint).CombinedOutput(); err != nil || !strings.Contains(string(o), "CLOSED") && !strings.Contains(string(o), "OPEN") {
		t.Errorf("tunneld tunnels list: %v\n%s", err, o)
	}
	db, err := filepath.Glob("/var/lib/tunneld/*.db")
	if err != nil || len(db) == 0 {
		t.Fatalf("no database in /var/lib/tunneld: %v", err)
	}
	if st, err := os.Stat(db[0]); err != nil || st.Sys().(*syscall.Stat_t).Uid != parseUint(t, uid) {
		t.Errorf("%s is not the tunneld user's: %v", db[0], err)
	}
	stop()

	purge()
	for _, f := range append(files, "/var/lib/tunneld", "/etc/sectun") {
		if strings.HasPrefix(f, "/usr/share/doc") || f == "/." || f == "/usr" || f == "/usr/bin" || f == "/usr/lib" || f == "/etc" || f == "/usr/share" || f == "/usr/lib/systemd" || f == "/usr/lib/systemd/system" || f == "/usr/lib/sysusers.d" || strings.HasPrefix(f, "/usr/share/man") || strings.HasPrefix(f, "/usr/share/bash-completion") || strings.HasPrefix(f, "/usr/share/zsh") || strings.HasPrefix(f, "/usr/share/fish") {
			if st, err := os.Stat(f); err == nil && !st.IsDir() {
				t.Errorf("%s is left after purge", f)
			}
			continue
		}
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s is left after purge", f)
		}
	}
	if err := exec.Command("id", "tunneld").Run(); err == nil {
		t.Error("the tunneld user is left after purge")
	}
	if o, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", "tunneld").Output(); strings.Contains(string(o), "installed") {
		t.Errorf("dpkg still lists tunneld: %s", o)
	}
}

func unitValue(t *testing.T, unit, key string) string {
	t.Helper()
	for _, l := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			return v
		}
	}
	t.Fatalf("unit has no %s=", key)
	return ""
}

func parseUint(t *testing.T, s string) uint32 {
	t.Helper()
	var n uint32
	for _, c := range s {
		if c < '0' || c > '9' {
			t.Fatalf("not a number: %q", s)
		}
		n = n*10 + uint32(c-'0')
	}
	return n
}

// TestRPM checks the .rpm's metadata, files, configuration files and
// scripts with rpm itself (installing it would need an RPM system).
func TestRPM(t *testing.T) {
	if _, err := exec.LookPath("rpm"); err != nil {
		t.Skip("rpm is not installed: the .rpm is not checked")
	}
	out, _ := testRelease(t)
	arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64"}[hostTarget(t).GOARCH]
	p := filepath.Join(out, PackageFile(testVersion, "tunneld", "rpm", arch))
	q := func(args ...string) string {
		t.Helper()
		o, err := exec.Command("rpm", append([]string{"-qp"}, append(args, p)...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("rpm -qp %v: %v\n%s", args, err, o)
		}
		return string(o)
	}
	if got := q("--queryformat", "%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{LICENSE}"); got != "tunneld 0.9.1~test 1 "+arch+" Apache-2.0" {
		t.Errorf("metadata %q", got)
	}
	list := q("-l")
	for _, f := range []string{"/usr/bin/tunneld", "/usr/lib/systemd/system/tunneld.service", "/usr/lib/sysusers.d/tunneld.conf", "/etc/sectun/tunneld.conf"} {
		if !strings.Contains(list, f+"\n") {
			t.Errorf("%s not in the rpm:\n%s", f, list)
		}
	}
	if c := q("-c"); strings.TrimSpace(c) != "/etc/sectun/tunneld.conf" {
		t.Errorf("config files %q", c)
	}
	if s := q("--scripts"); !strings.Contains(s, "systemd-sysusers") || !strings.Contains(s, "postuninstall") {
		t.Errorf("scripts:\n%s", s)
	}
}
