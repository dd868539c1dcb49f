package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sectun/sectun/internal/token"
	"github.com/sectun/sectun/internal/version"
	"github.com/sectun/sectun/wire"
)

// Mode is the end of the tunnel a proxy serves: wire.Mode, the one type of
// that concept (tunnel.Mode is the same type). Parse always sets it.
type Mode = wire.Mode

const (
	// ModeSource listens for local clients (-s).
	ModeSource = wire.ModeSource
	// ModeDestination dials local services (-d).
	ModeDestination = wire.ModeDestination
)

// Action says what the caller of Parse does next.
type Action int

const (
	// ActionRun: run the proxy with the returned Config.
	ActionRun Action = iota
	// ActionHelp: the usage was printed; exit 0.
	ActionHelp
	// ActionVersion: the version was printed; exit 0.
	ActionVersion
	// ActionExportDefaultSettings: the settings file was written; exit 0.
	ActionExportDefaultSettings
)

// Environment is what Parse reads besides the arguments.
type Environment struct {
	// Getenv looks up an environment variable; nil means none are set.
	// An empty value counts as unset.
	Getenv func(string) string
	// Stdout receives --help and --version output; nil discards it.
	Stdout io.Writer
	// WorkDir is the current directory: "WorkDir/config" is the default
	// --config-dir, as in the reference's code. "" skips it.
	WorkDir string
	// ExeDir is the executable's directory: "ExeDir/config" is the default
	// --config-dir when WorkDir/config is unusable (the reference's README
	// names this place). "" skips it.
	ExeDir string
}

// OSEnvironment returns the Environment of this process.
func OSEnvironment() Environment {
	env := Environment{Getenv: os.Getenv, Stdout: os.Stdout}
	env.WorkDir, _ = os.Getwd()
	if exe, err := os.Executable(); err == nil {
		env.ExeDir = filepath.Dir(exe)
	}
	return env
}

// DirEntry is a "SERVICE_ID = VALUE" line of a --config-dir file, kept
// unparsed: the reference only reads the lines of the services a tunnel
// announces, so a bad line for another service is no error (Resolve
// parses the ones it uses).
type DirEntry struct {
	ServiceID string
	Value     string
	File      string
	Line      int
}

// Config is a validated local proxy configuration.
type Config struct {
	// Mode is source or destination.
	Mode Mode
	// AccessToken is the client access token. Never log it: use
	// token.Short.
	AccessToken string
	// ClientToken is the optional client token ("" = none).
	ClientToken string
	// Endpoint is -e/--proxy-endpoint (or AWSIOT_TUNNEL_ENDPOINT) as
	// given; "" when Region is used. URL() resolves it.
	Endpoint string
	// Region is -r/--region (or AWSIOT_TUNNEL_REGION), lower-cased; ""
	// when Endpoint is used.
	Region string
	// Mappings are the -s/-d mappings in the order given; empty when none
	// was given (Resolve then uses DirMappings or free ports). Destination
	// mappings have Host filled in.
	Mappings []Mapping
	// DirMappings are the --config-dir entries, first occurrence of each
	// service ID only, in file-name order.
	DirMappings []DirEntry
	// BindAddress is -b/--local-bind-address ("" = not given; brackets
	// around an IPv6 address are removed). A source listens on it (see
	// ListenHost); a destination binds its outgoing connections to it
	// (port 0) and, as the reference does, dials it for mappings that
	// name no host.
	BindAddress string
	// CAPath is -c/--capath: an extra CA certificate file or directory
	// ("" = none).
	CAPath string
	// NoSSLHostVerify is -k/--no-ssl-host-verify.
	NoSSLHostVerify bool
	// DestinationClientType is -y: "" (V3 peer), "V1" or "V2". It is kept
	// in destination mode too (the reference documents it for source mode
	// only, and devices do pass it with -d).
	DestinationClientType string
	// Verbosity is the log level, 0 (off) .. 6 (trace); default 4 (info).
	Verbosity int
	// ConfigFile is the --config file read ("" = none).
	ConfigFile string
	// ConfigDir is the mapping directory read ("" = none).
	ConfigDir string
	// SettingsFile is the --settings-json file read ("" = none).
	SettingsFile string
	// Settings are the fine-grained settings: defaults with the
	// --settings-json file applied.
	Settings Settings
	// Proxy is the web proxy from https_proxy, else HTTPS_PROXY (nil =
	// none), with scheme http or https, host:port and optional user info.
	// NO_PROXY does not apply, as in the reference.
	Proxy *url.URL
	// MetricsListen is the address of the metrics listener
	// (--metrics-listen, else the settings' metrics.listen); "" = none.
	MetricsListen string
	// MetricsAllowRemote permits a non-loopback MetricsListen
	// (--metrics-allow-remote).
	MetricsAllowRemote bool
	// StrictExit (--strict-exit) makes a refused access token exit 2
	// instead of 0 (see localproxy.ExitCode).
	StrictExit bool
	// SingleUseToken (--single-use-token): without ClientToken, use a
	// random client token rather than one derived from the access token
	// and this machine.
	SingleUseToken bool
	// Origins says where each option's value came from, keyed by long
	// option name: "-r/--region", "--config file F line N" or an
	// environment variable name. For debug logs.
	Origins map[string]string
	// Warnings are notes for the log (warning level): settings the
	// reference accepts but ignores, files skipped, and the like. They
	// never contain a token.
	Warnings []string
}

// sourced is an option value with its origin.
type sourced struct {
	value string
	from  string
}

// where names option name for a message: its flag, and the origin of the
// value when that is not the command line.
func (v sourced) where(name string) string {
	flag := lookupLong(name).flagName()
	if v.from == flag {
		return flag
	}
	return flag + " (from " + v.from + ")"
}

// Parse builds a Config from the command line args (without the program
// name), the --config file, the environment and the defaults, in that
// order of precedence (per option, as in the reference: options that
// exclude each other, such as -r and AWSIOT_TUNNEL_ENDPOINT, conflict
// whatever their sources).
//
// --help and --version print to env.Stdout and return ActionHelp or
// ActionVersion; --export-default-settings FILE writes FILE and returns
// ActionExportDefaultSettings; the Config is nil then. Otherwise it
// returns ActionRun and a validated Config, or an error wrapping one of
// the sentinels in errors.go whose text is a single line saying what to
// fix.
func Parse(args []string, env Environment) (*Config, Action, error) {
	getenv := env.Getenv
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	stdout := env.Stdout
	if stdout == nil {
		stdout = io.Discard
	}
	cli, err := commandLine(args)
	if err != nil {
		return nil, ActionRun, err
	}
	if _, ok := cli[optHelp]; ok && cli[optHelp].value == "true" {
		writeHelp(stdout)
		return nil, ActionHelp, nil
	}
	if v, ok := cli[optVersion]; ok && v.value == "true" {
		fmt.Fprintf(stdout, "sectun localproxy %s\n", version.String())
		return nil, ActionVersion, nil
	}
	if v, ok := cli[optExport]; ok {
		if v.value == "" {
			return nil, ActionRun, errorf(ErrUsage, "--%s needs a file name", optExport)
		}
		if err := os.WriteFile(v.value, mustJSON(DefaultSettings()), 0o666); err != nil {
			return nil, ActionRun, errorf(ErrFile, "--%s: %v", optExport, err)
		}
		return nil, ActionExportDefaultSettings, nil
	}

	c := &Config{Origins: map[string]string{}}
	values := map[string]sourced{}
	// Lowest precedence first; later layers overwrite.
	for i := range optionDefs {
		d := &optionDefs[i]
		for _, name := range d.env {
			if v := getenv(name); v != "" {
				values[d.long] = sourced{v, name}
				break
			}
		}
	}
	if v, ok := cli[optConfig]; ok {
		if v.value == "" {
			return nil, ActionRun, errorf(ErrUsage, "--%s needs a file name", optConfig)
		}
		c.ConfigFile = v.value
		if err := c.readConfigFile(v.value, values); err != nil {
			return nil, ActionRun, err
		}
	}
	for name, v := range cli {
		values[name] = sourced{v.value, v.def.flagName()}
	}
	for name, v := range values {
		c.Origins[name] = v.from
	}
	if err := c.build(values, env); err != nil {
		return nil, ActionRun, err
	}
	return c, ActionRun, nil
}

func mustJSON(s Settings) []byte {
	b, _ := s.MarshalJSON()
	return b
}

// readFile reads a file named by an option, refusing huge ones.
func readFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return data, nil
}

func (c *Config) readConfigFile(path string, values map[string]sourced) error {
	data, err := readFile(path, MaxConfigFileSize)
	if err != nil {
		return errorf(ErrFile, "--config %s: %v", path, err)
	}
	opts, err := parseOptionsFile(data)
	if err != nil {
		return errorf(ErrConfigFile, "%s %v: write long-option-name = value lines", path, err)
	}
	lineOf := map[string]int{}
	for _, o := range opts {
		d := lookupLong(o.name)
		if d == nil {
			return errorf(ErrConfigFile, "%s line %d: unknown option %q: keys are long option names such as region, access-token or source-listen-port", path, o.line, o.name)
		}
		if first, dup := lineOf[o.name]; dup {
			return errorf(ErrConfigFile, "%s line %d: %s is already set on line %d: keep one", path, o.line, o.name, first)
		}
		lineOf[o.name] = o.line
		if d.notInFile {
			c.Warnings = append(c.Warnings, fmt.Sprintf("%s line %d: %s is ignored in a --config file", path, o.line, o.name))
			continue
		}
		v := o.value
		if d.arg == "" {
			b, err := parseBool(v)
			if err != nil {
				return errorf(ErrConfigFile, "%s line %d: %s = %q: use true or false", path, o.line, o.name, v)
			}
			v = strconv.FormatBool(b)
		}
		values[o.name] = sourced{v, fmt.Sprintf("--config file %s line %d", path, o.line)}
	}
	return nil
}

// build interprets the merged option values.
func (c *Config) build(values map[string]sourced, env Environment) error {
	get := func(name string) (sourced, bool) {
		v, ok := values[name]
		return v, ok
	}
	// Options that need a non-empty value.
	for _, name := range []string{optEndpoint, optRegion, optBindAddress, optCAPath, optSettingsJSON, optMode, optClientType, optConfigDir, optVerbose, optMetricsListen} {
		if v, ok := get(name); ok && strings.TrimSpace(v.value) == "" {
			return errorf(ErrUsage, "%s is empty: give a value or leave the option out", v.where(name))
		}
	}

	// Verbosity first: it is what the reference reads first.
	c.Verbosity = 4
	if v, ok := get(optVerbose); ok {
		n, err := strconv.Atoi(strings.TrimSpace(v.value))
		if err != nil || n < 0 || n > 255 {
			return errorf(ErrVerbosity, "%s %q: use a level 0..6 (0 off, 4 info, 6 trace)", v.where(optVerbose), v.value)
		}
		c.Verbosity = min(n, 6)
	}

	c.Settings = DefaultSettings()
	if v, ok := get(optSettingsJSON); ok {
		c.SettingsFile = v.value
		data, err := readFile(v.value, MaxSettingsFileSize)
		if err != nil {
			return errorf(ErrFile, "%s %s: %v", v.where(optSettingsJSON), v.value, err)
		}
		if err := loadSettings(strings.NewReader(string(data)), &c.Settings); err != nil {
			return errorf(ErrSettings, "%s: %v", v.value, err)
		}
	}

	// Endpoint or region, exactly one.
	e, hasE := get(optEndpoint)
	r, hasR := get(optRegion)
	switch {
	case hasE && hasR:
		return errorf(ErrEndpointAndRegion, "endpoint %q (from %s) and region %q (from %s): keep only one", e.value, e.from, r.value, r.from)
	case !hasE && !hasR:
		return errorf(ErrNoEndpoint, "pass -r REGION (e.g. -r us-east-1), or -e HOST[:PORT], or set %s or %s", envRegion, envEndpoint)
	case hasE:
		c.Endpoint = e.value
	default:
		c.Region = strings.ToLower(r.value)
	}
	if _, err := EndpointURL(c.Endpoint, c.Region, &c.Settings); err != nil {
		from := e.from
		if hasR {
			from = r.from
		}
		return fmt.Errorf("%w (from %s)", err, from)
	}

	// Tokens.
	t, ok := get(optAccessToken)
	if !ok || t.value == "" {
		return errorf(ErrNoAccessToken, "set %s (safest), put access-token = ... in a --config file, or pass -t", envAccessToken)
	}
	if strings.IndexFunc(t.value, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return errorf(ErrAccessToken, "the access token (from %s) holds spaces or control characters: copy it again without them", t.from)
	}
	c.AccessToken = t.value
	if t.from == lookupLong(optAccessToken).flagName() {
		c.Warnings = append(c.Warnings, "access token given on the command line, where other users can see it: set "+envAccessToken+" instead")
	}
	if v, ok := get(optClientToken); ok {
		if !token.ValidClientToken(v.value) {
			return errorf(ErrClientToken, "the client token (from %s) must match ^[a-zA-Z0-9-]{32,128}$, e.g. a UUID", v.from)
		}
		c.ClientToken = v.value
	}

	// Web proxy: the lower-case variable wins, as in the reference.
	for _, name := range []string{"https_proxy", "HTTPS_PROXY"} {
		if env.Getenv == nil {
			break
		}
		if s := env.Getenv(name); s != "" {
			u, err := ParseWebProxyURL(s)
			if err != nil {
				return fmt.Errorf("%w (in %s)", err, name)
			}
			c.Proxy = u
			break
		}
	}

	if err := c.buildMode(get); err != nil {
		return err
	}

	if v, ok := get(optBindAddress); ok {
		c.BindAddress = strings.TrimSuffix(strings.TrimPrefix(v.value, "["), "]")
	}
	if v, ok := get(optCAPath); ok {
		if _, err := os.Stat(v.value); err != nil {
			return errorf(ErrFile, "%s %s: %v", v.where(optCAPath), v.value, err)
		}
		c.CAPath = v.value
	}
	if v, ok := get(optNoVerify); ok {
		c.NoSSLHostVerify = v.value == "true"
	}
	if v, ok := get(optClientType); ok {
		switch strings.ToUpper(strings.TrimSpace(v.value)) {
		case "V1":
			c.DestinationClientType = "V1"
		case "V2":
			c.DestinationClientType = "V2"
		case "V3":
		default:
			return errorf(ErrClientType, "%s %q: use V1 or V2 for an older destination, or leave it out for V3", v.where(optClientType), v.value)
		}
	}

	c.MetricsListen = c.Settings.MetricsListen
	from := "tunneling.proxy.metrics.listen in " + c.SettingsFile
	if v, ok := get(optMetricsListen); ok {
		c.MetricsListen, from = strings.TrimSpace(v.value), v.where(optMetricsListen)
	}
	if v, ok := get(optMetricsRemote); ok {
		c.MetricsAllowRemote = v.value == "true"
	}
	if v, ok := get(optStrictExit); ok {
		c.StrictExit = v.value == "true"
	}
	if v, ok := get(optSingleUse); ok {
		c.SingleUseToken = v.value == "true"
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			return errorf(ErrUsage, "%s %q: want HOST:PORT, e.g. 127.0.0.1:9090", from, c.MetricsListen)
		}
	}

	if err := c.readConfigDir(get, env); err != nil {
		return err
	}
	for i := range c.Mappings {
		c.fillDefaultHost(&c.Mappings[i])
	}
	if c.Mode == ModeDestination && len(c.Mappings) == 0 && len(c.DirMappings) == 0 {
		where := "a --config-dir"
		if c.ConfigDir != "" {
			where = c.ConfigDir
		}
		return errorf(ErrNoMapping, "destination mode needs to know what to connect to: pass -d PORT or -d SSH1=22,..., or put SSH1 = 22 lines in a file in %s", where)
	}
	return nil
}

func (c *Config) buildMode(get func(string) (sourced, bool)) error {
	s, hasS := get(optSource)
	d, hasD := get(optDestination)
	m, hasM := get(optMode)
	if hasS && hasD {
		return errorf(ErrModeConflict, "%s and %s: a proxy is either a source or a destination, keep one", s.where(optSource), d.where(optDestination))
	}
	if !hasS && !hasD && !hasM {
		return errorf(ErrNoMode, "pass -s PORT (source), -d PORT (destination), or -m source|destination with mappings in --config-dir")
	}
	c.Mode = ModeSource
	if hasD {
		c.Mode = ModeDestination
	}
	if hasM {
		mode, err := wire.ParseMode(m.value)
		switch {
		case err != nil:
			return errorf(ErrMode, "%s %q: use src, source, dst or destination", m.where(optMode), m.value)
		case mode == ModeSource && hasD:
			return errorf(ErrModeConflict, "%s %s with %s: -d runs a destination; drop one", m.where(optMode), m.value, d.where(optDestination))
		case mode == ModeDestination && hasS:
			return errorf(ErrModeConflict, "%s %s with %s: -s runs a source; drop one", m.where(optMode), m.value, s.where(optSource))
		}
		c.Mode = mode
	}
	v := s
	if hasD {
		v = d
	}
	if !hasS && !hasD {
		return nil
	}
	ms, err := ParseMappings(v.value, c.Mode)
	if err != nil {
		if v.from != lookupLong(optSource).flagName() && v.from != lookupLong(optDestination).flagName() {
			return fmt.Errorf("%w (from %s)", err, v.from)
		}
		return err
	}
	c.Mappings = ms
	if c.Mode == ModeSource {
		for _, m := range ms {
			if m.Host != "" {
				c.Warnings = append(c.Warnings, fmt.Sprintf("the host in source mapping %s is ignored, as the reference does: use -b to choose the listen address", m))
			}
		}
	}
	return nil
}

// fillDefaultHost sets a destination mapping's host when not given: the
// -b address, else 127.0.0.1, as the reference does.
func (c *Config) fillDefaultHost(m *Mapping) {
	if c.Mode != ModeDestination || m.Host != "" || m.Unix != "" {
		return
	}
	m.Host = "127.0.0.1"
	if c.BindAddress != "" {
		m.Host = c.BindAddress
	}
}

// Limits on a --config-dir walk, so that a wrong directory (say /) fails
// fast instead of reading a whole file system.
const (
	maxConfigDirFiles = 1000
	maxConfigDirWalk  = 10000
)

func (c *Config) readConfigDir(get func(string) (sourced, bool), env Environment) error {
	dir := ""
	if v, ok := get(optConfigDir); ok {
		if err := checkConfigDir(v.value); err != nil {
			return errorf(ErrFile, "%s %s: %v: it must be an existing directory holding mapping files", v.where(optConfigDir), v.value, err)
		}
		dir = v.value
	} else {
		for _, base := range []string{env.WorkDir, env.ExeDir} {
			if base == "" {
				continue
			}
			if cand := filepath.Join(base, "config"); checkConfigDir(cand) == nil {
				dir = cand
				break
			}
		}
	}
	if dir == "" {
		return nil
	}
	c.ConfigDir = dir
	seen := map[string]bool{}
	files, visited := 0, 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		visited++
		if visited > maxConfigDirWalk || files >= maxConfigDirFiles {
			c.Warnings = append(c.Warnings, fmt.Sprintf("config dir %s: stopped after %d files", dir, files))
			return fs.SkipAll
		}
		if err != nil {
			c.Warnings = append(c.Warnings, fmt.Sprintf("config dir: skipping %s: %v", path, err))
			if d != nil && d.IsDir() && path != dir {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		if !d.Type().IsRegular() {
			// A symbolic link to a regular file counts, as in the reference.
			if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() {
				return nil
			}
		}
		files++
		data, err := readFile(path, MaxConfigFileSize)
		if err != nil {
			c.Warnings = append(c.Warnings, fmt.Sprintf("config dir: skipping %s: %v", path, err))
			return nil
		}
		entries, err := parseINI(data)
		if err != nil {
			c.Warnings = append(c.Warnings, fmt.Sprintf("config dir: skipping %s, not an INI file: %v", path, err))
			return nil
		}
		for _, e := range entries {
			if seen[e.key] || !serviceIDPattern.MatchString(e.key) {
				continue
			}
			seen[e.key] = true
			c.DirMappings = append(c.DirMappings, DirEntry{ServiceID: e.key, Value: e.value, File: path, Line: e.line})
		}
		return nil
	})
	if err != nil {
		return errorf(ErrFile, "--config-dir %s: %v", dir, err)
	}
	return nil
}

// checkConfigDir applies the reference's test: an existing, non-empty
// directory.
func checkConfigDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return errors.New("not a directory")
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Readdirnames(1); err != nil {
		if err == io.EOF {
			return errors.New("empty directory")
		}
		return err
	}
	return nil
}

// URL returns the tunneling service's base URL, e.g.
// "wss://data.tunneling.iot.us-east-1.amazonaws.com:443" (see
// EndpointURL). It is "" only for a Config that Parse did not validate
// and whose endpoint is invalid.
func (c *Config) URL() string {
	u, err := EndpointURL(c.Endpoint, c.Region, &c.Settings)
	if err != nil {
		return ""
	}
	return u.String()
}

// TunnelURL returns the WebSocket URL to dial: URL() +
// "/tunnel?local-proxy-mode=source|destination".
func (c *Config) TunnelURL() string {
	u := c.URL()
	if u == "" {
		return ""
	}
	return u + "/tunnel?local-proxy-mode=" + c.Mode.String()
}

// ListenHost returns the address a source listens on: -b if given, else
// the default_bind_address setting ("localhost").
func (c *Config) ListenHost() string {
	if c.BindAddress != "" {
		return c.BindAddress
	}
	if c.Settings.DefaultBindAddress != "" {
		return c.Settings.DefaultBindAddress
	}
	return "localhost"
}

// ListenAddress returns host:port for a source mapping: ListenHost and the
// mapping's port (the mapping's own host is ignored, as in the reference).
func (c *Config) ListenAddress(m Mapping) string {
	return net.JoinHostPort(c.ListenHost(), strconv.Itoa(m.Port))
}
