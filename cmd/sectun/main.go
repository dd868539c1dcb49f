// Command sectun is the operator's tool: `sectun connect` opens a tunnel to
// a device (through tunneld or AWS IoT Secure Tunneling) and serves its
// source end on local ports, so that getting a shell on a device takes one
// command.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/sectun/sectun/internal/clidoc"
	"github.com/sectun/sectun/internal/operator"
	"github.com/sectun/sectun/internal/version"
	"github.com/sectun/sectun/tunnel"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, pflag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "sectun:", err)
		os.Exit(1)
	}
}

const usageMain = `Usage: sectun <command> [options]

Commands:
  connect   open a tunnel to a device and serve its services on local ports
  version   print the version

Run 'sectun connect --help' for the options.
`

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageMain)
		return errors.New("no command given")
	}
	switch args[0] {
	case "connect":
		return connect(ctx, args[1:], getenv, stdout, stderr)
	case "version", "--version", "-V":
		fmt.Fprintln(stdout, "sectun", version.String())
		return nil
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usageMain)
		return nil
	}
	fmt.Fprint(stderr, usageMain)
	return fmt.Errorf("unknown command %q", args[0])
}

const usageConnect = `Usage: sectun connect --thing THING --service SSH[=PORT] [--service HTTP=8080] [options]

Opens a tunnel to THING (OpenTunnel, signed with your AWS credentials), which
notifies the device's tunnel-agent; then listens on a local port per service
and prints how to use it, e.g.
  SSH    ssh -p 5555 USER@localhost
Ctrl-C stops; with --close-on-exit the tunnel is closed too.

Against tunneld:
  sectun connect --endpoint-url https://tunnels.example.com:8443 --ca tunneld-ca.pem \
      --thing dev-1 --service SSH=5555 --close-on-exit
(credentials: AWS_SHARED_CREDENTIALS_FILE=<tunneld data-dir>/aws-credentials)
Against AWS: leave out --endpoint-url and set --region.

Options:
`

func connect(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("sectun connect", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	endpointURL := fs.String("endpoint-url", getenv("AWS_ENDPOINT_URL"), "management API `URL` of tunneld, e.g. https://127.0.0.1:8443 (default: AWS's for --region; env AWS_ENDPOINT_URL)")
	thing := fs.String("thing", "", "`thing` to open the tunnel to (its tunnel-agent is notified)")
	services := fs.StringArray("service", nil, "service and local port: `SSH`, SSH=5555 or SSH=127.0.0.1:5555 (repeatable; no port = a free one)")
	caFile := fs.String("ca", getenv("AWS_CA_BUNDLE"), "PEM `file` (or directory) of CAs trusted for tunneld, added to the system roots (env AWS_CA_BUNDLE)")
	insecure := fs.Bool("insecure", false, "do not verify tunneld's certificate (testing only)")
	tunnelEndpoint := fs.String("tunnel-endpoint", "", "tunnel WebSocket `URL` (default: the API endpoint's host and port with wss/ws, or AWS's for --region)")
	region := fs.String("region", "", "AWS region to sign for and, without --endpoint-url, to use (env AWS_REGION, AWS_DEFAULT_REGION; default us-east-1)")
	profile := fs.String("profile", "", "`profile` of the shared credentials file (env AWS_PROFILE; default \"default\")")
	destType := fs.String("destination-type", "", "`V1` or V2 when the device runs an older local proxy (default: V3, with detection)")
	closeOnExit := fs.Bool("close-on-exit", false, "close the tunnel when sectun exits")
	lifetime := fs.Int("lifetime", 0, "tunnel lifetime in `minutes` (default: the service's, 720 on AWS)")
	bind := fs.String("bind", "127.0.0.1", "local `address` to listen on when a service gives only a port")
	user := fs.String("ssh-user", "", "user name in the printed ssh command")
	wait := fs.Duration("wait-device", time.Minute, "how long to wait for the device to connect before printing the commands (negative: do not wait)")
	logLevel := fs.String("log-level", "warn", "debug, info, warn or error (diagnostics go to stderr)")
	genDoc := clidoc.AddFlag(fs)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageConnect)
		fmt.Fprint(stderr, fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *genDoc != "" {
		return clidoc.Write(stdout, *genDoc, clidoc.For("sectun", fs))
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("connect: unexpected argument %q (see --help)", fs.Arg(0))
	}
	if len(*services) == 0 {
		return errors.New("connect: give at least one --service (e.g. --service SSH=5555)")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", *logLevel)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	var specs []operator.ServiceSpec
	for _, s := range *services {
		spec, err := operator.ParseServiceSpec(s, *bind)
		if err != nil {
			return fmt.Errorf("--service: %w", err)
		}
		specs = append(specs, spec)
	}
	peer := 0
	switch *destType {
	case "", "V3", "v3":
	case "V1", "v1":
		peer = 1
	case "V2", "v2":
		peer = 2
	default:
		return fmt.Errorf("--destination-type %q: want V1, V2 or V3", *destType)
	}
	if peer == 1 && len(specs) > 1 {
		return errors.New("--destination-type V1 carries a single service")
	}
	creds, err := operator.LoadCredentials(*profile, getenv)
	if err != nil {
		return err
	}
	tlsCfg, err := tunnel.TLSConfig(*caFile, *insecure)
	if err != nil {
		return fmt.Errorf("--ca: %w", err)
	}
	api := &operator.Client{
		Endpoint:    *endpointURL,
		Region:      operator.Region(*region, getenv),
		Credentials: creds,
		HTTP:        operator.NewHTTPClient(tlsCfg),
	}
	err = operator.Connect(ctx, operator.ConnectConfig{
		API:             api,
		ThingName:       *thing,
		Services:        specs,
		TunnelEndpoint:  *tunnelEndpoint,
		TunnelTLS:       tlsCfg,
		TunnelCAFile:    *caFile,
		TunnelInsecure:  *insecure,
		PeerVersion:     peer,
		LifetimeMinutes: *lifetime,
		CloseOnExit:     *closeOnExit,
		WaitDevice:      *wait,
		SSHUser:         *user,
		Out:             stdout,
		Logger:          logger,
	})
	if h := connectHint(err); h != "" {
		err = fmt.Errorf("%w: %s", err, h)
	}
	return err
}

// connectHint says which sectun option fixes a connection error, "" if
// none: the tunnel library names its Config fields.
func connectHint(err error) string {
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var ve *tls.CertificateVerificationError
	switch {
	case err == nil:
		return ""
	case errors.Is(err, tunnel.ErrTLSRequired):
		return "the service speaks TLS: use an https:// --endpoint-url or a wss:// --tunnel-endpoint"
	case errors.Is(err, tunnel.ErrTLSNotSpoken):
		return "the service does not speak TLS: use an http:// --endpoint-url or a ws:// --tunnel-endpoint"
	case errors.Is(err, tunnel.ErrCertificateUntrusted), errors.As(err, &ua), errors.As(err, &hn), errors.As(err, &ve):
		return "pass tunneld's CA with --ca FILE (e.g. <data-dir>/tls/ca.pem), or --insecure (testing only)"
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return "the service does not speak TLS: use an http:// --endpoint-url"
	}
	return ""
}
