package release

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/sectun/sectun/internal/clidoc"
	"github.com/sectun/sectun/internal/localproxy/config"
)

// docs are the generated man pages and shell completions.
type docs struct {
	dir   string  // on disk, for the packages
	files []entry // Name relative to dir: man/tunneld.1, completions/...
}

// forBinary lists b's files.
func (d *docs) forBinary(b string) []entry {
	var out []entry
	for _, f := range d.files {
		base := path.Base(f.Name)
		if strings.TrimSuffix(strings.TrimPrefix(strings.TrimSuffix(base, ".1"), "_"), ".fish") == b {
			out = append(out, f)
		}
	}
	return out
}

// installPath is where a package installs a generated file.
func (d *docs) installPath(name string) string {
	base := path.Base(name)
	switch path.Dir(name) {
	case "man":
		return "/usr/share/man/man1/" + base
	case "completions/bash":
		return "/usr/share/bash-completion/completions/" + base
	case "completions/zsh":
		return "/usr/share/zsh/vendor-completions/" + base
	case "completions/fish":
		return "/usr/share/fish/vendor_completions.d/" + base
	}
	return "/usr/share/doc/sectun/" + name
}

// docFile is where kind's document of binary b goes.
func docFile(kind, b string) string {
	switch kind {
	case "man":
		return "man/" + b + ".1"
	case "zsh":
		return "completions/zsh/_" + b
	case "fish":
		return "completions/fish/" + b + ".fish"
	}
	return "completions/bash/" + b
}

// generateDocs writes the man pages and completions into Out/docs, by
// running each host binary's hidden --gen-doc (localproxy's options come
// from its config package). Without a host target among the release's,
// the host binaries are built first.
func generateDocs(ctx context.Context, cfg Config, res *Result) (*docs, error) {
	host := Target{GOOS: runtime.GOOS, GOARCH: runtime.GOARCH}
	if host.GOARCH == "arm" {
		host.GOARM = "7"
	}
	binDir, ok := res.Binaries[host.Name()]
	if !ok {
		binDir = filepath.Join(cfg.Out, ".host")
		if err := Build(ctx, cfg, host, binDir); err != nil {
			return nil, err
		}
		defer os.RemoveAll(binDir)
	}
	d := &docs{dir: filepath.Join(cfg.Out, "docs")}
	env := append(os.Environ(), "SOURCE_DATE_EPOCH="+strconv.FormatInt(cfg.Time.Unix(), 10))
	for _, b := range Binaries {
		for _, kind := range clidoc.Kinds {
			var out bytes.Buffer
			if b == "localproxy" {
				c := clidoc.For("localproxy", config.FlagSet())
				c.Version, c.Date = cfg.Version, cfg.Time.Format("2006-01-02")
				if err := clidoc.Write(&out, kind, c); err != nil {
					return nil, err
				}
			} else {
				args := []string{"--" + clidoc.FlagName, kind}
				if b == "sectun" {
					args = append([]string{"connect"}, args...)
				}
				cmd := exec.CommandContext(ctx, filepath.Join(binDir, b+host.Exe()), args...)
				cmd.Env = env
				var stderr bytes.Buffer
				cmd.Stdout, cmd.Stderr = &out, &stderr
				if err := cmd.Run(); err != nil {
					return nil, fmt.Errorf("%w: %s --%s %s: %v: %s", ErrRelease, b, clidoc.FlagName, kind, err, stderr.String())
				}
			}
			name := docFile(kind, b)
			p := filepath.Join(d.dir, filepath.FromSlash(name))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return nil, err
			}
			if err := os.WriteFile(p, out.Bytes(), 0o644); err != nil {
				return nil, err
			}
			d.files = append(d.files, entry{Name: name, Mode: 0o644, Data: out.Bytes()})
		}
	}
	return d, nil
}
