package clidoc

import (
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// ErrKind marks an unknown --gen-doc kind.
var ErrKind = errors.New("clidoc: unknown kind")

// Kinds are the documents Write makes.
var Kinds = []string{"bash", "zsh", "fish", "man"}

// FlagName is the hidden flag of every command that writes a document.
const FlagName = "gen-doc"

// AddFlag adds the hidden --gen-doc flag to fs.
func AddFlag(fs *pflag.FlagSet) *string {
	p := fs.String(FlagName, "", "write a shell completion or the man page (bash, zsh, fish, man) and exit")
	fs.MarkHidden(FlagName)
	return p
}

// Sub is a subcommand.
type Sub struct{ Name, Summary string }

// Command is what the documents describe.
type Command struct {
	// Name is the program (tunneld); Synopsis the usage lines after it.
	Name     string
	Synopsis []string
	// Summary is the one-line description, Description paragraphs.
	Summary     string
	Description []string
	Subcommands []Sub
	// Flags are the options (hidden ones left out).
	Flags   *pflag.FlagSet
	Version string
	SeeAlso []string
	// Date is the man page's date (2006-01-02); empty: from
	// SOURCE_DATE_EPOCH, else none.
	Date string
}

// Write writes the document of kind for c.
func Write(w io.Writer, kind string, c Command) error {
	switch kind {
	case "bash":
		return bash(w, c)
	case "zsh":
		return zsh(w, c)
	case "fish":
		return fish(w, c)
	case "man":
		return man(w, c)
	}
	return fmt.Errorf("%w %q: want one of %s", ErrKind, kind, strings.Join(Kinds, ", "))
}

type flag struct {
	long, short, arg, help, def string
	takesValue                  bool
	file                        bool
	choices                     []string
}

// fileWord marks an option whose value is a file or directory.
var fileWord = regexp.MustCompile(`\b(file|directory|dir|path)\b`)

// knownChoices completes these values.
var knownChoices = map[string][]string{
	"log-level":  {"debug", "info", "warn", "error"},
	"log-format": {"text", "json"},
	"mode":       {"src", "dst", "source", "destination"},
	"status":     {"OPEN", "CLOSED"},
}

func flags(c Command) []flag {
	var out []flag
	if c.Flags == nil {
		return nil
	}
	c.Flags.VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		arg, help := pflag.UnquoteUsage(f)
		fl := flag{long: f.Name, short: f.Shorthand, arg: arg, help: help, takesValue: f.NoOptDefVal == ""}
		if f.Value.Type() == "bool" || arg == "" {
			fl.takesValue = false
		}
		switch f.DefValue {
		case "", "false", "0", "[]", "0s":
		default:
			fl.def = f.DefValue
		}
		fl.file = fl.takesValue && fileWord.MatchString(strings.ToLower(arg+" "+help))
		fl.choices = knownChoices[f.Name]
		out = append(out, fl)
	})
	sort.SliceStable(out, func(i, j int) bool { return out[i].long < out[j].long })
	return out
}

// short is the first sentence-ish part of help, for completion menus.
func short(help string) string {
	s := help
	for _, sep := range []string{"; ", " (", ": "} {
		if i := strings.Index(s, sep); i > 0 {
			s = s[:i]
		}
	}
	if len(s) > 70 {
		s = s[:67] + "..."
	}
	return s
}

func fnName(name string) string { return "_" + strings.NewReplacer("-", "_", " ", "_").Replace(name) }

func bash(w io.Writer, c Command) error {
	fl := flags(c)
	var words, valued, files []string
	for _, f := range fl {
		words = append(words, "--"+f.long)
		if f.short != "" {
			words = append(words, "-"+f.short)
		}
		if f.takesValue {
			valued = append(valued, "--"+f.long)
			if f.short != "" {
				valued = append(valued, "-"+f.short)
			}
		}
		if f.file {
			files = append(files, "--"+f.long)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# bash completion for %s %s, generated from its flags; do not edit.\n", c.Name, c.Version)
	fmt.Fprintf(&b, "%s() {\n\tlocal cur=\"${COMP_WORDS[COMP_CWORD]}\" prev=\"${COMP_WORDS[COMP_CWORD-1]}\"\n", fnName(c.Name))
	fmt.Fprintf(&b, "\tcase \"$prev\" in\n")
	for _, f := range fl {
		if len(f.choices) > 0 {
			fmt.Fprintf(&b, "\t--%s) COMPREPLY=($(compgen -W %q -- \"$cur\")); return ;;\n", f.long, strings.Join(f.choices, " "))
		}
	}
	if len(files) > 0 {
		fmt.Fprintf(&b, "\t%s) COMPREPLY=($(compgen -f -- \"$cur\")); return ;;\n", strings.Join(files, "|"))
	}
	if len(valued) > 0 {
		fmt.Fprintf(&b, "\t%s) COMPREPLY=(); return ;;\n", strings.Join(valued, "|"))
	}
	fmt.Fprintf(&b, "\tesac\n")
	if len(c.Subcommands) > 0 {
		var subs []string
		for _, s := range c.Subcommands {
			subs = append(subs, s.Name)
		}
		fmt.Fprintf(&b, "\tif [[ $COMP_CWORD -eq 1 && \"$cur\" != -* ]]; then COMPREPLY=($(compgen -W %q -- \"$cur\")); return; fi\n", strings.Join(subs, " "))
	}
	fmt.Fprintf(&b, "\tCOMPREPLY=($(compgen -W %q -- \"$cur\"))\n}\n", strings.Join(words, " "))
	fmt.Fprintf(&b, "complete -o default -F %s %s\n", fnName(c.Name), c.Name)
	_, err := io.WriteString(w, b.String())
	return err
}

func zshQuote(s string) string {
	return strings.NewReplacer("'", "'\\''", "[", "\\[", "]", "\\]", ":", "\\:").Replace(s)
}

func zsh(w io.Writer, c Command) error {
	var b strings.Builder
	fmt.Fprintf(&b, "#compdef %s\n# zsh completion for %s %s, generated from its flags; do not edit.\n", c.Name, c.Name, c.Version)
	fmt.Fprintf(&b, "_arguments -s \\\n")
	for _, f := range flags(c) {
		spec := "--" + f.long
		if f.short != "" {
			spec = "{-" + f.short + ",--" + f.long + "}"
		}
		action := ""
		switch {
		case len(f.choices) > 0:
			action = ":" + zshQuote(strings.ToLower(orDefault(f.arg, "value"))) + ":(" + strings.Join(f.choices, " ") + ")"
		case f.file:
			action = ":" + zshQuote(strings.ToLower(orDefault(f.arg, "file"))) + ":_files"
		case f.takesValue:
			action = ":" + zshQuote(strings.ToLower(orDefault(f.arg, "value"))) + ":"
		}
		if f.short != "" {
			fmt.Fprintf(&b, "\t%s'[%s]%s' \\\n", spec, zshQuote(short(f.help)), action)
		} else {
			fmt.Fprintf(&b, "\t'%s[%s]%s' \\\n", spec, zshQuote(short(f.help)), action)
		}
	}
	if len(c.Subcommands) > 0 {
		var subs []string
		for _, s := range c.Subcommands {
			subs = append(subs, s.Name+"\\:"+strings.ReplaceAll(zshQuote(s.Summary), " ", "\\ "))
		}
		fmt.Fprintf(&b, "\t'1:command:((%s))' \\\n", strings.Join(subs, " "))
	}
	fmt.Fprintf(&b, "\t'*:file:_files'\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func fishQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, "'", `\'`).Replace(s) + "'"
}

func fish(w io.Writer, c Command) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# fish completion for %s %s, generated from its flags; do not edit.\n", c.Name, c.Version)
	for _, s := range c.Subcommands {
		fmt.Fprintf(&b, "complete -c %s -n __fish_use_subcommand -f -a %s -d %s\n", c.Name, s.Name, fishQuote(s.Summary))
	}
	for _, f := range flags(c) {
		fmt.Fprintf(&b, "complete -c %s", c.Name)
		if f.short != "" {
			fmt.Fprintf(&b, " -s %s", f.short)
		}
		fmt.Fprintf(&b, " -l %s", f.long)
		switch {
		case len(f.choices) > 0:
			fmt.Fprintf(&b, " -x -a %s", fishQuote(strings.Join(f.choices, " ")))
		case f.file:
			fmt.Fprintf(&b, " -r -F")
		case f.takesValue:
			fmt.Fprintf(&b, " -x")
		}
		fmt.Fprintf(&b, " -d %s\n", fishQuote(short(f.help)))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// roff escapes text for a man page.
func roff(s string) string {
	s = strings.NewReplacer(`\`, `\e`, "-", `\-`).Replace(s)
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			l = `\&` + l
		}
		lines = append(lines, l)
	}
	return strings.Join(lines, "\n")
}

func man(w io.Writer, c Command) error {
	date := c.Date
	if e := os.Getenv("SOURCE_DATE_EPOCH"); date == "" && e != "" {
		if sec, err := strconv.ParseInt(e, 10, 64); err == nil {
			date = time.Unix(sec, 0).UTC().Format("2006-01-02")
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, ".\\\" Generated from the flags of %s; do not edit.\n", c.Name)
	fmt.Fprintf(&b, ".TH %s 1 \"%s\" \"sectun %s\" \"sectun manual\"\n", strings.ToUpper(c.Name), date, roff(c.Version))
	fmt.Fprintf(&b, ".SH NAME\n%s \\- %s\n", roff(c.Name), roff(c.Summary))
	fmt.Fprintf(&b, ".SH SYNOPSIS\n")
	syn := c.Synopsis
	if len(syn) == 0 {
		syn = []string{"[options]"}
	}
	for i, s := range syn {
		if i > 0 {
			b.WriteString(".br\n")
		}
		fmt.Fprintf(&b, ".B %s\n%s\n", roff(c.Name), roff(s))
	}
	if len(c.Description) > 0 {
		b.WriteString(".SH DESCRIPTION\n")
		for i, p := range c.Description {
			if i > 0 {
				b.WriteString(".PP\n")
			}
			b.WriteString(roff(p) + "\n")
		}
	}
	if len(c.Subcommands) > 0 {
		b.WriteString(".SH COMMANDS\n")
		for _, s := range c.Subcommands {
			fmt.Fprintf(&b, ".TP\n.B %s\n%s\n", roff(s.Name), roff(s.Summary))
		}
	}
	if fl := flags(c); len(fl) > 0 {
		b.WriteString(".SH OPTIONS\n")
		for _, f := range fl {
			b.WriteString(".TP\n")
			head := `\fB\-\-` + roff(f.long) + `\fR`
			if f.short != "" {
				head = `\fB\-` + roff(f.short) + `\fR, ` + head
			}
			if f.arg != "" {
				head += ` \fI` + roff(f.arg) + `\fR`
			}
			b.WriteString(head + "\n" + roff(f.help))
			if f.def != "" {
				b.WriteString(" (default: " + roff(f.def) + ")")
			}
			b.WriteString("\n")
		}
	}
	if len(c.SeeAlso) > 0 {
		var refs []string
		for _, s := range c.SeeAlso {
			refs = append(refs, `\fB`+roff(s)+`\fR(1)`)
		}
		fmt.Fprintf(&b, ".SH SEE ALSO\n%s\n", strings.Join(refs, ", "))
	}
	b.WriteString(".SH WWW\nhttps://github.com/sectun/sectun\n")
	_, err := io.WriteString(w, b.String())
	return err
}
