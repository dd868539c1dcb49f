package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"

	"github.com/sectun/sectun/internal/server"
)

const usageDevice = `Usage:
  tunneld device create --data-dir DIR --thing NAME --out OUT [--endpoint HOST] [options]
  tunneld device ca --data-dir DIR

Device identities for devices that connect like the AWS IoT Device Client:
MQTT on tunneld's TLS port (443 in production) with ALPN x-amzn-mqtt-ca and
a client certificate whose CommonName is the thing name.

create  issues a certificate for the thing from tunneld's device CA
        (<data-dir>/devices; the data directory must be the one tunneld
        runs with, or --init-data-dir makes one) and writes to OUT:
          NAME.cert.pem, NAME.private.key (0600), root-ca.pem (the CA the
          device trusts for tunneld) and NAME.device-client.json (an AWS IoT
          Device Client configuration), and prints the configuration.
        Works on the data directory alone, with tunneld running or not.
ca      prints the path of the device CA certificate (making the CA if
        missing), e.g. to verify device certificates elsewhere.

Options:
`

func device(args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("tunneld device", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var req server.DeviceRequest
	fs.StringVar(&req.DataDir, "data-dir", "tunneld-data", "tunneld's data directory (must exist and be tunneld's, unless --init-data-dir)")
	fs.BoolVar(&req.InitDataDir, "init-data-dir", false, "create the data directory and its CAs if missing, for a tunneld that has not run yet (without it, a mistyped --data-dir is an error, not a new CA no tunneld trusts)")
	fs.StringVar(&req.Thing, "thing", "", "thing name (the certificate's CommonName and MQTT client ID)")
	fs.StringVar(&req.OutDir, "out", "", "directory for the device's files (created 0700)")
	fs.StringVar(&req.Endpoint, "endpoint", "localhost", "host name or IP address the device uses for tunneld (port 443); tunneld's certificate must cover it")
	fs.StringVar(&req.DeviceDir, "device-dir", "", "directory of the files on the device, for the paths in the configuration (default: --out)")
	fs.StringVar(&req.RootCAFile, "root-ca", "", "PEM file of the CA that signed tunneld's server certificate (default: tunneld's development CA, <data-dir>/tls/ca.pem, right unless tunneld runs with --tls-cert)")
	days := fs.Int("days", 3650, "certificate validity in days")
	fs.BoolVar(&req.Force, "force", false, "replace the thing's existing certificate and key in --out")
	fs.Usage = func() {
		fmt.Fprint(stderr, usageDevice)
		fmt.Fprint(stderr, fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("device: want one command: create or ca")
	}
	switch fs.Arg(0) {
	case "ca":
		_, path, err := server.DataDirDeviceCA(req.DataDir, req.InitDataDir)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, path)
		return nil
	case "create":
	default:
		return fmt.Errorf("device: unknown command %q: want create or ca", fs.Arg(0))
	}
	if req.Thing == "" || req.OutDir == "" {
		return errors.New("device create: give --thing and --out")
	}
	if *days <= 0 {
		return fmt.Errorf("--days %d: want a positive number", *days)
	}
	req.Validity = time.Duration(*days) * 24 * time.Hour
	f, err := server.CreateDevice(req)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Issued a certificate for thing %s, valid until %s, signed by the device CA\n  %s (SHA-256 %s)\n  at %s\n",
		f.Thing, f.NotAfter.Format(time.DateOnly), f.DeviceCASubject, f.DeviceCAFingerprint, f.DeviceCAFile)
	fmt.Fprintf(stdout, "which tunneld trusts when it runs with --data-dir %s.\n", filepath.Dir(filepath.Dir(f.DeviceCAFile)))
	fmt.Fprintf(stdout, "The device trusts tunneld through root-ca.pem, a copy of %s.\n", f.RootCASource)
	fmt.Fprintf(stdout, "Files written:\n")
	for _, p := range []string{f.CertFile, f.KeyFile, f.RootCAFile, f.ConfigFile} {
		fmt.Fprintf(stdout, "  %s\n", p)
	}
	fmt.Fprintf(stdout, "AWS IoT Device Client configuration (%s):\n%s", f.ConfigFile, f.Config)
	if out := filepath.Dir(f.ConfigFile); out != f.DeviceDir {
		fmt.Fprintf(stdout, "On the device: copy the four files of %s to %s (directory 0700, key 0600, certificates 0644: the paths the configuration names), then run\n", out, f.DeviceDir)
	} else {
		fmt.Fprintf(stdout, "On the device (the files are at the paths the configuration names; keep the directory 0700, the key 0600, certificates 0644), run\n")
	}
	fmt.Fprintf(stdout, "  aws-iot-device-client --config-file %s\n", f.DeviceConfigFile)
	for _, w := range f.Warnings {
		fmt.Fprintf(stdout, "Warning: %s\n", w)
	}
	return nil
}
