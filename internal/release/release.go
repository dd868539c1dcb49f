package release

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ErrRelease marks a failed release step.
var ErrRelease = errors.New("release")

// Binaries are the commands every archive holds, in ./cmd.
var Binaries = []string{"tunneld", "localproxy", "tunnel-agent", "sectun"}

// Target is one platform of the release.
type Target struct {
	GOOS, GOARCH string
	// GOARM is 6 or 7 for GOARCH arm.
	GOARM string
}

// Name is the target's part of artifact names: linux_amd64, linux_armv7.
func (t Target) Name() string {
	if t.GOARCH == "arm" {
		return t.GOOS + "_armv" + t.GOARM
	}
	return t.GOOS + "_" + t.GOARCH
}

// Exe is the binary name suffix on the target's OS.
func (t Target) Exe() string {
	if t.GOOS == "windows" {
		return ".exe"
	}
	return ""
}

// Targets are all release targets.
var Targets = []Target{
	{GOOS: "linux", GOARCH: "amd64"},
	{GOOS: "linux", GOARCH: "arm64"},
	{GOOS: "linux", GOARCH: "arm", GOARM: "7"},
	{GOOS: "linux", GOARCH: "arm", GOARM: "6"},
	{GOOS: "windows", GOARCH: "amd64"},
	{GOOS: "windows", GOARCH: "arm64"},
	{GOOS: "darwin", GOARCH: "amd64"},
	{GOOS: "darwin", GOARCH: "arm64"},
}

// ParseTarget reads "linux/amd64", "linux/armv7" or "linux_armv7".
func ParseTarget(s string) (Target, error) {
	osName, arch, ok := strings.Cut(strings.Replace(s, "_", "/", 1), "/")
	if !ok {
		return Target{}, fmt.Errorf("%w: target %q: want os/arch, e.g. linux/arm64 or linux/armv6", ErrRelease, s)
	}
	for _, t := range Targets {
		if t.GOOS == osName && (t.GOARCH == arch && t.GOARCH != "arm" || t.GOARCH == "arm" && arch == "armv"+t.GOARM) {
			return t, nil
		}
	}
	return Target{}, fmt.Errorf("%w: target %q is not a release target (%s)", ErrRelease, s, targetNames())
}

func targetNames() string {
	var n []string
	for _, t := range Targets {
		n = append(n, strings.Replace(t.Name(), "_", "/", 1))
	}
	return strings.Join(n, ", ")
}

// Config says what to build and where.
type Config struct {
	// Root is the repository root (with go.mod, cmd/, deploy/, LICENSE).
	Root string
	// Out is the output directory; it is emptied first.
	Out string
	// Version is linked into every binary; empty: from git (the tag on
	// HEAD, else devel-<commit>).
	Version string
	// Time is every timestamp in the artifacts; zero: SOURCE_DATE_EPOCH,
	// else the commit time of HEAD.
	Time time.Time
	// Targets to build; empty: all.
	Targets []Target
	// NoPackages skips the .deb and .rpm packages, NoImage the OCI image.
	NoPackages, NoImage bool
	// Log receives progress lines; nil discards them.
	Log io.Writer
	// Env is the environment of the go commands; nil: os.Environ().
	Env []string
}

// Result lists what Run made, as paths relative to Config.Out.
type Result struct {
	Version   string
	Artifacts []string
	// Binaries maps a target name to its directory of binaries.
	Binaries map[string]string
}

// Run builds the release.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	if cfg.Env == nil {
		cfg.Env = os.Environ()
	}
	if len(cfg.Targets) == 0 {
		cfg.Targets = Targets
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, err
	}
	cfg.Root = root
	if cfg.Version == "" {
		if cfg.Version, err = GitVersion(ctx, root); err != nil {
			return nil, err
		}
	}
	if cfg.Time.IsZero() {
		if cfg.Time, err = SourceTime(ctx, root, os.Getenv("SOURCE_DATE_EPOCH")); err != nil {
			return nil, err
		}
	}
	cfg.Time = cfg.Time.UTC()
	if err := os.RemoveAll(cfg.Out); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return nil, err
	}
	res := &Result{Version: cfg.Version, Binaries: map[string]string{}}
	fmt.Fprintf(cfg.Log, "release %s (timestamps %s), %d targets\n", cfg.Version, cfg.Time.Format(time.RFC3339), len(cfg.Targets))

	for _, t := range cfg.Targets {
		start := time.Now()
		dir := filepath.Join(cfg.Out, "bin", t.Name())
		if err := Build(ctx, cfg, t, dir); err != nil {
			return nil, err
		}
		res.Binaries[t.Name()] = dir
		fmt.Fprintf(cfg.Log, "  built %-14s (%.1fs)\n", t.Name(), time.Since(start).Seconds())
	}
	docs, err := generateDocs(ctx, cfg, res)
	if err != nil {
		return nil, err
	}
	var sbomBins []string
	for _, t := range cfg.Targets {
		dir := res.Binaries[t.Name()]
		name, err := writeArchive(cfg, t, dir, docs)
		if err != nil {
			return nil, err
		}
		res.Artifacts = append(res.Artifacts, name)
		if t.GOOS == "linux" && sbomBins == nil {
			for _, b := range Binaries {
				sbomBins = append(sbomBins, filepath.Join(dir, b))
			}
		}
	}
	if sbomBins == nil { // no Linux target: the first one's binaries
		for _, b := range Binaries {
			sbomBins = append(sbomBins, filepath.Join(res.Binaries[cfg.Targets[0].Name()], b+cfg.Targets[0].Exe()))
		}
	}
	sbom := "sectun_" + cfg.Version + ".cdx.json"
	if err := WriteSBOM(filepath.Join(cfg.Out, sbom), cfg.Version, cfg.Time, sbomBins); err != nil {
		return nil, err
	}
	res.Artifacts = append(res.Artifacts, sbom)
	if !cfg.NoPackages {
		pk, err := writePackages(cfg, res, docs)
		if err != nil {
			return nil, err
		}
		res.Artifacts = append(res.Artifacts, pk...)
	}
	if !cfg.NoImage {
		img, err := writeImage(cfg, res)
		if err != nil {
			return nil, err
		}
		res.Artifacts = append(res.Artifacts, img...)
	}
	gg, err := writeGreengrass(cfg)
	if err != nil {
		return nil, err
	}
	if gg != "" {
		res.Artifacts = append(res.Artifacts, gg)
	}
	sort.Strings(res.Artifacts)
	if err := writeChecksums(cfg.Out, res.Artifacts); err != nil {
		return nil, err
	}
	res.Artifacts = append(res.Artifacts, "SHA256SUMS")
	return res, nil
}

// GitVersion is the tag on HEAD (v1.2.3), else devel-<12 hex digits of
// the commit>, with -dirty when tracked files differ from the commit.
func GitVersion(ctx context.Context, root string) (string, error) {
	v, err := git(ctx, root, "describe", "--tags", "--exact-match", "HEAD")
	if err != nil {
		c, err := git(ctx, root, "rev-parse", "HEAD")
		if err != nil {
			return "", fmt.Errorf("%w: version: %v (pass --version)", ErrRelease, err)
		}
		v = "devel-" + c[:min(12, len(c))]
	}
	if st, err := git(ctx, root, "status", "--porcelain", "--untracked-files=no"); err == nil && st != "" {
		v += "-dirty"
	}
	return v, nil
}

// SourceTime is epoch (SOURCE_DATE_EPOCH) if set, else HEAD's commit time.
func SourceTime(ctx context.Context, root, epoch string) (time.Time, error) {
	if epoch == "" {
		var err error
		if epoch, err = git(ctx, root, "log", "-1", "--format=%ct", "HEAD"); err != nil {
			return time.Time{}, fmt.Errorf("%w: commit time: %v (set SOURCE_DATE_EPOCH)", ErrRelease, err)
		}
	}
	sec, err := strconv.ParseInt(epoch, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: SOURCE_DATE_EPOCH %q: %v", ErrRelease, epoch, err)
	}
	return time.Unix(sec, 0).UTC(), nil
}

func git(ctx context.Context, root string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", root}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(ee.Stderr)))
		}
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}
