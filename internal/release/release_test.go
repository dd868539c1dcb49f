package release

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// testVersion and testTime are what the test builds link in and stamp.
const testVersion = "v0.9.1-test"

var testTime = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

var (
	buildOnce sync.Once
	buildRes  *Result
	buildOut  string
	buildErr  error
)

// hostTarget is the release target of this machine, if it is one.
func hostTarget(t *testing.T) Target {
	t.Helper()
	if runtime.GOOS != "linux" || (runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64") {
		t.Skipf("the release tests build for the host and run its binaries: %s/%s is not linux/amd64 or linux/arm64", runtime.GOOS, runtime.GOARCH)
	}
	return Target{GOOS: "linux", GOARCH: runtime.GOARCH}
}

// testRelease builds the release for the host target once per test
// binary (the first build of a clean cache takes minutes) and returns
// its output directory.
func testRelease(t *testing.T) (string, *Result) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: the release build takes minutes on a cold cache")
	}
	if raceEnabled {
		// Measured: TestReproducible alone passed the 15-minute timeout with
		// -race on a loaded 2-core machine. .ci/run runs this package again
		// without -race.
		t.Skip("-race: the release build's compression runs instrumented and takes far too long; run go test ./internal/release without -race (CI does)")
	}
	tg := hostTarget(t)
	buildOnce.Do(func() {
		buildOut, buildErr = os.MkdirTemp("", "sectun-release-test-")
		if buildErr != nil {
			return
		}
		buildRes, buildErr = Run(context.Background(), Config{Root: "../..", Out: buildOut, Version: testVersion, Time: testTime, Targets: []Target{tg}})
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildOut, buildRes
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildOut != "" {
		os.RemoveAll(buildOut)
	}
	os.Exit(code)
}

// TestReproducible builds the same release a second time, from a copy of
// the sources in another directory, and wants the same bytes in every
// artifact. The Go build cache is shared (a cold rebuild takes minutes
// more), so what this proves is that paths, VCS stamps, build IDs and
// every timestamp of the archives, packages, image and SBOM are fixed;
// the compiler's own determinism is Go's promise.
func TestReproducible(t *testing.T) {
	out1, res1 := testRelease(t)
	src := t.TempDir()
	if err := copyTree("../..", src); err != nil {
		t.Fatal(err)
	}
	out2 := t.TempDir()
	res2, err := Run(context.Background(), Config{Root: src, Out: out2, Version: testVersion, Time: testTime, Targets: []Target{hostTarget(t)}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(res1.Artifacts, " ") != strings.Join(res2.Artifacts, " ") {
		t.Fatalf("artifacts differ:\n%v\n%v", res1.Artifacts, res2.Artifacts)
	}
	for _, a := range res1.Artifacts {
		b1, err1 := os.ReadFile(filepath.Join(out1, a))
		b2, err2 := os.ReadFile(filepath.Join(out2, a))
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if !bytes.Equal(b1, b2) {
			t.Errorf("%s differs between two builds (%d and %d bytes)", a, len(b1), len(b2))
		}
	}
	t.Logf("%d artifacts identical", len(res1.Artifacts))
}

// copyTree copies the repository's regular files, without .git and
// symbolic links (../shared).
func copyTree(from, to string) error {
	return filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "dist") {
			return filepath.SkipDir
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), data, 0o644)
	})
}

// TestVersionFlags runs every released binary's --version: the version
// comes from -ldflags -X, so it is right even though the build has
// -buildvcs=false (as this machine's GOFLAGS also sets).
func TestVersionFlags(t *testing.T) {
	_, res := testRelease(t)
	dir := res.Binaries[hostTarget(t).Name()]
	for bin, want := range map[string]string{
		"tunneld":      "tunneld " + testVersion,
		"localproxy":   "sectun localproxy " + testVersion,
		"tunnel-agent": "tunnel-agent " + testVersion,
		"sectun":       "sectun " + testVersion,
	} {
		out, err := exec.Command(filepath.Join(dir, bin), "--version").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != want {
			t.Errorf("%s --version: %v %q, want %q", bin, err, out, want)
		}
	}
	out, err := exec.Command(filepath.Join(dir, "tunneld"), "version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "tunneld "+testVersion {
		t.Errorf("tunneld version: %v %q", err, out)
	}
}

// TestArchive checks the host target's archive: the four binaries
// (mode 0755), LICENSE, README.md, every entry stamped with the release
// time and owned by root, and SHA256SUMS right about it.
func TestArchive(t *testing.T) {
	out, _ := testRelease(t)
	tg := hostTarget(t)
	name := ArchiveName(testVersion, tg)
	f, err := os.Open(filepath.Join(out, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	got := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h
		if !h.ModTime.Equal(testTime) || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d", h.Name, h.ModTime, h.Uid, h.Gid)
		}
	}
	top := "sectun_" + testVersion + "_" + tg.Name() + "/"
	for _, b := range Binaries {
		if h := got[top+b]; h == nil || h.Mode != 0o755 || h.Size < 1<<20 {
			t.Errorf("%s: %+v", b, h)
		}
	}
	for _, f := range []string{"LICENSE", "README.md"} {
		if h := got[top+f]; h == nil || h.Mode != 0o644 {
			t.Errorf("%s: %+v", f, h)
		}
	}
	sums := checksums(t, out)
	if sums[name] == "" || sums[name] != sha256File(t, filepath.Join(out, name)) {
		t.Errorf("SHA256SUMS for %s: %q", name, sums[name])
	}
	for n, sum := range sums {
		if sha256File(t, filepath.Join(out, n)) != sum {
			t.Errorf("SHA256SUMS is wrong about %s", n)
		}
	}
	if sha := exec.Command("sha256sum", "--check", "--quiet", "SHA256SUMS"); true {
		sha.Dir = out
		if o, err := sha.CombinedOutput(); err != nil && !errors.Is(err, exec.ErrNotFound) {
			t.Errorf("sha256sum --check: %v\n%s", err, o)
		}
	}
}

func checksums(t *testing.T, out string) map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join(out, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok || len(sum) != 64 {
			t.Fatalf("SHA256SUMS line %q", sc.Text())
		}
		m[name] = sum
	}
	return m
}

func sha256File(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestSBOM reads the CycloneDX SBOM: each binary with its hash, the
// modules it links with versions from go.mod, and the Go toolchain.
func TestSBOM(t *testing.T) {
	out, res := testRelease(t)
	data, err := os.ReadFile(filepath.Join(out, "sectun_"+testVersion+".cdx.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc SBOM
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.BOMFormat != "CycloneDX" || doc.SpecVersion != "1.5" || !strings.HasPrefix(doc.SerialNumber, "urn:uuid:") || doc.Metadata.Component.Version != testVersion || doc.Metadata.Timestamp != testTime.Format(time.RFC3339) {
		t.Errorf("header: %+v", doc)
	}
	gomod, _ := os.ReadFile("../../go.mod")
	comps := map[string]SBOMComponent{}
	for _, c := range doc.Components {
		comps[c.BOMRef] = c
	}
	dir := res.Binaries[hostTarget(t).Name()]
	for _, b := range Binaries {
		c, ok := comps["binary:"+b]
		if !ok || len(c.Hashes) != 1 || c.Hashes[0].Content != sha256File(t, filepath.Join(dir, b)) {
			t.Errorf("binary %s: %+v", b, c)
		}
	}
	deps := map[string][]string{}
	for _, d := range doc.Dependencies {
		deps[d.Ref] = d.DependsOn
	}
	// tunneld links SQLite (modernc.org/sqlite), localproxy does not.
	var sqlite string
	for ref, c := range comps {
		if c.Name == "modernc.org/sqlite" {
			sqlite = ref
			if !strings.Contains(string(gomod), "modernc.org/sqlite "+c.Version) {
				t.Errorf("sqlite version %s is not go.mod's", c.Version)
			}
			if len(c.Properties) == 0 || !strings.HasPrefix(c.Properties[0].Value, "h1:") {
				t.Errorf("sqlite has no go.sum hash: %+v", c)
			}
		}
	}
	if sqlite == "" || !contains(deps["binary:tunneld"], sqlite) || contains(deps["binary:localproxy"], sqlite) {
		t.Errorf("sqlite %q in tunneld's dependencies %v / localproxy's", sqlite, deps["binary:tunneld"])
	}
	if !contains(deps["binary:localproxy"], "pkg:golang/stdlib@"+runtime.Version()) {
		t.Errorf("no stdlib %s in localproxy's dependencies", runtime.Version())
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestZipAndTarAreDeterministic(t *testing.T) {
	es := []entry{{Name: "a/b/tool.exe", Mode: 0o755, Data: []byte("MZ binary")}, {Name: "a/LICENSE", Mode: 0o644, Data: []byte("license")}}
	z1, err := zipBytes(es, testTime)
	if err != nil {
		t.Fatal(err)
	}
	z2, _ := zipBytes(es, testTime)
	g1, _ := tarGz(es, testTime)
	g2, _ := tarGz(es, testTime)
	if !bytes.Equal(z1, z2) || !bytes.Equal(g1, g2) {
		t.Fatal("two archives of the same files differ")
	}
	zr, err := zip.NewReader(bytes.NewReader(z1), int64(len(z1)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range zr.File {
		names = append(names, f.Name)
		if !f.Modified.Equal(testTime) {
			t.Errorf("%s: modified %v", f.Name, f.Modified)
		}
		if f.Name == "a/b/tool.exe" && f.Mode().Perm() != 0o755 {
			t.Errorf("mode %v", f.Mode())
		}
	}
	if got := strings.Join(names, " "); got != "a/ a/LICENSE a/b/ a/b/tool.exe" {
		t.Errorf("zip entries %s", got)
	}
}

func TestTargetsAndVersions(t *testing.T) {
	if len(Targets) != 8 {
		t.Errorf("%d targets", len(Targets))
	}
	for in, want := range map[string]string{"linux/armv6": "linux_armv6", "linux_armv7": "linux_armv7", "windows/arm64": "windows_arm64", "darwin/amd64": "darwin_amd64"} {
		tg, err := ParseTarget(in)
		if err != nil || tg.Name() != want {
			t.Errorf("ParseTarget(%q) = %v, %v", in, tg.Name(), err)
		}
	}
	for _, bad := range []string{"linux", "linux/mips", "plan9/amd64", "linux/arm"} {
		if _, err := ParseTarget(bad); !errors.Is(err, ErrRelease) {
			t.Errorf("ParseTarget(%q): %v", bad, err)
		}
	}
	for in, want := range map[string]string{"v1.2.3": "1.2.3", "v1.2.3-rc.1": "1.2.3~rc.1", "devel-0123456789ab": "0.0.0~devel.0123456789ab", "devel-0123456789ab-dirty": "0.0.0~devel.0123456789ab.dirty"} {
		if got := PackageVersion(in); got != want {
			t.Errorf("PackageVersion(%q) = %q, want %q", in, got, want)
		}
	}
	if _, err := SourceTime(context.Background(), ".", "12x"); !errors.Is(err, ErrRelease) {
		t.Errorf("bad SOURCE_DATE_EPOCH: %v", err)
	}
	if tm, err := SourceTime(context.Background(), ".", "1700000000"); err != nil || tm.Unix() != 1700000000 {
		t.Errorf("SOURCE_DATE_EPOCH: %v %v", tm, err)
	}
}
