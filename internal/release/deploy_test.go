package release

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sectun/sectun/internal/agent"
)

// TestSampleAgentConfig: the commented sample agent.json that the
// tunnel-agent package installs is a valid configuration ("//" holds the
// comments).
func TestSampleAgentConfig(t *testing.T) {
	f, err := agent.LoadFile("../../deploy/etc/agent.json")
	if err != nil {
		t.Fatal(err)
	}
	if f.ThingName == "" || f.Broker == "" || f.Services["SSH"] != "localhost:22" || len(f.Comment) == 0 {
		t.Errorf("sample: %+v", f)
	}
}

// TestUnitsVerify runs systemd-analyze verify on the units, with the
// binaries they start on a temporary root (the check wants ExecStart's
// file to exist).
func TestUnitsVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed: units not verified")
	}
	for _, u := range []string{"tunneld.service", "tunnel-agent.service"} {
		data, err := os.ReadFile(filepath.Join("../../deploy/systemd", u))
		if err != nil {
			t.Fatal(err)
		}
		s := string(data)
		for _, want := range []string{"NoNewPrivileges=yes", "ProtectSystem=strict", "User=", "ExecStart=/usr/bin/", "WantedBy=multi-user.target"} {
			if !strings.Contains(s, want) {
				t.Errorf("%s lacks %s", u, want)
			}
		}
		if u == "tunneld.service" && !strings.Contains(s, "StateDirectory=tunneld") {
			t.Errorf("%s lacks StateDirectory", u)
		}
		// systemd-analyze verify checks ExecStart's binary exists: point
		// it at the real one when the package is installed, else at a
		// copy with /usr/bin replaced.
		dir := t.TempDir()
		bin := strings.TrimSuffix(u, ".service")
		if _, err := os.Stat("/usr/bin/" + bin); err != nil {
			os.WriteFile(filepath.Join(dir, bin), []byte("#!/bin/sh\n"), 0o755)
			s = strings.ReplaceAll(s, "/usr/bin/"+bin, filepath.Join(dir, bin))
		}
		p := filepath.Join(dir, u)
		os.WriteFile(p, []byte(s), 0o644)
		out, err := exec.Command(sa, "verify", "--man=no", p).CombinedOutput()
		if err != nil || strings.Contains(string(out), u) {
			t.Errorf("systemd-analyze verify %s: %v\n%s", u, err, out)
		}
	}
}
