package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const clientTok = "0123456789abcdef-0123456789ABCDEF" // 33 characters

// testEnv returns an Environment with the given variables, stdout into
// out, and empty work and executable directories (no default config dir).
func testEnv(t *testing.T, vars map[string]string, out *bytes.Buffer) Environment {
	t.Helper()
	env := Environment{
		Getenv:  func(k string) string { return vars[k] },
		WorkDir: t.TempDir(),
		ExeDir:  t.TempDir(),
	}
	if out != nil {
		env.Stdout = out
	}
	return env
}

// writeFile writes content to name in dir and returns the path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func mustParse(t *testing.T, args []string, env Environment) *Config {
	t.Helper()
	c, act, err := Parse(args, env)
	if err != nil {
		t.Fatalf("Parse(%q): %v", args, err)
	}
	if act != ActionRun {
		t.Fatalf("Parse(%q): action %v", args, act)
	}
	return c
}

// TestOptions runs every option in its short and long forms (and the
// other spellings the reference's parser takes).
func TestOptions(t *testing.T) {
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	os.Mkdir(caDir, 0o755)
	settingsFile := writeFile(t, dir, "s.json", `{"tunneling": {"proxy": {"websocket": {"ping_period_ms": "5000"}}}}`)
	configFile := writeFile(t, dir, "c.ini", "region = eu-west-1\n")
	mapDir := filepath.Join(dir, "maps")
	writeFile(t, mapDir, "a.ini", "SSH1 = 2222\n")

	base := []string{"-t", "tok", "-r", "us-east-1"} // completed per case
	tests := []struct {
		name  string
		args  []string
		check func(*testing.T, *Config)
	}{}
	add := func(name string, args []string, check func(*testing.T, *Config)) {
		tests = append(tests, struct {
			name  string
			args  []string
			check func(*testing.T, *Config)
		}{name, args, check})
	}
	token := func(want string) func(*testing.T, *Config) {
		return func(t *testing.T, c *Config) {
			if c.AccessToken != want {
				t.Errorf("AccessToken = %q, want %q", c.AccessToken, want)
			}
		}
	}
	for _, args := range [][]string{
		{"-t", "tok1", "-r", "us-east-1", "-s", "5555"},
		{"--access-token", "tok1", "-r", "us-east-1", "-s", "5555"},
		{"--access-token=tok1", "-r", "us-east-1", "-s", "5555"},
		{"-ttok1", "-r", "us-east-1", "-s", "5555"},
		{"--acc", "tok1", "-r", "us-east-1", "-s", "5555"}, // unambiguous prefix
	} {
		add("access token "+strings.Join(args[:2], " "), args, token("tok1"))
	}
	for _, flag := range []string{"-i", "--client-token"} {
		add("client token "+flag, append([]string{flag, clientTok, "-s", "1"}, base...), func(t *testing.T, c *Config) {
			if c.ClientToken != clientTok {
				t.Errorf("ClientToken = %q", c.ClientToken)
			}
		})
	}
	for _, flag := range []string{"-e", "--proxy-endpoint"} {
		add("endpoint "+flag, []string{"-t", "x", flag, "Tunnel.Example:8443", "-s", "1"}, func(t *testing.T, c *Config) {
			if c.Endpoint != "Tunnel.Example:8443" || c.Region != "" || c.URL() != "wss://tunnel.example:8443" {
				t.Errorf("Endpoint %q Region %q URL %q", c.Endpoint, c.Region, c.URL())
			}
		})
	}
	for _, flag := range []string{"-r", "--region", "--region=", "-r="} {
		args := []string{"-t", "x", flag, "CN-North-1", "-s", "1"}
		if strings.HasSuffix(flag, "=") {
			args = []string{"-t", "x", flag + "CN-North-1", "-s", "1"}
		}
		add("region "+flag, args, func(t *testing.T, c *Config) {
			if c.Region != "cn-north-1" || c.URL() != "wss://data.tunneling.iot.cn-north-1.amazonaws.com.cn:443" {
				t.Errorf("Region %q URL %q", c.Region, c.URL())
			}
		})
	}
	for _, flag := range []string{"-s", "--source-listen-port"} {
		add("source "+flag, append([]string{flag, "SSH1=5555,HTTP1=8080"}, base...), func(t *testing.T, c *Config) {
			want := []Mapping{{ServiceID: "SSH1", Port: 5555}, {ServiceID: "HTTP1", Port: 8080}}
			if c.Mode != ModeSource || !cmp.Equal(c.Mappings, want) {
				t.Errorf("Mode %v Mappings %v", c.Mode, c.Mappings)
			}
			if c.TunnelURL() != "wss://data.tunneling.iot.us-east-1.amazonaws.com:443/tunnel?local-proxy-mode=source" {
				t.Errorf("TunnelURL %q", c.TunnelURL())
			}
		})
	}
	for _, flag := range []string{"-d", "--destination-app"} {
		add("destination "+flag, append([]string{flag, "SSH1=22,HTTP1=10.0.0.1:80"}, base...), func(t *testing.T, c *Config) {
			want := []Mapping{{ServiceID: "SSH1", Host: "127.0.0.1", Port: 22}, {ServiceID: "HTTP1", Host: "10.0.0.1", Port: 80}}
			if c.Mode != ModeDestination || !cmp.Equal(c.Mappings, want) {
				t.Errorf("Mode %v Mappings %v", c.Mode, c.Mappings)
			}
			if c.TunnelURL() != "wss://data.tunneling.iot.us-east-1.amazonaws.com:443/tunnel?local-proxy-mode=destination" {
				t.Errorf("TunnelURL %q", c.TunnelURL())
			}
		})
	}
	for _, flag := range []string{"-b", "--local-bind-address"} {
		add("bind source "+flag, append([]string{flag, "0.0.0.0", "-s", "5555"}, base...), func(t *testing.T, c *Config) {
			if c.BindAddress != "0.0.0.0" || c.ListenAddress(c.Mappings[0]) != "0.0.0.0:5555" {
				t.Errorf("BindAddress %q ListenAddress %q", c.BindAddress, c.ListenAddress(c.Mappings[0]))
			}
		})
		add("bind destination "+flag, append([]string{flag, "[::1]", "-d", "22"}, base...), func(t *testing.T, c *Config) {
			// The reference dials the bind address when -d gives no host.
			if c.BindAddress != "::1" || c.Mappings[0].Address() != "[::1]:22" {
				t.Errorf("BindAddress %q Address %q", c.BindAddress, c.Mappings[0].Address())
			}
		})
	}
	for _, flag := range []string{"-c", "--capath"} {
		add("capath "+flag, append([]string{flag, caDir, "-s", "1"}, base...), func(t *testing.T, c *Config) {
			if c.CAPath != caDir {
				t.Errorf("CAPath %q", c.CAPath)
			}
		})
	}
	for _, args := range [][]string{{"-k"}, {"--no-ssl-host-verify"}, {"--no-ssl-host-verify=true"}, {"-kv6"}} {
		add("no verify "+args[0], append(append(args, "-s", "1"), base...), func(t *testing.T, c *Config) {
			if !c.NoSSLHostVerify {
				t.Error("NoSSLHostVerify false")
			}
		})
	}
	add("no verify =false", append([]string{"--no-ssl-host-verify=false", "-s", "1"}, base...), func(t *testing.T, c *Config) {
		if c.NoSSLHostVerify {
			t.Error("NoSSLHostVerify true")
		}
	})
	add("settings json", append([]string{"--settings-json", settingsFile, "-s", "1"}, base...), func(t *testing.T, c *Config) {
		if c.Settings.PingPeriod != 5*time.Second || c.SettingsFile != settingsFile {
			t.Errorf("PingPeriod %v SettingsFile %q", c.Settings.PingPeriod, c.SettingsFile)
		}
	})
	add("config", []string{"--config", configFile, "-t", "x", "-s", "1"}, func(t *testing.T, c *Config) {
		if c.Region != "eu-west-1" || c.ConfigFile != configFile {
			t.Errorf("Region %q ConfigFile %q", c.Region, c.ConfigFile)
		}
	})
	for _, tc := range []struct {
		args []string
		want int
	}{{[]string{"-v", "6"}, 6}, {[]string{"--verbose", "0"}, 0}, {[]string{"-v5"}, 5}, {[]string{"--verbose=255"}, 6}, {[]string{"-v", "200"}, 6}, {nil, 4}} {
		add("verbose "+strings.Join(tc.args, " "), append(append(tc.args, "-s", "1"), base...), func(t *testing.T, c *Config) {
			if c.Verbosity != tc.want {
				t.Errorf("Verbosity %d, want %d", c.Verbosity, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		flag, value string
		want        Mode
	}{{"-m", "src", ModeSource}, {"--mode", "source", ModeSource}, {"-m", "dst", ModeDestination}, {"--mode", "destination", ModeDestination}, {"-m", "DST", ModeDestination}, {"-m", "Source", ModeSource}} {
		args := append([]string{tc.flag, tc.value, "--config-dir", mapDir}, base...)
		add("mode "+tc.flag+" "+tc.value, args, func(t *testing.T, c *Config) {
			if c.Mode != tc.want || len(c.Mappings) != 0 || c.ConfigDir != mapDir {
				t.Errorf("Mode %v Mappings %v ConfigDir %q", c.Mode, c.Mappings, c.ConfigDir)
			}
		})
	}
	add("mode agrees with -s", append([]string{"-m", "src", "-s", "1"}, base...), func(t *testing.T, c *Config) {
		if c.Mode != ModeSource {
			t.Errorf("Mode %v", c.Mode)
		}
	})
	add("mode agrees with -d", append([]string{"-m", "destination", "-d", "1"}, base...), func(t *testing.T, c *Config) {
		if c.Mode != ModeDestination {
			t.Errorf("Mode %v", c.Mode)
		}
	})
	for _, tc := range []struct{ flag, value, want string }{{"-y", "V1", "V1"}, {"--destination-client-type", "V2", "V2"}, {"-y", "v1", "V1"}, {"-y", "V3", ""}} {
		add("client type "+tc.flag+" "+tc.value, append([]string{tc.flag, tc.value, "-s", "1"}, base...), func(t *testing.T, c *Config) {
			if c.DestinationClientType != tc.want {
				t.Errorf("DestinationClientType %q, want %q", c.DestinationClientType, tc.want)
			}
		})
	}
	add("client type kept in destination mode", append([]string{"-y", "V1", "-d", "localhost:22"}, base...), func(t *testing.T, c *Config) {
		if c.DestinationClientType != "V1" || c.Mode != ModeDestination {
			t.Errorf("DestinationClientType %q Mode %v", c.DestinationClientType, c.Mode)
		}
	})
	add("config dir", append([]string{"--config-dir", mapDir, "-m", "dst"}, base...), func(t *testing.T, c *Config) {
		want := []DirEntry{{ServiceID: "SSH1", Value: "2222", File: filepath.Join(mapDir, "a.ini"), Line: 1}}
		if c.ConfigDir != mapDir || !cmp.Equal(c.DirMappings, want) {
			t.Errorf("ConfigDir %q DirMappings %+v", c.ConfigDir, c.DirMappings)
		}
	})
	add("empty -s value is source mode without mappings", append([]string{"-s", ""}, base...), func(t *testing.T, c *Config) {
		if c.Mode != ModeSource || len(c.Mappings) != 0 {
			t.Errorf("Mode %v Mappings %v", c.Mode, c.Mappings)
		}
	})

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustParse(t, tt.args, testEnv(t, nil, nil))
			tt.check(t, c)
		})
	}
}

func TestHelpVersionExport(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}, {"--he"}, {"-r", "x", "-h"}, {"--help", "--export-default-settings", "/nonexistent/x"}} {
		var out bytes.Buffer
		c, act, err := Parse(args, testEnv(t, nil, &out))
		if err != nil || act != ActionHelp || c != nil {
			t.Fatalf("%q: %v %v %v", args, c, act, err)
		}
		for i := range optionDefs {
			d := &optionDefs[i]
			if !strings.Contains(out.String(), "--"+d.long) || d.short != "" && !strings.Contains(out.String(), "-"+d.short+", --"+d.long) {
				t.Errorf("%q: help lacks %s", args, d.flagName())
			}
		}
		for _, v := range []string{envAccessToken, envEndpoint, envRegion, envClientToken, "HTTPS_PROXY"} {
			if !strings.Contains(out.String(), v) {
				t.Errorf("help lacks %s", v)
			}
		}
	}
	for _, args := range [][]string{{"-V"}, {"--version"}, {"-V", "-s", "1"}} {
		var out bytes.Buffer
		c, act, err := Parse(args, testEnv(t, nil, &out))
		if err != nil || act != ActionVersion || c != nil {
			t.Fatalf("%q: %v %v %v", args, c, act, err)
		}
		if !strings.HasPrefix(out.String(), "sectun localproxy ") || !strings.HasSuffix(out.String(), "\n") || strings.Count(out.String(), "\n") != 1 {
			t.Errorf("%q: version output %q", args, out.String())
		}
	}
	// Export: other options are not validated, as in the reference.
	path := filepath.Join(t.TempDir(), "lpsettings.json")
	c, act, err := Parse([]string{"--export-default-settings", path, "-m", "bogus"}, testEnv(t, nil, nil))
	if err != nil || act != ActionExportDefaultSettings || c != nil {
		t.Fatalf("export: %v %v %v", c, act, err)
	}
	data, err := os.ReadFile(path)
	if err != nil || string(data) != referenceDefaults {
		t.Errorf("exported file (%v):\n%s", err, data)
	}
	if _, _, err := Parse([]string{"--export-default-settings", filepath.Join(t.TempDir(), "no", "such", "dir")}, testEnv(t, nil, nil)); !errors.Is(err, ErrFile) {
		t.Errorf("export to a missing directory: %v", err)
	}
}

func TestEnvironment(t *testing.T) {
	tests := []struct {
		name  string
		vars  map[string]string
		args  []string
		check func(*testing.T, *Config)
	}{
		{"token and region", map[string]string{envAccessToken: "envtok", envRegion: "ap-northeast-1"}, []string{"-s", "1"}, func(t *testing.T, c *Config) {
			if c.AccessToken != "envtok" || c.Region != "ap-northeast-1" || c.Origins["access-token"] != envAccessToken || len(c.Warnings) != 0 {
				t.Errorf("%q %q %v %q", c.AccessToken, c.Region, c.Origins, c.Warnings)
			}
		}},
		{"endpoint", map[string]string{envAccessToken: "x", envEndpoint: "relay.example:9443"}, []string{"-d", "22"}, func(t *testing.T, c *Config) {
			if c.URL() != "wss://relay.example:9443" {
				t.Errorf("URL %q", c.URL())
			}
		}},
		{"client token", map[string]string{envAccessToken: "x", envRegion: "r", envClientToken: clientTok}, []string{"-s", "1"}, func(t *testing.T, c *Config) {
			if c.ClientToken != clientTok {
				t.Errorf("ClientToken %q", c.ClientToken)
			}
		}},
		{"older client token name", map[string]string{envAccessToken: "x", envRegion: "r", envClientTokenV2: clientTok}, []string{"-s", "1"}, func(t *testing.T, c *Config) {
			if c.ClientToken != clientTok {
				t.Errorf("ClientToken %q", c.ClientToken)
			}
		}},
		{"new client token name wins", map[string]string{envAccessToken: "x", envRegion: "r", envClientToken: clientTok, envClientTokenV2: "bad"}, []string{"-s", "1"}, func(t *testing.T, c *Config) {
			if c.ClientToken != clientTok {
				t.Errorf("ClientToken %q", c.ClientToken)
			}
		}},
		{"empty variables are unset", map[string]string{envAccessToken: "x", envRegion: "r", envEndpoint: "", envClientToken: "", "HTTPS_PROXY": ""}, []string{"-s", "1"}, func(t *testing.T, c *Config) {
			if c.Endpoint != "" || c.ClientToken != "" || c.Proxy != nil {
				t.Errorf("%q %q %v", c.Endpoint, c.ClientToken, c.Proxy)
			}
		}},
		{"HTTPS_PROXY", map[string]string{envAccessToken: "x", envRegion: "r", "HTTPS_PROXY": "http://user:pa%40ss@proxy.corp:8080"}, []string{"-s", "1"}, func(t *testing.T, c *Config) {
			if c.Proxy == nil || c.Proxy.Host != "proxy.corp:8080" || c.Proxy.User.Username() != "user" {
				t.Fatalf("Proxy %v", c.Proxy)
			}
			if p, _ := c.Proxy.User.Password(); p != "pa@ss" {
				t.Errorf("password %q", p)
			}
		}},
		{"https_proxy wins over HTTPS_PROXY", map[string]string{envAccessToken: "x", envRegion: "r", "HTTPS_PROXY": "http://upper:1", "https_proxy": "lower"}, []string{"-s", "1"}, func(t *testing.T, c *Config) {
			if c.Proxy == nil || c.Proxy.String() != "http://lower:3128" {
				t.Errorf("Proxy %v", c.Proxy)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.check(t, mustParse(t, tt.args, testEnv(t, tt.vars, nil)))
		})
	}
}

// TestPrecedence sets one option from every source that carries it and
// removes them one by one: command line > --config file > environment >
// default.
func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, dir, "c.ini", "access-token = fromfile\nverbose = 2\nregion = eu-west-1\n")
	bare := writeFile(t, dir, "bare.ini", "region = eu-west-1\n")
	env := map[string]string{envAccessToken: "fromenv"}
	tests := []struct {
		name      string
		args      []string
		vars      map[string]string
		token     string
		verbosity int
		origin    string
	}{
		{"all sources", []string{"-t", "fromcli", "-v", "6", "--config", cfg, "-s", "1"}, env, "fromcli", 6, "-t/--access-token"},
		{"file over env", []string{"--config", cfg, "-s", "1"}, env, "fromfile", 2, "--config file " + cfg + " line 1"},
		{"env", []string{"--config", bare, "-s", "1"}, env, "fromenv", 4, envAccessToken},
		{"cli over env", []string{"-t", "fromcli", "--config", bare, "-s", "1"}, env, "fromcli", 4, "-t/--access-token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustParse(t, tt.args, testEnv(t, tt.vars, nil))
			if c.AccessToken != tt.token || c.Verbosity != tt.verbosity || c.Origins["access-token"] != tt.origin {
				t.Errorf("token %q verbosity %d origin %q, want %q %d %q", c.AccessToken, c.Verbosity, c.Origins["access-token"], tt.token, tt.verbosity, tt.origin)
			}
		})
	}
	// An option from the command line and an excluded one from a lower
	// source still conflict, as in the reference.
	_, _, err := Parse([]string{"-r", "us-east-1", "-s", "1"}, testEnv(t, map[string]string{envAccessToken: "x", envEndpoint: "h"}, nil))
	if !errors.Is(err, ErrEndpointAndRegion) || !strings.Contains(err.Error(), envEndpoint) || !strings.Contains(err.Error(), "-r/--region") {
		t.Errorf("region vs env endpoint: %v", err)
	}
}

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	caDir := t.TempDir()
	file := func(content string) string { return writeFile(t, t.TempDir(), "config.ini", content) }

	// The README's first example equals -r us-east-1 -t foobar -s 5000.
	a := mustParse(t, []string{"--config", file("region = us-east-1\naccess-token = foobar\nsource-listen-port = 5000\n")}, testEnv(t, nil, nil))
	b := mustParse(t, []string{"-r", "us-east-1", "-t", "foobar", "-s", "5000"}, testEnv(t, nil, nil))
	for _, c := range []*Config{a, b} {
		if c.Region != "us-east-1" || c.AccessToken != "foobar" || !cmp.Equal(c.Mappings, []Mapping{{Port: 5000}}) || c.Mode != ModeSource {
			t.Errorf("%+v", c)
		}
	}
	// The README's composition example.
	c := mustParse(t, []string{"--config", file("capath = " + caDir + "\nregion = us-west-2\nlocal-bind-address = ::1\nsource-listen-port = 6000\n"), "-t", "foobar"}, testEnv(t, nil, nil))
	if c.CAPath != caDir || c.Region != "us-west-2" || c.BindAddress != "::1" || c.Mappings[0].Port != 6000 || c.AccessToken != "foobar" ||
		c.ListenAddress(c.Mappings[0]) != "[::1]:6000" {
		t.Errorf("%+v", c)
	}
	// Every option that may be in a file.
	c = mustParse(t, []string{"--config", file(strings.Join([]string{
		"# all options", "access-token = t", "client-token = " + clientTok, "proxy-endpoint = h.example:1",
		"destination-app = SSH1=22 # comment", "local-bind-address = 10.1.1.1", "capath = " + caDir,
		"no-ssl-host-verify = yes", "settings-json = " + writeFile(t, dir, "s.json", `{}`), "verbose = 5",
		"mode = dst", "destination-client-type = V2", "config-dir = " + dir,
	}, "\n"))}, testEnv(t, nil, nil))
	if c.AccessToken != "t" || c.ClientToken != clientTok || c.Endpoint != "h.example:1" || c.Mode != ModeDestination ||
		!cmp.Equal(c.Mappings, []Mapping{{ServiceID: "SSH1", Host: "10.1.1.1", Port: 22}}) || c.BindAddress != "10.1.1.1" ||
		c.CAPath != caDir || !c.NoSSLHostVerify || c.Verbosity != 5 || c.DestinationClientType != "V2" || c.ConfigDir != dir {
		t.Errorf("%+v", c)
	}
	// Command-line-only options are ignored in a file, with a warning.
	c = mustParse(t, []string{"--config", file("help = true\nversion=1\nregion=r\naccess-token=t\nsource-listen-port=1\nconfig=x\nexport-default-settings=y\n")}, testEnv(t, nil, nil))
	if len(c.Warnings) != 4 || !strings.Contains(c.Warnings[0], "help is ignored") {
		t.Errorf("warnings %q", c.Warnings)
	}
	// A switch set false in the file.
	c = mustParse(t, []string{"--config", file("no-ssl-host-verify = off\nregion=r\naccess-token=t\nsource-listen-port=1\n")}, testEnv(t, nil, nil))
	if c.NoSSLHostVerify {
		t.Error("no-ssl-host-verify = off gave true")
	}

	errs := []struct {
		content string
		want    error
		msg     string
	}{
		{"regoin = us-east-1\n", ErrConfigFile, `line 1: unknown option "regoin"`},
		{"r = us-east-1\n", ErrConfigFile, "long option names"},
		{"region us-east-1\n", ErrConfigFile, "not name = value"},
		{"region = a\nregion = b\n", ErrConfigFile, "already set on line 1"},
		{"[tunnel]\nregion = a\n", ErrConfigFile, `"tunnel.region"`},
		{"no-ssl-host-verify = maybe\n", ErrConfigFile, "true or false"},
		{"region = r\naccess-token = t\nsource-listen-port = 1\ndestination-app = 2\n", ErrModeConflict, "--config file"},
	}
	for _, e := range errs {
		_, _, err := Parse([]string{"--config", file(e.content)}, testEnv(t, nil, nil))
		if !errors.Is(err, e.want) || !strings.Contains(err.Error(), e.msg) {
			t.Errorf("%q: err = %v, want %v containing %q", e.content, err, e.want, e.msg)
		}
	}
	// The command line beats the file, but an -s in the file and -d on
	// the command line conflict.
	_, _, err := Parse([]string{"--config", file("source-listen-port = 1\n"), "-d", "22", "-t", "x", "-r", "r"}, testEnv(t, nil, nil))
	if !errors.Is(err, ErrModeConflict) {
		t.Errorf("file -s with cli -d: %v", err)
	}
}

func TestConfigDir(t *testing.T) {
	base := []string{"-r", "us-east-1"}
	dir := t.TempDir()
	writeFile(t, dir, "SSHSource.ini", "SSH1=3333\nSSH2=5555\n")
	writeFile(t, dir, "sub/deeper/web.ini", "HTTP1 = 8080\nSSH1 = 9999\n") // SSH1 already found: ignored
	writeFile(t, dir, "broken.ini", "SSH3 = 1\nthis line has no equals\n") // skipped entirely
	writeFile(t, dir, "z.ini", "[section]\nRDP1 = 3389\n# c\nbad id = 1\n")
	os.Symlink(filepath.Join(dir, "SSHSource.ini"), filepath.Join(dir, "link.ini"))

	tok := map[string]string{envAccessToken: "x"}
	c := mustParse(t, append([]string{"--config-dir", dir, "-m", "source"}, base...), testEnv(t, tok, nil))
	var ids []string
	for _, e := range c.DirMappings {
		ids = append(ids, e.ServiceID+"="+e.Value)
	}
	if want := []string{"SSH1=3333", "SSH2=5555", "HTTP1=8080"}; !cmp.Equal(ids, want) {
		t.Errorf("DirMappings %q, want %q", ids, want)
	}
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "broken.ini") {
		t.Errorf("Warnings %q", c.Warnings)
	}
	ms, err := c.Resolve([]string{"SSH1", "HTTP1", "VNC1"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []Mapping{{ServiceID: "SSH1", Port: 3333}, {ServiceID: "HTTP1", Port: 8080}, {ServiceID: "VNC1", Port: 0}}; !cmp.Equal(ms, want) {
		t.Errorf("Resolve %v, want %v", ms, want)
	}

	// Destination, README example.
	ddir := t.TempDir()
	writeFile(t, ddir, "SSHDestination.ini", "SSH1=22\nSSH2=10.0.0.1:80\n")
	c = mustParse(t, append([]string{"--config-dir", ddir, "-m", "dst"}, base...), testEnv(t, tok, nil))
	ms, err = c.Resolve([]string{"SSH2", "SSH1"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []Mapping{{ServiceID: "SSH2", Host: "10.0.0.1", Port: 80}, {ServiceID: "SSH1", Host: "127.0.0.1", Port: 22}}; !cmp.Equal(ms, want) {
		t.Errorf("Resolve %v, want %v", ms, want)
	}

	// Default directories: ./config first, then config beside the binary.
	env := testEnv(t, tok, nil)
	writeFile(t, env.ExeDir, "config/exe.ini", "EXE=1\n")
	c = mustParse(t, append([]string{"-m", "src"}, base...), env)
	if c.ConfigDir != filepath.Join(env.ExeDir, "config") || len(c.DirMappings) != 1 {
		t.Errorf("exe dir: ConfigDir %q DirMappings %v", c.ConfigDir, c.DirMappings)
	}
	writeFile(t, env.WorkDir, "config/work.ini", "WORK=1\n")
	c = mustParse(t, append([]string{"-m", "src"}, base...), env)
	if c.ConfigDir != filepath.Join(env.WorkDir, "config") || c.DirMappings[0].ServiceID != "WORK" {
		t.Errorf("work dir: ConfigDir %q DirMappings %v", c.ConfigDir, c.DirMappings)
	}
	// An empty default directory is skipped silently.
	env = testEnv(t, tok, nil)
	os.Mkdir(filepath.Join(env.WorkDir, "config"), 0o755)
	c = mustParse(t, append([]string{"-m", "src"}, base...), env)
	if c.ConfigDir != "" {
		t.Errorf("empty default dir used: %q", c.ConfigDir)
	}

	// An explicit directory must exist, be a directory and hold files.
	empty := t.TempDir()
	for _, bad := range []string{filepath.Join(dir, "nope"), filepath.Join(dir, "SSHSource.ini"), empty} {
		_, _, err := Parse(append([]string{"--config-dir", bad, "-m", "src"}, base...), testEnv(t, tok, nil))
		if !errors.Is(err, ErrFile) || !strings.Contains(err.Error(), bad) {
			t.Errorf("--config-dir %s: %v", bad, err)
		}
	}
}

func TestResolve(t *testing.T) {
	src := func(m ...Mapping) *Config { return &Config{Mode: ModeSource, Mappings: m} }
	dst := func(m ...Mapping) *Config { return &Config{Mode: ModeDestination, Mappings: m} }
	tests := []struct {
		name string
		c    *Config
		ids  []string
		want []Mapping
		msg  string
	}{
		{"anonymous mapping takes the only service", src(Mapping{Port: 5555}), []string{"SSH1"}, []Mapping{{ServiceID: "SSH1", Port: 5555}}, ""},
		{"anonymous mapping, anonymous tunnel", dst(Mapping{Host: "127.0.0.1", Port: 22}), nil, []Mapping{{Host: "127.0.0.1", Port: 22}}, ""},
		{"anonymous mapping, empty ID", src(Mapping{Port: 1}), []string{""}, []Mapping{{Port: 1}}, ""},
		{"repeated IDs count once", src(Mapping{Port: 1}), []string{"A", "A"}, []Mapping{{ServiceID: "A", Port: 1}}, ""},
		{"named mappings in tunnel order", src(Mapping{ServiceID: "A", Port: 1}, Mapping{ServiceID: "B", Port: 2}), []string{"B", "A"},
			[]Mapping{{ServiceID: "B", Port: 2}, {ServiceID: "A", Port: 1}}, ""},
		{"anonymous mapping, two services", src(Mapping{Port: 1}), []string{"A", "B"}, nil, "names none"},
		{"named mappings, anonymous tunnel", src(Mapping{ServiceID: "A", Port: 1}), nil, nil, "no service IDs"},
		{"unknown mapped service", dst(Mapping{ServiceID: "A", Port: 1}, Mapping{ServiceID: "X", Port: 2}), []string{"A"}, nil, "not in the tunnel: X"},
		{"service without mapping", dst(Mapping{ServiceID: "A", Port: 1}), []string{"A", "B"}, nil, "no mapping: B"},
		{"source picks free ports", src(), []string{"A", "B"}, []Mapping{{ServiceID: "A"}, {ServiceID: "B"}}, ""},
		{"source anonymous free port", src(), nil, []Mapping{{}}, ""},
		{"destination needs mappings", dst(), []string{"A"}, nil, "no mapping for A"},
		{"destination anonymous needs mapping", dst(), nil, nil, "anonymous"},
		{"bad dir value", &Config{Mode: ModeDestination, DirMappings: []DirEntry{{ServiceID: "A", Value: "::1:22", File: "f", Line: 3}}}, []string{"A"}, nil, "f line 3"},
		{"dir value port range", &Config{Mode: ModeSource, DirMappings: []DirEntry{{ServiceID: "A", Value: "99999", File: "f", Line: 1}}}, []string{"A"}, nil, "0..65535"},
		{"dir value unix", &Config{Mode: ModeDestination, DirMappings: []DirEntry{{ServiceID: "A", Value: "/run/a.sock"}}}, []string{"A"}, []Mapping{{ServiceID: "A", Unix: "/run/a.sock"}}, ""},
		{"dir value uses bind address", &Config{Mode: ModeDestination, BindAddress: "10.9.9.9", DirMappings: []DirEntry{{ServiceID: "A", Value: "22"}}}, []string{"A"}, []Mapping{{ServiceID: "A", Host: "10.9.9.9", Port: 22}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.c.Resolve(tt.ids)
			if tt.msg != "" {
				if err == nil || !strings.Contains(err.Error(), tt.msg) {
					t.Fatalf("err = %v, want %q", err, tt.msg)
				}
				checkOneLine(t, err)
				if !errors.Is(err, ErrServiceIDs) && !errors.Is(err, ErrMapping) && !errors.Is(err, ErrPort) {
					t.Errorf("err %v wraps no expected sentinel", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestInvalid checks every invalid input: the sentinel, a single line, and
// a hint of the fix.
func TestInvalid(t *testing.T) {
	dir := t.TempDir()
	badSettings := writeFile(t, dir, "bad.json", `{"tunneling": {"proxy": {"tcp": {"read_buffer_size": "big"}}}}`)
	tok := map[string]string{envAccessToken: "x"}
	tests := []struct {
		name string
		args []string
		vars map[string]string
		want error
		msg  string
	}{
		{"no token", []string{"-r", "us-east-1", "-s", "1"}, nil, ErrNoAccessToken, envAccessToken},
		{"empty token", []string{"-t", "", "-r", "us-east-1", "-s", "1"}, nil, ErrNoAccessToken, ""},
		{"token with space", []string{"-t", "a b", "-r", "r", "-s", "1"}, nil, ErrAccessToken, "spaces"},
		{"endpoint and region", []string{"-e", "h", "-r", "r", "-s", "1"}, tok, ErrEndpointAndRegion, "keep only one"},
		{"env endpoint and env region", []string{"-s", "1"}, map[string]string{envAccessToken: "x", envEndpoint: "h", envRegion: "r"}, ErrEndpointAndRegion, envRegion},
		{"neither endpoint nor region", []string{"-s", "1"}, tok, ErrNoEndpoint, "-r REGION"},
		{"bad endpoint", []string{"-e", "https://h", "-s", "1"}, tok, ErrEndpoint, "ws://"},
		{"endpoint port 0", []string{"-e", "h:0", "-s", "1"}, tok, ErrEndpoint, "1..65535"},
		{"bad region", []string{"-r", "us east", "-s", "1"}, tok, ErrEndpoint, "region"},
		{"bad mapping", []string{"-r", "r", "-s", "SSH1"}, tok, ErrMapping, "not a number"},
		{"bad mapping from file", []string{"-r", "r", "--config", writeFile(t, dir, "m.ini", "source-listen-port = 1,2")}, tok, ErrMapping, "--config file"},
		{"port out of range", []string{"-r", "r", "-s", "70000"}, tok, ErrPort, "0..65535"},
		{"destination port 0", []string{"-r", "r", "-d", "0"}, tok, ErrPort, "1..65535"},
		{"duplicate service", []string{"-r", "r", "-d", "A=1,A=2"}, tok, ErrDuplicateService, "mapped twice"},
		{"mixed mappings", []string{"-r", "r", "-s", "5555,SSH1=22"}, tok, ErrMixedMappings, "name every service"},
		{"unknown mode", []string{"-r", "r", "-m", "both"}, tok, ErrMode, "src, source, dst or destination"},
		{"-s and -d", []string{"-r", "r", "-s", "1", "-d", "2"}, tok, ErrModeConflict, "keep one"},
		{"-s and -d with -m", []string{"-r", "r", "-s", "1", "-d", "2", "-m", "src"}, tok, ErrModeConflict, "keep one"},
		{"-s with -m dst", []string{"-r", "r", "-s", "1", "-m", "dst"}, tok, ErrModeConflict, "-s runs a source"},
		{"-d with -m src", []string{"-r", "r", "-d", "1", "-m", "source"}, tok, ErrModeConflict, "-d runs a destination"},
		{"no mode", []string{"-r", "r"}, tok, ErrNoMode, "-s PORT"},
		{"destination without mappings", []string{"-r", "r", "-m", "dst"}, tok, ErrNoMapping, "-d PORT"},
		{"bad -y", []string{"-r", "r", "-s", "1", "-y", "V4"}, tok, ErrClientType, "V1 or V2"},
		{"verbosity too high", []string{"-r", "r", "-s", "1", "-v", "256"}, tok, ErrVerbosity, "0..6"},
		{"verbosity negative", []string{"-r", "r", "-s", "1", "-v", "-1"}, tok, ErrVerbosity, ""},
		{"verbosity not a number", []string{"-r", "r", "-s", "1", "--verbose", "high"}, tok, ErrVerbosity, ""},
		{"missing config file", []string{"--config", filepath.Join(dir, "nope.ini")}, tok, ErrFile, "nope.ini"},
		{"config file is a directory", []string{"--config", dir}, tok, ErrFile, ""},
		{"missing settings file", []string{"-r", "r", "-s", "1", "--settings-json", filepath.Join(dir, "nope.json")}, tok, ErrFile, "nope.json"},
		{"bad settings file", []string{"-r", "r", "-s", "1", "--settings-json", badSettings}, tok, ErrSettings, "bad.json: tunneling.proxy.tcp.read_buffer_size"},
		{"missing capath", []string{"-r", "r", "-s", "1", "-c", filepath.Join(dir, "certs")}, tok, ErrFile, "capath"},
		{"invalid client token", []string{"-r", "r", "-s", "1", "-i", "short"}, tok, ErrClientToken, "^[a-zA-Z0-9-]{32,128}$"},
		{"invalid client token from env", []string{"-r", "r", "-s", "1"}, map[string]string{envAccessToken: "x", envClientToken: strings.Repeat("a", 31) + "_"}, ErrClientToken, envClientToken},
		{"client token too long", []string{"-r", "r", "-s", "1", "-i", strings.Repeat("a", 129)}, tok, ErrClientToken, ""},
		{"invalid proxy URL", []string{"-r", "r", "-s", "1"}, map[string]string{envAccessToken: "x", "HTTPS_PROXY": "socks5://p:1080"}, ErrProxyURL, "HTTPS_PROXY"},
		{"proxy login without password", []string{"-r", "r", "-s", "1"}, map[string]string{envAccessToken: "x", "https_proxy": "http://user@p"}, ErrProxyURL, "https_proxy"},
		{"unknown option", []string{"--regoin", "r"}, tok, ErrUsage, "--help"},
		{"unknown short option", []string{"-x"}, tok, ErrUsage, ""},
		{"missing value", []string{"-r"}, tok, ErrUsage, ""},
		{"option twice", []string{"-r", "a", "--region", "b", "-s", "1"}, tok, ErrUsage, "given 2 times"},
		{"stray argument", []string{"-r", "r", "-s", "1", "extra"}, tok, ErrUsage, `"extra"`},
		{"ambiguous prefix", []string{"--con", "x"}, tok, ErrUsage, "--config, --config-dir"},
		{"ambiguous prefix 2", []string{"--destination", "x"}, tok, ErrUsage, "ambiguous"},
		{"empty region", []string{"-r", "", "-s", "1"}, tok, ErrUsage, "empty"},
		{"empty bind address", []string{"-r", "r", "-s", "1", "-b", ""}, tok, ErrUsage, "empty"},
		{"empty config name", []string{"--config", ""}, tok, ErrUsage, "file name"},
		{"bad switch value", []string{"-r", "r", "-s", "1", "--no-ssl-host-verify=perhaps"}, tok, ErrUsage, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, act, err := Parse(tt.args, testEnv(t, tt.vars, nil))
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if c != nil || act != ActionRun {
				t.Errorf("config %v action %v on error", c, act)
			}
			checkOneLine(t, err)
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("err = %q, want it to contain %q", err, tt.msg)
			}
			if strings.Contains(err.Error(), "a b") && tt.want == ErrAccessToken {
				t.Errorf("error shows the token: %q", err)
			}
		})
	}
}

func TestWarnings(t *testing.T) {
	c := mustParse(t, []string{"-t", "secret-token", "-r", "r", "-s", "SSH1=0.0.0.0:22"}, testEnv(t, nil, nil))
	if len(c.Warnings) != 2 {
		t.Fatalf("Warnings %q", c.Warnings)
	}
	for _, w := range c.Warnings {
		if strings.Contains(w, "secret-token") {
			t.Errorf("warning shows the token: %q", w)
		}
	}
	if !strings.Contains(c.Warnings[0], envAccessToken) || !strings.Contains(c.Warnings[1], "ignored") {
		t.Errorf("Warnings %q", c.Warnings)
	}
	if got := c.ListenAddress(c.Mappings[0]); got != "localhost:22" {
		t.Errorf("ListenAddress %q: the host of -s must not widen the listen address", got)
	}
}

func TestOSEnvironment(t *testing.T) {
	env := OSEnvironment()
	if env.Getenv == nil || env.Stdout == nil || env.WorkDir == "" || env.ExeDir == "" {
		t.Errorf("%+v", env)
	}
}

func TestExpandLongPrefixes(t *testing.T) {
	tests := []struct{ in, want []string }{
		{[]string{"--reg", "x"}, []string{"--region", "x"}},
		{[]string{"--reg=x"}, []string{"--region=x"}},
		{[]string{"-t", "--reg"}, []string{"-t", "--reg"}}, // a value, not an option
		{[]string{"--access-token", "--reg"}, []string{"--access-token", "--reg"}},
		{[]string{"-kt", "--reg"}, []string{"-kt", "--reg"}},    // -t ends the cluster and takes the next word
		{[]string{"-tv", "--reg"}, []string{"-tv", "--region"}}, // -t took "v"
		{[]string{"--", "--reg"}, []string{"--", "--reg"}},
		{[]string{"--config", "c", "--config-d", "d"}, []string{"--config", "c", "--config-dir", "d"}},
		{[]string{"--nope"}, []string{"--nope"}},
	}
	for _, tt := range tests {
		got, err := expandLongPrefixes(tt.in)
		if err != nil || !cmp.Equal(got, tt.want) {
			t.Errorf("%q: %q %v, want %q", tt.in, got, err, tt.want)
		}
	}
}

func BenchmarkParse(b *testing.B) {
	env := Environment{Getenv: func(k string) string {
		return map[string]string{envAccessToken: "tok", "HTTPS_PROXY": "http://u:p@proxy:3128"}[k]
	}}
	args := []string{"-r", "us-east-1", "-s", "SSH1=5555,HTTP1=8080", "-v", "5", "-y", "V2"}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Parse(args, env); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMetricsOptions: --metrics-listen and --metrics-allow-remote from the
// command line, the --config file and the settings JSON (metrics.listen);
// the command line wins; reference prefixes are unaffected.
func TestMetricsOptions(t *testing.T) {
	dir := t.TempDir()
	settings := writeFile(t, dir, "s.json", `{"tunneling":{"proxy":{"metrics":{"listen":"127.0.0.1:9100"}}}}`)
	conf := writeFile(t, dir, "lp.ini", "metrics-listen = 127.0.0.1:9200\nmetrics-allow-remote = true\n")
	base := []string{"-r", "us-east-1", "-t", "tok", "-s", "5555"}
	for _, tc := range []struct {
		name   string
		args   []string
		listen string
		remote bool
	}{
		{"off by default", nil, "", false},
		{"command line", []string{"--metrics-listen", "127.0.0.1:0"}, "127.0.0.1:0", false},
		{"allow remote", []string{"--metrics-listen=0.0.0.0:9090", "--metrics-allow-remote"}, "0.0.0.0:9090", true},
		{"settings", []string{"--settings-json", settings}, "127.0.0.1:9100", false},
		{"config file over settings", []string{"--settings-json", settings, "--config", conf}, "127.0.0.1:9200", true},
		{"command line over both", []string{"--settings-json", settings, "--config", conf, "--metrics-listen", "[::1]:0"}, "[::1]:0", true},
	} {
		c := mustParse(t, append(slicesClone(base), tc.args...), testEnv(t, nil, nil))
		if c.MetricsListen != tc.listen || c.MetricsAllowRemote != tc.remote {
			t.Errorf("%s: listen %q remote %v, want %q %v", tc.name, c.MetricsListen, c.MetricsAllowRemote, tc.listen, tc.remote)
		}
	}
	for _, args := range [][]string{{"--metrics-listen", "9090"}, {"--metrics-listen", " "}} {
		if _, _, err := Parse(append(slicesClone(base), args...), testEnv(t, nil, nil)); !errors.Is(err, ErrUsage) {
			t.Errorf("%q: %v, want ErrUsage", args, err)
		}
	}
	// "--m" is still --mode's prefix, as in the reference.
	c := mustParse(t, []string{"-r", "us-east-1", "-t", "tok", "--m", "src"}, testEnv(t, nil, nil))
	if c.Mode != ModeSource || c.MetricsListen != "" {
		t.Errorf("--m src: mode %v, metrics %q", c.Mode, c.MetricsListen)
	}
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

// TestHelpSaysCAPathFileOrDirectory: -c takes a PEM file or a directory
// (the README passes a file), and --help says both work.
func TestHelpSaysCAPathFileOrDirectory(t *testing.T) {
	var b strings.Builder
	if _, action, err := Parse([]string{"--help"}, Environment{Stdout: &b}); err != nil || action != ActionHelp {
		t.Fatalf("--help: %v, %v", action, err)
	}
	if !strings.Contains(b.String(), "-c, --capath DIR|FILE") || !strings.Contains(b.String(), "a PEM file, or a directory of PEM files (both work)") {
		t.Fatalf("--help on -c:\n%s", b.String())
	}
	for _, flag := range []string{"--strict-exit", "--single-use-token"} {
		if !strings.Contains(b.String(), flag) {
			t.Errorf("--help does not list %s", flag)
		}
	}
}
