package config

import (
	"bytes"
	"fmt"
	"strings"
)

// MaxConfigFileSize bounds a --config file and each --config-dir file.
const MaxConfigFileSize = 1 << 20

// fileOption is one "name = value" line of a --config file.
type fileOption struct {
	name, value string
	line        int
}

// lines splits data into lines, dropping a UTF-8 byte order mark.
func lines(data []byte) []string {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	return strings.Split(string(data), "\n")
}

// parseOptionsFile parses a --config file the way Boost.ProgramOptions
// reads configuration files: '#' starts a comment anywhere on a line;
// lines are trimmed of spaces, tabs, CR and LF; "[section]" makes later
// names "section.name"; every other non-empty line must be "name = value"
// (split at the first '='; both sides trimmed). Names are not checked here.
func parseOptionsFile(data []byte) ([]fileOption, error) {
	var out []fileOption
	prefix := ""
	for i, l := range lines(data) {
		if n := strings.IndexByte(l, '#'); n >= 0 {
			l = l[:n]
		}
		l = strings.Trim(l, " \t\r\n")
		if l == "" {
			continue
		}
		if l[0] == '[' && l[len(l)-1] == ']' {
			prefix = l[1 : len(l)-1]
			if !strings.HasSuffix(prefix, ".") {
				prefix += "."
			}
			continue
		}
		name, value, ok := strings.Cut(l, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: %q is not name = value", i+1, l)
		}
		name = prefix + strings.Trim(name, " \t\r\n")
		if name == "" || name == prefix {
			return nil, fmt.Errorf("line %d: missing option name before '='", i+1)
		}
		out = append(out, fileOption{name: name, value: strings.Trim(value, " \t\r\n"), line: i + 1})
	}
	return out, nil
}

// iniEntry is a top-level key of a --config-dir file.
type iniEntry struct {
	key, value string
	line       int
}

// isSpace is C's isspace in the "C" locale, which Boost.PropertyTree's
// INI parser trims with.
func isSpace(r rune) bool {
	return r == ' ' || r == '\t' || r == '\n' || r == '\v' || r == '\f' || r == '\r'
}

// parseINI parses a --config-dir file as Boost.PropertyTree's read_ini
// does, and returns its keys outside any [section] (the only ones the
// reference looks service IDs up among). Lines are trimmed; lines starting
// with ';' or '#' are comments; "[name]" opens a section; other lines are
// "key = value" (split at the first '='; no inline comments). A line
// without '=', an empty key, a repeated key or section, or an unmatched
// '[' is an error, as in the reference, which then skips the whole file.
func parseINI(data []byte) ([]iniEntry, error) {
	var top []iniEntry
	topKeys := map[string]bool{} // top-level keys and section names share a namespace
	var sectionKeys map[string]bool
	section := ""
	for i, l := range lines(data) {
		l = strings.TrimFunc(l, isSpace)
		if l == "" || l[0] == ';' || l[0] == '#' {
			continue
		}
		if l[0] == '[' {
			// A section left empty is dropped again, so it may reappear.
			if sectionKeys != nil && len(sectionKeys) == 0 {
				delete(topKeys, section)
			}
			end := strings.IndexByte(l, ']')
			if end < 0 {
				return nil, fmt.Errorf("line %d: unmatched '['", i+1)
			}
			section = strings.TrimFunc(l[1:end], isSpace)
			if topKeys[section] {
				return nil, fmt.Errorf("line %d: duplicate section name %q", i+1, section)
			}
			topKeys[section] = true
			sectionKeys = map[string]bool{}
			continue
		}
		eq := strings.IndexByte(l, '=')
		if eq < 0 {
			return nil, fmt.Errorf("line %d: '=' character not found in %q", i+1, l)
		}
		if eq == 0 {
			return nil, fmt.Errorf("line %d: key expected before '='", i+1)
		}
		key := strings.TrimFunc(l[:eq], isSpace)
		value := strings.TrimFunc(l[eq+1:], isSpace)
		keys := topKeys
		if sectionKeys != nil {
			keys = sectionKeys
		}
		if keys[key] {
			return nil, fmt.Errorf("line %d: duplicate key name %q", i+1, key)
		}
		keys[key] = true
		if sectionKeys == nil {
			top = append(top, iniEntry{key: key, value: value, line: i + 1})
		}
	}
	return top, nil
}
