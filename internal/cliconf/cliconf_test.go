package cliconf

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestApplyFile(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8443", "")
	region := fs.String("region", "us-east-1", "")
	files := fs.StringArray("credentials-file", nil, "")
	noAuth := fs.Bool("no-auth", false, "")
	if err := fs.Parse([]string{"--region", "eu-west-1"}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "tunneld.conf")
	os.WriteFile(path, []byte("# comment\n[tunneld]\nlisten = 0.0.0.0:443\nregion = ap-south-1\ncredentials-file = a\ncredentials-file = \"b\"\nno-auth = true\n"), 0o600)
	if err := ApplyFile(fs, path); err != nil {
		t.Fatal(err)
	}
	if *listen != "0.0.0.0:443" || *region != "eu-west-1" || strings.Join(*files, ",") != "a,b" || !*noAuth {
		t.Fatalf("got listen=%s region=%s files=%v noAuth=%v", *listen, *region, *files, *noAuth)
	}
}

func TestApplyFileErrors(t *testing.T) {
	for name, content := range map[string]string{
		"unknown key": "lisen = x\n",
		"no equals":   "listen\n",
		"bad bool":    "no-auth = maybe\n",
	} {
		t.Run(name, func(t *testing.T) {
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			fs.String("listen", "", "")
			fs.Bool("no-auth", false, "")
			path := filepath.Join(t.TempDir(), "c")
			os.WriteFile(path, []byte(content), 0o600)
			if err := ApplyFile(fs, path); err == nil {
				t.Fatal("no error")
			}
		})
	}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	if err := ApplyFile(fs, filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("missing file accepted")
	}
}
