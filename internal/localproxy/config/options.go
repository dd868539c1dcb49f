package config

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
)

// optionDef is one option of the reference local proxy.
type optionDef struct {
	long  string
	short string // "" for long-only options
	arg   string // value placeholder in --help; "" for a switch
	help  string
	env   []string // environment variables, first set wins
	// notInFile: the reference reads it only from the command line; in a
	// --config file it is ignored with a warning.
	notInFile bool
	// sectunOnly: not an option of the reference. Such options are never
	// the target of a long-name prefix ("--m" stays --mode's alone), so
	// that reference command lines parse as they did.
	sectunOnly bool
}

// Long option names.
const (
	optHelp          = "help"
	optVersion       = "version"
	optAccessToken   = "access-token"
	optClientToken   = "client-token"
	optEndpoint      = "proxy-endpoint"
	optRegion        = "region"
	optSource        = "source-listen-port"
	optDestination   = "destination-app"
	optBindAddress   = "local-bind-address"
	optCAPath        = "capath"
	optNoVerify      = "no-ssl-host-verify"
	optExport        = "export-default-settings"
	optSettingsJSON  = "settings-json"
	optConfig        = "config"
	optVerbose       = "verbose"
	optMode          = "mode"
	optClientType    = "destination-client-type"
	optConfigDir     = "config-dir"
	optMetricsListen = "metrics-listen"
	optMetricsRemote = "metrics-allow-remote"
	optStrictExit    = "strict-exit"
	optSingleUse     = "single-use-token"
	envAccessToken   = "AWSIOT_TUNNEL_ACCESS_TOKEN"
	envEndpoint      = "AWSIOT_TUNNEL_ENDPOINT"
	envRegion        = "AWSIOT_TUNNEL_REGION"
	envClientToken   = "AWSIOT_TUNNEL_CLIENT_TOKEN"
	envClientTokenV2 = "AWSIOT_CLIENT_TOKEN" // the name older reference releases read
)

// optionDefs lists the options in the reference's --help order.
var optionDefs = []optionDef{
	{long: optHelp, short: "h", help: "print this help and exit", notInFile: true},
	{long: optVersion, short: "V", help: "print the version and exit", notInFile: true},
	{long: optAccessToken, short: "t", arg: "TOKEN", env: []string{envAccessToken},
		help: "client access token; prefer " + envAccessToken + " or the --config file, since command lines are visible to other users"},
	{long: optClientToken, short: "i", arg: "TOKEN", env: []string{envClientToken, envClientTokenV2},
		help: "client token (32 to 128 letters, digits, '-'): lets this proxy reconnect with the same access token"},
	{long: optEndpoint, short: "e", arg: "HOST[:PORT]", env: []string{envEndpoint},
		help: "tunneling service endpoint, port 443 by default (a ws:// or wss:// URL is also accepted); not with --region"},
	{long: optRegion, short: "r", arg: "REGION", env: []string{envRegion},
		help: "AWS region of the tunnel, e.g. us-east-1; not with --proxy-endpoint"},
	{long: optSource, short: "s", arg: "MAPPING",
		help: "source mode: listen ports, PORT or ID=PORT,ID=PORT (e.g. SSH1=5555,HTTP1=8080)"},
	{long: optDestination, short: "d", arg: "MAPPING",
		help: "destination mode: services to reach, PORT, HOST:PORT or ID=[HOST:]PORT,... (e.g. SSH1=22,HTTP1=10.0.0.1:80); a value holding '/' is a Unix socket"},
	{long: optBindAddress, short: "b", arg: "ADDRESS",
		help: "local address to listen on (source) or to connect from (destination)"},
	{long: optCAPath, short: "c", arg: "DIR|FILE",
		help: "extra CA certificates for verifying the service: a PEM file, or a directory of PEM files (both work)"},
	{long: optNoVerify, short: "k",
		help: "do not verify the service's TLS certificate (testing only)"},
	{long: optExport, arg: "FILE", notInFile: true,
		help: "write the default fine-grained settings as JSON to FILE and exit"},
	{long: optSettingsJSON, arg: "FILE",
		help: "read fine-grained settings from a JSON FILE (as written by --export-default-settings)"},
	{long: optConfig, arg: "FILE", notInFile: true,
		help: "read options from FILE, `long-option-name = value` lines; the command line wins"},
	{long: optVerbose, short: "v", arg: "LEVEL",
		help: "log level 0..255: 0 off, 1 fatal, 2 error, 3 warning, 4 info (default), 5 debug, 6 and above trace"},
	{long: optMode, short: "m", arg: "MODE",
		help: "src, source, dst or destination (implied by -s or -d)"},
	{long: optClientType, short: "y", arg: "V1|V2",
		help: "protocol of an older destination proxy this source talks to (V3 when not given)"},
	{long: optConfigDir, arg: "DIR",
		help: "directory of files with `SERVICE_ID = PORT` lines (default: ./config)"},
	{long: optMetricsListen, arg: "ADDRESS", sectunOnly: true,
		help: "sectun: serve Prometheus metrics (goroutines, tunnel connected, reconnects, connections per service) on http://ADDRESS/metrics, e.g. 127.0.0.1:9090 (port 0: any free port; the bound address is logged); loopback only unless --metrics-allow-remote; off by default"},
	{long: optMetricsRemote, sectunOnly: true,
		help: "sectun: allow a non-loopback --metrics-listen address (the metrics hold no secret but tell service IDs and activity)"},
	{long: optStrictExit, sectunOnly: true,
		help: "sectun: exit 2 when the service refuses the access token (HTTP 4xx on the upgrade: used, expired, wrong mode, closed tunnel) instead of 0 as the reference does, so that scripts and systemd see it"},
	{long: optSingleUse, sectunOnly: true,
		help: "sectun: without -i, use a random client token (the reference's behaviour: the first connection consumes the access token and a restart needs a rotated one) instead of one derived from the access token and this machine"},
}

func lookupLong(name string) *optionDef {
	for i := range optionDefs {
		if optionDefs[i].long == name {
			return &optionDefs[i]
		}
	}
	return nil
}

func lookupShort(c byte) *optionDef {
	for i := range optionDefs {
		if d := &optionDefs[i]; d.short != "" && d.short[0] == c {
			return d
		}
	}
	return nil
}

// flagName is how an option is named in messages: "-t/--access-token".
func (d *optionDef) flagName() string {
	if d.short == "" {
		return "--" + d.long
	}
	return "-" + d.short + "/--" + d.long
}

// cliValue records the value and the number of occurrences of an option.
type cliValue struct {
	def   *optionDef
	value string
	count int
}

func (v *cliValue) String() string { return v.value }
func (v *cliValue) Type() string {
	if v.def.arg == "" {
		return "bool"
	}
	return "string"
}

func (v *cliValue) Set(s string) error {
	v.count++
	if v.def.arg == "" {
		b, err := parseBool(s)
		if err != nil {
			return err
		}
		v.value = strconv.FormatBool(b)
		return nil
	}
	v.value = s
	return nil
}

// parseBool accepts what Boost.ProgramOptions accepts for a switch value.
func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "1", "true", "yes", "on":
		return true, nil
	case "0", "false", "no", "off":
		return false, nil
	}
	return false, fmt.Errorf("%q is not true or false", s)
}

// expandLongPrefixes rewrites an unambiguous prefix of a long option name
// to the full name ("--reg" -> "--region"), as Boost.ProgramOptions does
// and pflag does not. Option values are left alone.
func expandLongPrefixes(args []string) ([]string, error) {
	out := make([]string, 0, len(args))
	skipNext := false
	for i, a := range args {
		if skipNext {
			out = append(out, a)
			skipNext = false
			continue
		}
		if a == "--" {
			out = append(out, args[i:]...)
			break
		}
		switch {
		case strings.HasPrefix(a, "--"):
			name, val, hasVal := strings.Cut(a[2:], "=")
			def := lookupLong(name)
			if def == nil && name != "" {
				var matches []*optionDef
				for j := range optionDefs {
					if !optionDefs[j].sectunOnly && strings.HasPrefix(optionDefs[j].long, name) {
						matches = append(matches, &optionDefs[j])
					}
				}
				if len(matches) > 1 {
					names := make([]string, len(matches))
					for j, m := range matches {
						names[j] = "--" + m.long
					}
					return nil, errorf(ErrUsage, "--%s is ambiguous: it could be %s", name, strings.Join(names, ", "))
				}
				if len(matches) == 1 {
					def = matches[0]
					a = "--" + def.long
					if hasVal {
						a += "=" + val
					}
				}
			}
			if def != nil && def.arg != "" && !hasVal {
				skipNext = true
			}
		case strings.HasPrefix(a, "-") && len(a) > 1:
			for j := 1; j < len(a); j++ {
				d := lookupShort(a[j])
				if d == nil || j+1 < len(a) && a[j+1] == '=' {
					break
				}
				if d.arg != "" {
					skipNext = j == len(a)-1
					break
				}
			}
		}
		out = append(out, a)
	}
	return out, nil
}

// FlagSet returns the options as a pflag set, for the generated man page
// and shell completions (internal/clidoc); parsing does not use it.
func FlagSet() *pflag.FlagSet {
	fs := pflag.NewFlagSet("localproxy", pflag.ContinueOnError)
	fs.SortFlags = false
	for i := range optionDefs {
		d := &optionDefs[i]
		help := d.help
		if d.arg != "" {
			help = "`" + d.arg + "`: " + help
		}
		f := fs.VarPF(&cliValue{def: d}, d.long, d.short, help)
		if d.arg == "" {
			f.NoOptDefVal = "true"
		}
	}
	return fs
}

// commandLine parses args into option values keyed by long name.
func commandLine(args []string) (map[string]*cliValue, error) {
	args, err := expandLongPrefixes(args)
	if err != nil {
		return nil, err
	}
	fs := pflag.NewFlagSet("localproxy", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.SortFlags = false
	values := map[string]*cliValue{}
	for i := range optionDefs {
		d := &optionDefs[i]
		v := &cliValue{def: d}
		values[d.long] = v
		f := fs.VarPF(v, d.long, d.short, d.help)
		if d.arg == "" {
			f.NoOptDefVal = "true"
		}
	}
	if err := fs.Parse(args); err != nil {
		return nil, errorf(ErrUsage, "%v: see localproxy --help", err)
	}
	if rest := fs.Args(); len(rest) > 0 {
		return nil, errorf(ErrUsage, "unexpected argument %q: every value belongs to an option, e.g. -s 5555 or --region us-east-1 (see --help)", rest[0])
	}
	for name, v := range values {
		if v.count > 1 && name != optHelp && name != optVersion {
			return nil, errorf(ErrUsage, "%s is given %d times: give it once", v.def.flagName(), v.count)
		}
		if v.count == 0 {
			delete(values, name)
		}
	}
	return values, nil
}

// writeHelp prints the usage: every option, the environment variables and
// the files, to w.
func writeHelp(w io.Writer) {
	var b strings.Builder
	b.WriteString("Usage: localproxy [options]\n\n")
	b.WriteString("sectun localproxy: an AWS IoT Secure Tunneling local proxy that takes the\n")
	b.WriteString("reference local proxy's options, files and environment variables.\n\n")
	b.WriteString("Options:\n")
	for i := range optionDefs {
		d := &optionDefs[i]
		left := "    "
		if d.short != "" {
			left = "-" + d.short + ", "
		}
		left += "--" + d.long
		if d.arg != "" {
			left += " " + d.arg
		}
		fmt.Fprintf(&b, "  %-40s %s\n", left, d.help)
	}
	b.WriteString("\nEnvironment (the --config file and the command line win):\n")
	fmt.Fprintf(&b, "  %-40s %s\n", envAccessToken, "access token (the safest way to pass it)")
	fmt.Fprintf(&b, "  %-40s %s\n", envEndpoint, "as --proxy-endpoint")
	fmt.Fprintf(&b, "  %-40s %s\n", envRegion, "as --region")
	fmt.Fprintf(&b, "  %-40s %s\n", envClientToken, "as --client-token (also read: "+envClientTokenV2+")")
	fmt.Fprintf(&b, "  %-40s %s\n", "https_proxy, HTTPS_PROXY", "web proxy, http[s]://[user:password@]host[:port] (port 3128 by default)")
	b.WriteString("\nExamples:\n")
	b.WriteString("  AWSIOT_TUNNEL_ACCESS_TOKEN=... localproxy -r us-east-1 -s 5555\n")
	b.WriteString("  AWSIOT_TUNNEL_ACCESS_TOKEN=... localproxy -r us-east-1 -d SSH1=22,HTTP1=10.0.0.1:80\n")
	b.WriteString("  localproxy --export-default-settings settings.json\n")
	io.WriteString(w, b.String())
}
