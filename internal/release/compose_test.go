package release

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestCompose checks the cluster manifest: PostgreSQL, Mosquitto, three
// tunneld nodes with distinct node IDs and every option one tunneld has
// (when the release is built), and HAProxy balancing exactly those nodes.
func TestCompose(t *testing.T) {
	data, err := os.ReadFile("../../deploy/compose/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			Image   string
			Command []string
		}
	}
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"postgres", "mosquitto", "haproxy", "tunneld-1", "tunneld-2", "tunneld-3"} {
		if _, ok := c.Services[s]; !ok {
			t.Errorf("no service %s", s)
		}
	}
	haproxy, err := os.ReadFile("../../deploy/compose/haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	var help []byte
	if !testing.Short() {
		_, res := testRelease(t)
		help, _ = exec.Command(filepath.Join(res.Binaries[hostTarget(t).Name()], "tunneld"), "--help").CombinedOutput()
	}
	ids := map[string]bool{}
	for _, n := range []string{"tunneld-1", "tunneld-2", "tunneld-3"} {
		s := c.Services[n]
		if s.Image != "sectun/tunneld" {
			t.Errorf("%s: image %q (the Dockerfile's tag)", n, s.Image)
		}
		args := strings.Join(s.Command, " ")
		for _, want := range []string{"--node-id=" + n, "--cluster-advertise=" + n + ":", "--mqtt-broker=tcp://mosquitto:1883", "--listen=0.0.0.0:8443", "--tls-cert="} {
			if !strings.Contains(args, want) {
				t.Errorf("%s lacks %s", n, want)
			}
		}
		for _, a := range s.Command {
			if strings.HasPrefix(a, "--node-id=") {
				ids[a] = true
			}
			name, _, _ := strings.Cut(a, "=")
			if help != nil && !strings.Contains(string(help), "      "+name+" ") {
				t.Errorf("%s: tunneld has no option %s", n, name)
			}
		}
		if !strings.Contains(string(haproxy), "server "+n+" "+n+":8443") {
			t.Errorf("haproxy.cfg does not balance %s", n)
		}
	}
	if len(ids) != 3 {
		t.Errorf("node IDs %v", ids)
	}
}

// TestDockerfile: the Dockerfile builds what the release's image is:
// the same go build flags, user, volume, entrypoint and command.
func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("../../deploy/container/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	q := func(v []string) string { return `["` + strings.Join(v, `", "`) + `"]` }
	for _, want := range []string{
		"go build -trimpath -buildvcs=false", `-ldflags="-s -w -buildid= -X ` + VersionVar + "=${VERSION}",
		"FROM scratch", "USER 65532:65532", `VOLUME ["/data"]`, "ENTRYPOINT " + q(ImageEntrypoint), "CMD " + q(ImageCmd),
		"sectun:x:65532:65532:", "CGO_ENABLED=0",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("Dockerfile lacks %s", want)
		}
	}
	if got := strings.Join(BuildArgs("${VERSION}"), " "); got != "build -trimpath -buildvcs=false -ldflags=-s -w -buildid= -X "+VersionVar+"=${VERSION}" {
		t.Errorf("BuildArgs changed (%s): update the Dockerfile", got)
	}
}
