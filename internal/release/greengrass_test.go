package release

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

type recipe struct {
	RecipeFormatVersion    string
	ComponentName          string
	ComponentVersion       string
	ComponentType          string
	ComponentDescription   string
	ComponentPublisher     string
	ComponentConfiguration struct {
		DefaultConfiguration map[string]string
	}
	Manifests []struct {
		Platform  map[string]string
		Artifacts []struct {
			URI        string
			Unarchive  string
			Permission map[string]string
		}
		Lifecycle map[string]struct {
			RequiresPrivilege bool
			Script            string
		}
	}
}

// TestGreengrassRecipe validates the rendered recipe's structure against
// Greengrass's recipe format and the release: platforms, artifacts that
// the release makes, configuration keys the script uses, and the Run
// script itself, executed with a stand-in tunnel-agent to see the
// options it gets (and, when the release is built, that tunnel-agent has
// every one of them).
func TestGreengrassRecipe(t *testing.T) {
	out := t.TempDir()
	name, err := writeGreengrass(Config{Root: "../..", Out: out, Version: testVersion})
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(out, name))
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	var r recipe
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("recipe: %v", err)
	}
	if r.RecipeFormatVersion != "2020-01-25" || r.ComponentName != "com.sectun.TunnelAgent" || r.ComponentType != "aws.greengrass.generic" {
		t.Errorf("header %+v", r)
	}
	if !regexp.MustCompile(`^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$`).MatchString(r.ComponentVersion) || r.ComponentVersion != "0.9.1-test" {
		t.Errorf("ComponentVersion %q", r.ComponentVersion)
	}
	if ComponentVersion("devel-0123456789ab") != "0.0.0" {
		t.Error("devel component version")
	}
	conf := r.ComponentConfiguration.DefaultConfiguration
	archives := map[string]Target{}
	for _, tg := range Targets {
		archives[ArchiveName(testVersion, tg)] = tg
	}
	platform := map[string]string{"linux_amd64": "amd64", "linux_arm64": "aarch64", "linux_armv7": "arm/armv7l", "linux_armv6": "arm/armv6l"}
	seen := map[string]bool{}
	var flags []string
	for _, m := range r.Manifests {
		p := m.Platform["architecture"]
		if d := m.Platform["architecture.detail"]; d != "" {
			p += "/" + d
		}
		if m.Platform["os"] != "linux" || len(m.Artifacts) != 1 {
			t.Fatalf("manifest %+v", m)
		}
		a := m.Artifacts[0]
		base := a.URI[strings.LastIndexByte(a.URI, '/')+1:]
		tg, ok := archives[base]
		if !ok || !strings.HasPrefix(a.URI, "{{ARTIFACT_BASE}}/") || a.Unarchive != "ZIP_OR_TAR" || a.Permission["Execute"] != "OWNER" {
			t.Errorf("artifact %+v: not a release archive", a)
			continue
		}
		if platform[tg.Name()] != p {
			t.Errorf("%s is served to platform %s", base, p)
		}
		seen[p] = true
		run, ok := m.Lifecycle["Run"]
		if !ok || run.RequiresPrivilege || !strings.Contains(run.Script, "{artifacts:decompressedPath}/"+archiveBase(testVersion, tg)+"/tunnel-agent ") {
			t.Errorf("%s: Run %+v", p, run)
		}
		for _, k := range regexp.MustCompile(`\{configuration:/([A-Za-z]+)\}`).FindAllStringSubmatch(run.Script, -1) {
			if _, ok := conf[k[1]]; !ok {
				t.Errorf("the script uses configuration %s, which has no default", k[1])
			}
		}
		flags = runScript(t, run.Script, tg, conf)
	}
	if len(seen) != 4 {
		t.Errorf("platforms %v, want amd64, aarch64, armv7l and armv6l", seen)
	}
	want := "--thing dev-1 --client-id dev-1@tunnel-agent --broker ssl://example-ats.iot.us-east-1.amazonaws.com:8883 --ca /greengrass/v2/rootCA.pem --cert /greengrass/v2/thingCert.crt --key /greengrass/v2/privKey.key --max-tunnels 10 --log-level info --map SSH=localhost:22 --map HTTP=localhost:80"
	if got := strings.Join(flags, " "); got != want {
		t.Errorf("tunnel-agent got\n  %s\nwant\n  %s", got, want)
	}
	// Every option exists in the real tunnel-agent.
	if testing.Short() {
		return
	}
	_, res := testRelease(t)
	help, _ := exec.Command(filepath.Join(res.Binaries[hostTarget(t).Name()], "tunnel-agent"), "--help").CombinedOutput()
	for _, f := range flags {
		if strings.HasPrefix(f, "--") && !strings.Contains(string(help), "      "+f+" ") {
			t.Errorf("tunnel-agent has no option %s", f)
		}
	}
}

// runScript runs a Run script as Greengrass would (sh, with the recipe
// variables replaced) with a stand-in tunnel-agent that prints its
// arguments one per line.
func runScript(t *testing.T, script string, tg Target, conf map[string]string) []string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, archiveBase(testVersion, tg))
	os.MkdirAll(bin, 0o755)
	os.WriteFile(filepath.Join(bin, "tunnel-agent"), []byte("#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done\n"), 0o755)
	vars := map[string]string{"{artifacts:decompressedPath}": dir, "{iot:thingName}": "dev-1"}
	for k, v := range conf {
		vars["{configuration:/"+k+"}"] = v
	}
	vars["{configuration:/broker}"] = "ssl://example-ats.iot.us-east-1.amazonaws.com:8883"
	vars["{configuration:/services}"] = "SSH=localhost:22,HTTP=localhost:80"
	var pairs []string
	for k, v := range vars {
		pairs = append(pairs, k, v)
	}
	s := strings.NewReplacer(pairs...).Replace(script)
	if strings.Contains(s, "{") {
		t.Errorf("unreplaced recipe variable in %s", s)
	}
	out, err := exec.Command("sh", "-c", s).CombinedOutput()
	if err != nil {
		t.Fatalf("script: %v\n%s\n%s", err, s, out)
	}
	return strings.Fields(string(out))
}
