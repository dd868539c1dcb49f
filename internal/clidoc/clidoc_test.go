package clidoc

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func sample() Command {
	fs := pflag.NewFlagSet("demo", pflag.ContinueOnError)
	fs.String("listen", "127.0.0.1:8443", "address to listen on ('0.0.0.0:8443': all)")
	fs.String("config", "", "configuration `file` of name = value lines")
	fs.StringP("mode", "m", "", "src or dst [the end]")
	fs.Bool("plaintext", false, "serve HTTP: no TLS")
	fs.String("log-level", "info", "debug, info, warn or error")
	fs.Int64("bandwidth-limit", 0, "bytes per second per tunnel direction")
	AddFlag(fs)
	return Command{Name: "demo-cmd", Summary: "a demo - with dashes", Synopsis: []string{"[options]", "sub ID"},
		Description: []string{".starts with a dot", `back\slash`}, Subcommands: []Sub{{"sub", "do a sub thing"}},
		Flags: fs, Version: "v1.0.0", SeeAlso: []string{"tunneld"}, Date: "2026-12-01"}
}

func gen(t *testing.T, kind string) string {
	t.Helper()
	var b bytes.Buffer
	if err := Write(&b, kind, sample()); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestBash: the completion is valid bash, and sourcing it completes the
// flags, a flag's choices and the subcommands.
func TestBash(t *testing.T) {
	s := gen(t, "bash")
	if strings.Contains(s, "--gen-doc") {
		t.Error("the hidden flag is completed")
	}
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "compgen -f") && (strings.Contains(l, "--bandwidth-limit") || !strings.Contains(l, "--config")) {
			t.Errorf("file completion for the wrong flags (\"direction\" is no dir): %s", l)
		}
	}
	p := filepath.Join(t.TempDir(), "demo")
	os.WriteFile(p, []byte(s), 0o644)
	script := `source ` + p + `
COMP_WORDS=(demo-cmd --log-l); COMP_CWORD=1; _demo_cmd; echo "1:${COMPREPLY[*]}"
COMP_WORDS=(demo-cmd --log-level w); COMP_CWORD=2; _demo_cmd; echo "2:${COMPREPLY[*]}"
COMP_WORDS=(demo-cmd s); COMP_CWORD=1; _demo_cmd; echo "3:${COMPREPLY[*]}"
COMP_WORDS=(demo-cmd -); COMP_CWORD=1; _demo_cmd; echo "4:${COMPREPLY[*]}"`
	out, err := exec.Command("bash", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	got := string(out)
	for _, want := range []string{"1:--log-level\n", "2:warn\n", "3:sub\n", "4:--bandwidth-limit --config --listen --log-level --mode -m --plaintext\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("want %q in:\n%s", want, got)
		}
	}
}

func TestZshAndFish(t *testing.T) {
	z := gen(t, "zsh")
	for _, want := range []string{"#compdef demo-cmd\n", `{-m,--mode}'[src or dst \[the end\]]:string:(src dst source destination)'`, `'--config[configuration file of name = value lines]:file:_files'`, `'--plaintext[serve HTTP]'`, `'1:command:((sub\:do\ a\ sub\ thing))'`} {
		if !strings.Contains(z, want) {
			t.Errorf("zsh: no %s in\n%s", want, z)
		}
	}
	f := gen(t, "fish")
	for _, want := range []string{"complete -c demo-cmd -s m -l mode -x -a 'src dst source destination'", "complete -c demo-cmd -l config -r -F", "complete -c demo-cmd -n __fish_use_subcommand -f -a sub"} {
		if !strings.Contains(f, want) {
			t.Errorf("fish: no %s in\n%s", want, f)
		}
	}
	for shell, s := range map[string]string{"zsh": z, "fish": f} {
		if _, err := exec.LookPath(shell); err != nil {
			t.Logf("%s is not installed: syntax not checked", shell)
			continue
		}
		p := filepath.Join(t.TempDir(), "c")
		os.WriteFile(p, []byte(s), 0o644)
		if out, err := exec.Command(shell, "-n", p).CombinedOutput(); err != nil {
			t.Errorf("%s -n: %v\n%s", shell, err, out)
		}
	}
}

// TestMan renders the page with groff and wants no warning.
func TestMan(t *testing.T) {
	s := gen(t, "man")
	for _, want := range []string{`.TH DEMO-CMD 1 "2026-12-01" "sectun v1.0.0"`, `demo\-cmd \- a demo \- with dashes`, `\&.starts with a dot`, `back\eslash`, `\fB\-m\fR, \fB\-\-mode\fR`, `\fB\-\-config\fR \fIfile\fR`, `(default: 127.0.0.1:8443)`, ".SH COMMANDS"} {
		if !strings.Contains(s, want) {
			t.Errorf("man: no %s in\n%s", want, s)
		}
	}
	if strings.Contains(s, "gen\\-doc") {
		t.Error("man lists the hidden flag")
	}
	if _, err := exec.LookPath("groff"); err != nil {
		t.Skip("groff is not installed: the page is not rendered")
	}
	cmd := exec.Command("groff", "-man", "-Tutf8", "-ww", "-P-cbou")
	cmd.Stdin = strings.NewReader(s)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil || errOut.Len() > 0 {
		t.Fatalf("groff: %v\n%s", err, errOut.String())
	}
	if !strings.Contains(out.String(), "--listen") && !strings.Contains(out.String(), "‐‐listen") {
		t.Errorf("rendered page lacks --listen:\n%s", out.String())
	}
}

func TestUnknownKind(t *testing.T) {
	if err := Write(&bytes.Buffer{}, "pdf", sample()); !errors.Is(err, ErrKind) {
		t.Errorf("pdf: %v", err)
	}
}
