package release

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ImageUID is the user (and group) the image runs as; /data is its.
const ImageUID = 65532

// ImageEntrypoint and ImageCmd start tunneld for a container: on every
// interface, which tunneld allows only with TLS (its development CA in
// /data/tls unless --tls-cert) and signed API requests (the key in
// /data/aws-credentials), as always. Arguments given to `run` replace Cmd.
var (
	ImageEntrypoint = []string{"/usr/bin/tunneld"}
	ImageCmd        = []string{"--listen=0.0.0.0:8443", "--data-dir=/data", "--log-format=json"}
)

// imageArches are the image's platforms and their release targets.
var imageArches = []struct {
	target Target
	arch   string
}{
	{Target{GOOS: "linux", GOARCH: "amd64"}, "amd64"},
	{Target{GOOS: "linux", GOARCH: "arm64"}, "arm64"},
}

// ImageFile is the OCI archive's file name.
func ImageFile(version string) string { return "sectun_" + version + "_oci.tar" }

// caBundle is the host's CA bundle, copied into the image so tunneld can
// verify an external broker or PostgreSQL server.
const caBundle = "/etc/ssl/certs/ca-certificates.crt"

func imageBase(cfg Config) ([]entry, error) {
	es := []entry{
		{Name: "etc/passwd", Mode: 0o644, Data: fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\nsectun:x:%d:%d:sectun:/data:/sbin/nologin\n", ImageUID, ImageUID)},
		{Name: "etc/group", Mode: 0o644, Data: fmt.Appendf(nil, "root:x:0:\nsectun:x:%d:\n", ImageUID)},
		{Name: "data", Mode: 0o750, Dir: true},
		{Name: "tmp", Mode: os.ModeSticky | 0o777, Dir: true},
	}
	ca, err := os.ReadFile(caBundle)
	if err != nil {
		fmt.Fprintf(cfg.Log, "  image: no %s on this machine: the image has no CA bundle\n", caBundle)
	} else {
		es = append(es, entry{Name: strings.TrimPrefix(caBundle, "/"), Mode: 0o644, Data: ca})
	}
	license, err := os.ReadFile(filepath.Join(cfg.Root, "LICENSE"))
	if err != nil {
		return nil, err
	}
	return append(es, entry{Name: "usr/share/doc/sectun/LICENSE", Mode: 0o644, Data: license}), nil
}

// imageLayer makes a gzip layer of es; /data and /tmp belong to the
// image's user, everything else to root.
func imageLayer(cfg Config, es []entry) (v1.Layer, error) {
	var buf bytes.Buffer
	owner := func(name string) (int, int) {
		if strings.TrimSuffix(name, "/") == "data" {
			return ImageUID, ImageUID
		}
		return 0, 0
	}
	if err := writeTar(&buf, es, cfg.Time, owner); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(9))
}

// Image builds the image of one architecture from the binaries in binDir.
func Image(cfg Config, arch, binDir string) (v1.Image, error) {
	base, err := imageBase(cfg)
	if err != nil {
		return nil, err
	}
	var bins []entry
	for _, b := range Binaries {
		data, err := os.ReadFile(filepath.Join(binDir, b))
		if err != nil {
			return nil, err
		}
		bins = append(bins, entry{Name: "usr/bin/" + b, Mode: 0o755, Data: data})
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, l := range []struct {
		es []entry
		by string
	}{{base, "sectun release: passwd, group, CA certificates, /data"}, {bins, "sectun release: tunneld, localproxy, tunnel-agent, sectun"}} {
		layer, err := imageLayer(cfg, l.es)
		if err != nil {
			return nil, err
		}
		if img, err = mutate.Append(img, mutate.Addendum{Layer: layer, MediaType: types.OCILayer,
			History: v1.History{Created: v1.Time{Time: cfg.Time}, CreatedBy: l.by}}); err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created = "linux", arch, v1.Time{Time: cfg.Time}
	cf.Config = v1.Config{
		User:         fmt.Sprintf("%d:%d", ImageUID, ImageUID),
		Entrypoint:   ImageEntrypoint,
		Cmd:          ImageCmd,
		WorkingDir:   "/data",
		Env:          []string{"PATH=/usr/bin", "SSL_CERT_FILE=" + caBundle},
		Volumes:      map[string]struct{}{"/data": {}},
		ExposedPorts: map[string]struct{}{"8443/tcp": {}},
		Labels: map[string]string{
			"org.opencontainers.image.title":       "sectun tunneld",
			"org.opencontainers.image.description": "Self-hosted AWS IoT Secure Tunneling service (also holds localproxy, tunnel-agent, sectun)",
			"org.opencontainers.image.version":     cfg.Version,
			"org.opencontainers.image.source":      "https://github.com/sectun/sectun",
			"org.opencontainers.image.licenses":    "Apache-2.0",
			"org.opencontainers.image.created":     cfg.Time.Format("2006-01-02T15:04:05Z"),
		},
	}
	return mutate.ConfigFile(img, cf)
}

// writeImage writes the OCI image layout of the multi-arch image as a
// tar: index.json names the index (ref.name = the version), which lists
// one image per architecture built in this release.
func writeImage(cfg Config, res *Result) ([]string, error) {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	n := 0
	for _, a := range imageArches {
		binDir, ok := res.Binaries[a.target.Name()]
		if !ok {
			continue
		}
		img, err := Image(cfg, a.arch, binDir)
		if err != nil {
			return nil, fmt.Errorf("%w: image %s: %v", ErrRelease, a.arch, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: a.arch}}})
		n++
	}
	if n == 0 {
		return nil, nil
	}
	dir, err := os.MkdirTemp(cfg.Out, ".oci-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return nil, err
	}
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": cfg.Version})); err != nil {
		return nil, fmt.Errorf("%w: image layout: %v", ErrRelease, err)
	}
	var es []entry
	err = filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if info.IsDir() {
			es = append(es, entry{Name: filepath.ToSlash(rel), Mode: 0o755, Dir: true})
			return nil
		}
		data, err := os.ReadFile(path)
		es = append(es, entry{Name: filepath.ToSlash(rel), Mode: 0o644, Data: data})
		return err
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(es, func(i, j int) bool { return es[i].Name < es[j].Name })
	var buf bytes.Buffer
	if err := writeTar(&buf, es, cfg.Time, nil); err != nil {
		return nil, err
	}
	name := ImageFile(cfg.Version)
	return []string{name}, os.WriteFile(filepath.Join(cfg.Out, name), buf.Bytes(), 0o644)
}
