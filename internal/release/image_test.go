package release

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// untar extracts a tar file into dir (regular files and directories).
func untar(t *testing.T, file, dir string) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if h.Typeflag == tar.TypeDir {
			os.MkdirAll(p, 0o755)
			continue
		}
		os.MkdirAll(filepath.Dir(p), 0o755)
		data, _ := io.ReadAll(tr)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestImage reads the OCI archive with go-containerregistry: index.json
// names the multi-arch index by version; its image for this machine has
// two layers (base, binaries), the non-root user, /data as a volume and
// owned by that user, tunneld as the entrypoint; and the tunneld taken
// out of the layer runs.
func TestImage(t *testing.T) {
	out, _ := testRelease(t)
	dir := t.TempDir()
	untar(t, filepath.Join(out, ImageFile(testVersion)), dir)
	top, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].MediaType != types.OCIImageIndex || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != testVersion {
		t.Fatalf("index.json: %+v", im.Manifests)
	}
	idx, err := top.ImageIndex(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	arch := hostTarget(t).GOARCH
	var d *v1.Descriptor
	for i := range m.Manifests {
		if p := m.Manifests[i].Platform; p != nil && p.OS == "linux" && p.Architecture == arch {
			d = &m.Manifests[i]
		}
	}
	if d == nil || d.MediaType != types.OCIManifestSchema1 {
		t.Fatalf("no linux/%s OCI manifest in %+v", arch, m.Manifests)
	}
	img, err := idx.Image(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if cf.OS != "linux" || cf.Architecture != arch || c.User != "65532:65532" || strings.Join(c.Entrypoint, " ") != "/usr/bin/tunneld" ||
		strings.Join(c.Cmd, " ") != strings.Join(ImageCmd, " ") || c.WorkingDir != "/data" || !cf.Created.Time.Equal(testTime) || c.Labels["org.opencontainers.image.version"] != testVersion {
		t.Errorf("config: %+v %+v", cf, c)
	}
	if _, ok := c.Volumes["/data"]; !ok {
		t.Errorf("volumes %v", c.Volumes)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 2 {
		t.Fatalf("layers: %d %v", len(layers), err)
	}
	files := map[string]*tar.Header{}
	var tunneld []byte
	for _, l := range layers {
		if mt, _ := l.MediaType(); mt != types.OCILayer {
			t.Errorf("layer media type %s", mt)
		}
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = h
			if h.Name == "etc/passwd" {
				b, _ := io.ReadAll(tr)
				if !strings.Contains(string(b), "sectun:x:65532:65532:") {
					t.Errorf("/etc/passwd: %s", b)
				}
			}
			if h.Name == "usr/bin/tunneld" {
				tunneld, _ = io.ReadAll(tr)
			}
		}
		rc.Close()
	}
	for _, b := range Binaries {
		if h := files["usr/bin/"+b]; h == nil || h.Mode != 0o755 || h.Uid != 0 {
			t.Errorf("usr/bin/%s: %+v", b, h)
		}
	}
	if h := files["data/"]; h == nil || h.Uid != ImageUID || h.Gid != ImageUID || h.Typeflag != tar.TypeDir {
		t.Errorf("/data: %+v", h)
	}
	if h := files["tmp/"]; h == nil || h.Mode != 0o1777 {
		t.Errorf("/tmp: %+v", h)
	}
	if _, err := os.Stat(caBundle); err == nil && files[strings.TrimPrefix(caBundle, "/")] == nil {
		t.Error("no CA bundle in the image")
	}
	bin := filepath.Join(t.TempDir(), "tunneld")
	if err := os.WriteFile(bin, tunneld, 0o755); err != nil {
		t.Fatal(err)
	}
	if o, err := exec.Command(bin, "--version").CombinedOutput(); err != nil || strings.TrimSpace(string(o)) != "tunneld "+testVersion {
		t.Errorf("the image's tunneld --version: %v %q", err, o)
	}
}

// TestImagePodman loads the archive into podman, runs tunneld from it
// (host network, a bind-mounted /data) and passes a tunnel through it
// with localproxy. Skipped without a podman that can run containers.
func TestImagePodman(t *testing.T) {
	podman, err := exec.LookPath("podman")
	if err != nil {
		t.Skip("podman is not installed (apt-get install podman): the image is not run")
	}
	if os.Geteuid() != 0 {
		t.Skip("not root: rootful podman is needed here")
	}
	if o, err := exec.Command(podman, "info").CombinedOutput(); err != nil {
		t.Skipf("podman cannot run here: %v\n%s", err, o)
	}
	out, res := testRelease(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ref := "localhost/sectun-test:" + testVersion
	o, err := exec.CommandContext(ctx, podman, "pull", "oci-archive:"+filepath.Join(out, ImageFile(testVersion))).CombinedOutput()
	if err != nil {
		t.Fatalf("podman pull oci-archive: %v\n%s", err, o)
	}
	id := strings.TrimSpace(string(o[strings.LastIndexByte(strings.TrimSpace(string(o)), '\n')+1:]))
	if o, err := exec.Command(podman, "tag", id, ref).CombinedOutput(); err != nil {
		t.Fatalf("podman tag: %v\n%s", err, o)
	}
	t.Cleanup(func() { exec.Command(podman, "rmi", "-f", ref).Run() })
	data := t.TempDir()
	if err := os.Chown(data, ImageUID, ImageUID); err != nil {
		t.Fatal(err)
	}
	name := "sectun-test-" + strings.ReplaceAll(time.Now().Format("150405.000"), ".", "")
	// The image's own entrypoint and user; the arguments replace Cmd so
	// that it listens on a free loopback port of the host network.
	cmd := exec.CommandContext(ctx, podman, "run", "--rm", "--name", name, "--network=host", "--ulimit=host", "-v", data+":/data", ref,
		"--listen=127.0.0.1:0", "--data-dir=/data", "--mqtt-listen=off")
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		pw.Close()
		close(exited)
	}()
	defer func() {
		exec.Command(podman, "stop", "-t", "5", name).Run()
		<-exited
	}()
	w := watch(pr)
	m, early := w.find(`tunneld is listening on (https://127\.0\.0\.1:\d+)`, 2*time.Minute)
	if m == nil && strings.Contains(early, "OCI permission denied") {
		t.Skipf("podman cannot start containers on this machine (image loaded and tagged fine):\n%s", early)
	}
	if m == nil {
		t.Fatalf("tunneld in the container did not start:\n%s", early)
	}
	endpoint := m[1]
	passTunnel(t, ctx, filepath.Join(res.Binaries[hostTarget(t).Name()], "localproxy"), endpoint, filepath.Join(data, "aws-credentials"), filepath.Join(data, "tls", "ca.pem"))
	st, err := os.Stat(filepath.Join(data, "aws-credentials"))
	if err != nil {
		t.Fatal(err)
	}
	if uid := st.Sys().(*syscall.Stat_t).Uid; uid != ImageUID {
		t.Errorf("the container wrote /data as uid %d, not the image's user", uid)
	}
}
