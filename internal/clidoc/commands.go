package clidoc

import (
	"github.com/spf13/pflag"

	"github.com/sectun/sectun/internal/version"
)

// pages holds what the flags do not say about each command.
var pages = map[string]Command{
	"tunneld": {
		Summary:  "self-hosted, AWS-compatible secure tunneling service",
		Synopsis: []string{"[options]", "device create|ca [options]", "tunnels list|describe ID|close ID [options]", "version"},
		Description: []string{
			"tunneld serves the AWS IoTSecuredTunneling management API (the AWS CLI and SDKs work against it with --endpoint-url) and the /tunnel WebSocket relay that local proxies connect to, with an embedded MQTT broker that notifies devices. State is kept in SQLite in --data-dir, or in PostgreSQL.",
			"With no options it listens on https://127.0.0.1:8443 with a development CA and a generated API access key in --data-dir, and prints how to open a tunnel. Listening on a non-loopback address requires TLS and signed requests unless --allow-insecure is given.",
			"Options may also come from --config, a file of name = value lines with the long option names (the package's /etc/sectun/tunneld.conf); the command line wins.",
		},
		Subcommands: []Sub{
			{"device", "issue device certificates for MQTT on the main port (tunneld device --help)"},
			{"tunnels", "list, describe or close the tunnels of a running tunneld (tunneld tunnels --help)"},
			{"version", "print the version"},
		},
		SeeAlso: []string{"localproxy", "tunnel-agent", "sectun"},
	},
	"tunnel-agent": {
		Summary:  "device agent that opens AWS IoT secure tunnels on notification",
		Synopsis: []string{"--config /etc/sectun/agent.json", "--thing THING --broker URL [options]", "--token TOKEN --tunnel-endpoint URL [--map SERVICE=ADDR ...]"},
		Description: []string{
			"tunnel-agent runs on a device: it waits for tunnel notifications on <prefix>/things/<thing>/tunnels/notify (AWS IoT Core or tunneld's broker) and opens the destination end of each tunnel, connecting its services to local addresses.",
			"The options may come from a JSON --config file (the package's /etc/sectun/agent.json); options on the command line win.",
		},
		SeeAlso: []string{"tunneld", "localproxy"},
	},
	"localproxy": {
		Summary:  "drop-in replacement for the AWS IoT Secure Tunneling local proxy",
		Synopsis: []string{"-r REGION -s PORT -t TOKEN", "-e ENDPOINT -d HOST:PORT -t TOKEN [options]"},
		Description: []string{
			"localproxy is the source or destination end of a secure tunnel, with the options, environment variables, configuration files and exit codes of the AWS reference local proxy. Prefer AWSIOT_TUNNEL_ACCESS_TOKEN or --config to -t: command lines are visible to other users.",
		},
		SeeAlso: []string{"tunneld", "tunnel-agent", "sectun"},
	},
	"sectun": {
		Summary:  "operator CLI: open a tunnel to a device and connect in one command",
		Synopsis: []string{"connect --thing THING --service SSH[=PORT] [options]", "version"},
		Description: []string{
			"sectun connect opens a tunnel to THING (OpenTunnel, signed with your AWS credentials), which notifies the device's tunnel-agent; then it listens on a local port per service and prints how to use it. The options below are those of connect.",
			"Against tunneld, give --endpoint-url and --ca, with AWS_SHARED_CREDENTIALS_FILE set to tunneld's <data-dir>/aws-credentials.",
		},
		Subcommands: []Sub{{"connect", "open a tunnel and serve its services on local ports"}, {"version", "print the version"}},
		SeeAlso:     []string{"tunneld", "localproxy"},
	},
}

// For is the Command of a program (tunneld, tunnel-agent, localproxy,
// sectun) with its flags.
func For(name string, fs *pflag.FlagSet) Command {
	c := pages[name]
	c.Name, c.Flags, c.Version = name, fs, version.String()
	return c
}
