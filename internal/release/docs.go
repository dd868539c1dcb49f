package release

import (
	"context"
	"path"
	"strings"
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

func generateDocs(ctx context.Context, cfg Config) (*docs, error) {
	return nil, nil
}
