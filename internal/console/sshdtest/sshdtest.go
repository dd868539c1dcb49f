// Package sshdtest runs a private OpenSSH sshd for the console's tests: a
// free 127.0.0.1 port, a generated host key and a generated ed25519 key
// authorized for the current user. Tests skip when sshd or ssh-keygen is
// not installed (Debian: openssh-server, openssh-client).
package sshdtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sectun/sectun/internal/proctest"
)

// Server is a running sshd.
type Server struct {
	Addr string // 127.0.0.1:port
	Port int
	// KeyFile is the authorized private key (OpenSSH format), Key its
	// contents.
	KeyFile string
	Key     []byte
	User    string
	// HostKeyFingerprint is the host key's SHA-256 fingerprint, as
	// ssh-keygen -l prints it.
	HostKeyFingerprint string
}

// Start starts sshd; it stops when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	for _, prog := range []string{"/usr/sbin/sshd", "ssh-keygen"} {
		if _, err := exec.LookPath(prog); err != nil {
			t.Skipf("%s not installed (Debian: openssh-server, openssh-client): %v", prog, err)
		}
	}
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, name := range []string{"host", "user"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, name)).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v\n%s", err, out)
		}
	}
	out, err := exec.Command("ssh-keygen", "-l", "-f", filepath.Join(dir, "host.pub")).Output()
	if err != nil {
		t.Fatal(err)
	}
	fp := regexp.MustCompile(`SHA256:\S+`).FindString(string(out))
	pub, err := os.ReadFile(filepath.Join(dir, "user.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Skipf("cannot create /run/sshd: %v", err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	conf := fmt.Sprintf("Port %d\nListenAddress 127.0.0.1\nHostKey %s\nPidFile none\nUsePAM no\nStrictModes no\n"+
		"AuthorizedKeysFile %s\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"+
		"PermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
		port, filepath.Join(dir, "host"), filepath.Join(dir, "authorized_keys"))
	if err := os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := proctest.Start(proctest.Config{Name: "sshd", Path: "/usr/sbin/sshd", Args: []string{"-D", "-e", "-f", filepath.Join(dir, "sshd_config")}, KillWithParent: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(5 * time.Second) })
	if _, err := p.WaitLine(context.Background(), regexp.MustCompile(`Server listening on 127\.0\.0\.1 port`), 30*time.Second); err != nil {
		t.Fatalf("sshd did not start: %v\n%s", err, p.Tail(20))
	}
	key, err := os.ReadFile(filepath.Join(dir, "user"))
	if err != nil {
		t.Fatal(err)
	}
	return &Server{Addr: fmt.Sprintf("127.0.0.1:%d", port), Port: port, KeyFile: filepath.Join(dir, "user"), Key: key,
		User: strings.TrimSpace(me.Username), HostKeyFingerprint: fp}
}
