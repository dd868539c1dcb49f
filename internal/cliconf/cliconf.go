// Package cliconf fills command-line flags from a configuration file whose
// keys are the long flag names, for the daemons' --config option. Values
// given on the command line win over the file.
package cliconf

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// ApplyFile reads path, a file of `name = value` lines (blank lines and
// lines starting with # or ; are ignored, a [section] header is ignored),
// and sets every flag of fs that the command line did not set. A key may
// repeat for flags that take several values. Unknown keys are errors, so a
// typo does not go unnoticed.
func ApplyFile(fs *pflag.FlagSet, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	fromCLI := map[string]bool{}
	fs.Visit(func(fl *pflag.Flag) { fromCLI[fl.Name] = true })
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" || s[0] == '#' || s[0] == ';' || s[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			return fmt.Errorf("%s:%d: want name = value", path, line)
		}
		k, v = strings.TrimSpace(k), strings.Trim(strings.TrimSpace(v), `"`)
		fl := fs.Lookup(k)
		if fl == nil {
			return fmt.Errorf("%s:%d: unknown setting %q (keys are the long option names, see --help)", path, line, k)
		}
		if fromCLI[k] {
			continue
		}
		if err := fs.Set(k, v); err != nil {
			return fmt.Errorf("%s:%d: %s: %w", path, line, k, err)
		}
	}
	return sc.Err()
}
