package release

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// entry is one file of an archive, package or image layer.
type entry struct {
	Name string // slash path inside the archive
	Mode os.FileMode
	Data []byte
	Dir  bool
}

// archiveReadme is the README.md of every archive.
const archiveReadme = `# sectun %s (%s)

AWS IoT Secure Tunneling, self-hosted and wire-compatible.

| file | what it is |
| --- | --- |
| tunneld%[3]s | the tunneling service: AWS management API + /tunnel relay |
| localproxy%[3]s | drop-in replacement for the AWS reference local proxy |
| tunnel-agent%[3]s | device agent: opens tunnels on MQTT notifications |
| sectun%[3]s | operator CLI: open a tunnel and connect in one command |

Each binary is static and prints its version with --version and its
options with --help. Start the service with defaults (TLS with a
development CA, an API key and SQLite in ./tunneld-data):

    ./tunneld%[3]s

Verify this archive against SHA256SUMS from the same release:

    sha256sum --check --ignore-missing SHA256SUMS

Documentation: https://github.com/sectun/sectun
License: Apache-2.0 (LICENSE).
`

// archiveEntries lists the files of t's archive: binaries, LICENSE,
// README.md and, on Unix, completions and man pages.
func archiveEntries(cfg Config, t Target, binDir string, d *docs) ([]entry, error) {
	top := archiveBase(cfg.Version, t)
	var es []entry
	for _, b := range Binaries {
		data, err := os.ReadFile(filepath.Join(binDir, b+t.Exe()))
		if err != nil {
			return nil, err
		}
		es = append(es, entry{Name: top + "/" + b + t.Exe(), Mode: 0o755, Data: data})
	}
	license, err := os.ReadFile(filepath.Join(cfg.Root, "LICENSE"))
	if err != nil {
		return nil, err
	}
	es = append(es,
		entry{Name: top + "/LICENSE", Mode: 0o644, Data: license},
		entry{Name: top + "/README.md", Mode: 0o644, Data: fmt.Appendf(nil, archiveReadme, cfg.Version, strings.Replace(t.Name(), "_", "/", 1), t.Exe())})
	if t.GOOS != "windows" && d != nil {
		for _, f := range d.files {
			es = append(es, entry{Name: top + "/" + f.Name, Mode: 0o644, Data: f.Data})
		}
	}
	return es, nil
}

func archiveBase(version string, t Target) string {
	return "sectun_" + version + "_" + t.Name()
}

// ArchiveName is t's archive file name.
func ArchiveName(version string, t Target) string {
	if t.GOOS == "windows" {
		return archiveBase(version, t) + ".zip"
	}
	return archiveBase(version, t) + ".tar.gz"
}

func writeArchive(cfg Config, t Target, binDir string, d *docs) (string, error) {
	es, err := archiveEntries(cfg, t, binDir, d)
	if err != nil {
		return "", err
	}
	name := ArchiveName(cfg.Version, t)
	var data []byte
	if t.GOOS == "windows" {
		data, err = zipBytes(es, cfg.Time)
	} else {
		data, err = tarGz(es, cfg.Time)
	}
	if err != nil {
		return "", err
	}
	return name, os.WriteFile(filepath.Join(cfg.Out, name), data, 0o644)
}

// withDirs adds the parent directories of es's files, sorted by name, so
// that the archive lists each directory before its files.
func withDirs(es []entry) []entry {
	seen := map[string]bool{}
	var all []entry
	for _, e := range es {
		if e.Dir {
			seen[strings.TrimSuffix(e.Name, "/")] = true
		}
	}
	for _, e := range es {
		for d := path.Dir(e.Name); d != "." && d != "/" && !seen[d]; d = path.Dir(d) {
			seen[d] = true
			all = append(all, entry{Name: d, Mode: 0o755, Dir: true})
		}
		all = append(all, e)
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	return all
}

// writeTar writes es as a tar stream owned by root with every mtime mt.
func writeTar(w io.Writer, es []entry, mt time.Time, owner func(name string) (uid, gid int)) error {
	tw := tar.NewWriter(w)
	for _, e := range withDirs(es) {
		mode := int64(e.Mode.Perm())
		if e.Mode&os.ModeSticky != 0 {
			mode |= 0o1000
		}
		h := &tar.Header{Name: e.Name, Mode: mode, ModTime: mt, Typeflag: tar.TypeReg, Size: int64(len(e.Data)), Format: tar.FormatPAX}
		if owner != nil {
			h.Uid, h.Gid = owner(e.Name)
		}
		if e.Dir {
			h.Typeflag, h.Name, h.Size = tar.TypeDir, strings.TrimSuffix(e.Name, "/")+"/", 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := tw.Write(e.Data); err != nil {
			return err
		}
	}
	return tw.Close()
}

func tarGz(es []entry, mt time.Time) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if err := writeTar(zw, es, mt, nil); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func zipBytes(es []entry, mt time.Time) ([]byte, error) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range withDirs(es) {
		h := &zip.FileHeader{Name: e.Name, Method: zip.Deflate, Modified: mt}
		if e.Dir {
			h.Name, h.Method = e.Name+"/", zip.Store
			h.SetMode(os.ModeDir | 0o755)
		} else {
			h.SetMode(e.Mode)
		}
		w, err := zw.CreateHeader(h)
		if err != nil {
			return nil, err
		}
		if _, err := w.Write(e.Data); err != nil {
			return nil, err
		}
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeChecksums writes out/SHA256SUMS for names, in sha256sum's format.
func writeChecksums(out string, names []string) error {
	var b strings.Builder
	for _, n := range names {
		f, err := os.Open(filepath.Join(out, n))
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(h.Sum(nil)), n)
	}
	return os.WriteFile(filepath.Join(out, "SHA256SUMS"), []byte(b.String()), 0o644)
}
