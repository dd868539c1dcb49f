package server

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sectun/sectun/internal/certs"
	"github.com/sectun/sectun/internal/notify"
)

// MQTTALPN is the ALPN protocol of MQTT with client-certificate
// authentication on a shared TLS port (AWS IoT Core's name, used by the
// AWS IoT Device Client and the device SDKs on port 443).
const MQTTALPN = "x-amzn-mqtt-ca"

const (
	deviceCACommonName = "sectun device CA"
	devCACommonName    = "sectun development CA" // certs.DevServer's
	defaultCertDays    = 3650
)

// DeviceCADir returns the directory of tunneld's device CA (ca.pem,
// ca-key.pem) in a data directory.
func DeviceCADir(dataDir string) string { return filepath.Join(dataDir, "devices") }

// DeviceCA loads the device CA of dataDir, creating it first if there is
// none, and returns it with the path of its certificate.
func DeviceCA(dataDir string) (*certs.CA, string, error) {
	dir := DeviceCADir(dataDir)
	ca, _, err := certs.LoadOrCreateCA(dir, deviceCACommonName)
	if err != nil {
		return nil, "", fmt.Errorf("tunneld: device CA in %s: %w", dir, err)
	}
	return ca, filepath.Join(dir, "ca.pem"), nil
}

// devicePool returns the CAs that verify device certificates: the device
// CA of dataDir (created if missing) and the certificates in extraFile
// (--mqtt-client-ca), if given.
func devicePool(dataDir, extraFile string) (pool *x509.CertPool, caPath string, err error) {
	ca, caPath, err := DeviceCA(dataDir)
	if err != nil {
		return nil, "", err
	}
	pool = x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if extraFile != "" {
		b, err := os.ReadFile(extraFile)
		if err != nil {
			return nil, "", fmt.Errorf("tunneld: --mqtt-client-ca: %w", err)
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, "", fmt.Errorf("tunneld: --mqtt-client-ca %s holds no PEM certificate", extraFile)
		}
	}
	return pool, caPath, nil
}

// DeviceRequest asks for a device identity: a certificate and key signed
// by tunneld's device CA, for a device that connects the way the AWS IoT
// Device Client does.
type DeviceRequest struct {
	// DataDir is tunneld's data directory (default tunneld-data). It must
	// exist and be one (hold tunneld's database, lock, credentials or
	// CAs), unless InitDataDir: a mistyped path would otherwise get a new
	// device CA that no running tunneld trusts.
	DataDir string
	// InitDataDir creates DataDir if missing and the device CA (and,
	// without RootCAFile, the development CA) in it, for a tunneld that
	// has not run yet.
	InitDataDir bool
	// Thing is the thing name: the certificate's CommonName, which the
	// broker takes as the device's identity, and its MQTT client ID.
	Thing string
	// OutDir receives the files (created with mode 0700 if missing).
	OutDir string
	// Endpoint is the host name or IP address devices use for tunneld
	// (the Device Client's endpoint and tunneling.endpoint); default
	// localhost. tunneld's certificate must cover it.
	Endpoint string
	// DeviceDir is the directory the files will be installed in on the
	// device, for the paths in the Device Client configuration; default
	// the absolute OutDir.
	DeviceDir string
	// RootCAFile is the PEM certificate of the CA that signed tunneld's
	// server certificate: the device trusts only it. Default: tunneld's
	// development CA, DataDir/tls/ca.pem (created if missing), right when
	// tunneld runs without --tls-cert.
	RootCAFile string
	// Validity of the device certificate; default 10 years, never beyond
	// the device CA's own expiry.
	Validity time.Duration
	// Force replaces an existing certificate and key of the thing in
	// OutDir instead of failing.
	Force bool
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// DeviceFiles are the files CreateDevice wrote (paths in OutDir) and the
// Device Client configuration that uses them.
type DeviceFiles struct {
	// Thing is the thing name.
	Thing string
	// CertFile (<thing>.cert.pem, 0644), KeyFile (<thing>.private.key,
	// 0600), RootCAFile (root-ca.pem, 0644) and ConfigFile
	// (<thing>.device-client.json, 0640) are in OutDir.
	CertFile, KeyFile, RootCAFile, ConfigFile string
	// DeviceCAFile is the device CA certificate that signed CertFile;
	// DeviceCASubject and DeviceCAFingerprint (SHA-256 of the
	// certificate, hex with colons) identify it.
	DeviceCAFile, DeviceCASubject, DeviceCAFingerprint string
	// RootCASource is where root-ca.pem was copied from: RootCAFile or
	// DataDir/tls/ca.pem.
	RootCASource string
	// DeviceConfigFile is ConfigFile's path on the device (in DeviceDir),
	// the one to give aws-iot-device-client --config-file.
	DeviceConfigFile string
	// DeviceDir is the directory of the files on the device.
	DeviceDir string
	// Config is the AWS IoT Device Client JSON configuration written to
	// ConfigFile, with DeviceDir paths.
	Config []byte
	// NotAfter is the certificate's expiry.
	NotAfter time.Time
	// Warnings say what may keep the device from connecting.
	Warnings []string
}

// ErrDeviceExists reports that OutDir already holds the thing's
// certificate or key (DeviceRequest.Force replaces them).
var ErrDeviceExists = errors.New("tunneld: device files already exist")

// CreateDevice issues a certificate for req.Thing from the device CA and
// writes it, its key, the root CA the device must trust and a Device
// Client configuration to req.OutDir. It works on the data directory
// alone, with tunneld running or not; a running tunneld trusts the
// certificate at once (it loads the device CA at start, creating it).
func CreateDevice(req DeviceRequest) (*DeviceFiles, error) {
	req.DataDir = resolveDataDir(req.DataDir)
	if req.Endpoint == "" {
		req.Endpoint = "localhost"
	}
	if req.Now == nil {
		req.Now = time.Now
	}
	if req.Validity <= 0 {
		req.Validity = defaultCertDays * 24 * time.Hour
	}
	switch {
	case !notify.ValidThingName(req.Thing):
		return nil, fmt.Errorf("tunneld: thing name %q: want 1-128 letters, digits, ':', '_' or '-'", req.Thing)
	case req.OutDir == "":
		return nil, errors.New("tunneld: give the output directory (--out)")
	case !validEndpointHost(req.Endpoint):
		return nil, fmt.Errorf("tunneld: endpoint %q: want a bare host name or IP address (the Device Client always uses port 443)", req.Endpoint)
	}
	out, err := filepath.Abs(req.OutDir)
	if err != nil {
		return nil, err
	}
	if req.DeviceDir == "" {
		req.DeviceDir = out
	}
	f := &DeviceFiles{
		Thing:      req.Thing,
		CertFile:   filepath.Join(out, req.Thing+".cert.pem"),
		KeyFile:    filepath.Join(out, req.Thing+".private.key"),
		RootCAFile: filepath.Join(out, "root-ca.pem"),
		ConfigFile: filepath.Join(out, req.Thing+".device-client.json"),
	}
	if !req.Force {
		for _, p := range []string{f.CertFile, f.KeyFile} {
			if _, err := os.Stat(p); err == nil {
				return nil, fmt.Errorf("%w: %s (pass --force to issue a new certificate and key)", ErrDeviceExists, p)
			}
		}
	}

	if err := checkDataDir(req.DataDir, req.InitDataDir); err != nil {
		return nil, err
	}
	if !req.InitDataDir {
		if _, err := os.Stat(filepath.Join(DeviceCADir(req.DataDir), "ca.pem")); err != nil {
			// tunneld makes it at start when it serves devices; a data
			// directory without one was made by a tunneld that does not.
			if _, err := os.Stat(filepath.Join(req.DataDir, "tunneld.db")); err != nil {
				return nil, fmt.Errorf("tunneld: %s has no device CA (%s) and no database: give the --data-dir tunneld runs with, or pass --init-data-dir to make a device CA there", req.DataDir, filepath.Join(DeviceCADir(req.DataDir), "ca.pem"))
			}
		}
		if req.RootCAFile == "" {
			if _, err := os.Stat(filepath.Join(req.DataDir, "tls", "ca.pem")); err != nil {
				return nil, fmt.Errorf("tunneld: %s has no development CA (tls/ca.pem): tunneld runs with --tls-cert or --plaintext? Give --root-ca with the CA that signed tunneld's certificate, or --init-data-dir to make a development CA", req.DataDir)
			}
		}
	}
	rootPEM, devCA, err := serverRootCA(req.DataDir, req.RootCAFile)
	if err != nil {
		return nil, err
	}
	f.RootCASource = req.RootCAFile
	if devCA {
		f.RootCASource = filepath.Join(req.DataDir, "tls", "ca.pem")
	}
	ca, caPath, err := DeviceCA(req.DataDir)
	if err != nil {
		return nil, err
	}
	f.DeviceCAFile = caPath
	f.DeviceCASubject = ca.Cert.Subject.String()
	f.DeviceCAFingerprint = Fingerprint(ca.Cert)
	f.DeviceDir = req.DeviceDir
	f.DeviceConfigFile = filepath.Join(req.DeviceDir, filepath.Base(f.ConfigFile))
	validity := req.Validity
	if left := ca.Cert.NotAfter.Sub(req.Now()); left < validity {
		validity = left
	}
	if validity <= time.Hour {
		return nil, fmt.Errorf("tunneld: the device CA in %s expires on %s: move it away to have a new one made, then reissue every device certificate", DeviceCADir(req.DataDir), ca.Cert.NotAfter.Format(time.DateOnly))
	}
	iss, err := ca.IssueClient(req.Thing, validity)
	if err != nil {
		return nil, fmt.Errorf("tunneld: issuing the certificate: %w", err)
	}
	leaf, err := parseLeaf(iss.CertPEM)
	if err != nil {
		return nil, err
	}
	f.NotAfter = leaf.NotAfter

	f.Config, err = deviceClientConfig(req.Thing, req.Endpoint, req.DeviceDir, f)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(out, 0o700); err != nil {
		return nil, fmt.Errorf("tunneld: output directory: %w", err)
	}
	for _, w := range []struct {
		path string
		data []byte
		mode fs.FileMode
	}{
		// The Device Client checks these modes: key 600, certificates 644.
		{f.KeyFile, iss.KeyPEM, 0o600},
		{f.CertFile, iss.CertPEM, 0o644},
		{f.RootCAFile, rootPEM, 0o644},
		{f.ConfigFile, f.Config, 0o640},
	} {
		if err := writeFileMode(w.path, w.data, w.mode); err != nil {
			return nil, fmt.Errorf("tunneld: %w", err)
		}
	}
	// Keep a copy of the certificate (not the key) as the record of what
	// was issued.
	issued := filepath.Join(DeviceCADir(req.DataDir), "issued")
	if err := os.MkdirAll(issued, 0o700); err == nil {
		writeFileMode(filepath.Join(issued, req.Thing+".cert.pem"), iss.CertPEM, 0o644)
	}

	if devCA {
		// tunneld's self-signed certificate must cover the endpoint; it is
		// remade at start with --tls-host names.
		serverCert := filepath.Join(req.DataDir, "tls", "server.pem")
		if pair, err := tls.LoadX509KeyPair(serverCert, filepath.Join(req.DataDir, "tls", "server-key.pem")); err == nil {
			if sl, err := x509.ParseCertificate(pair.Certificate[0]); err == nil && sl.VerifyHostname(req.Endpoint) != nil {
				f.Warnings = append(f.Warnings, fmt.Sprintf("tunneld's self-signed certificate (%s) does not cover %q: start tunneld with --tls-host %s", serverCert, req.Endpoint, req.Endpoint))
			}
		} else if req.Endpoint != "localhost" {
			f.Warnings = append(f.Warnings, fmt.Sprintf("start tunneld with --tls-host %s so that its self-signed certificate covers the endpoint", req.Endpoint))
		}
	}
	return f, nil
}

// dataDirMarkers are files only a tunneld data directory holds.
var dataDirMarkers = []string{"tunneld.db", lockFileName, "aws-credentials", "devices/ca.pem", "tls/ca.pem"}

// checkDataDir fails unless dir is an existing tunneld data directory;
// with init it creates a missing one (an existing one must still be
// empty or tunneld's).
func checkDataDir(dir string, init bool) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist) && init:
		return os.MkdirAll(dir, 0o700)
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("tunneld: data directory %s does not exist: give the --data-dir tunneld runs with (a new CA here would be trusted by no running tunneld), or pass --init-data-dir to create it", dir)
	case err != nil:
		return fmt.Errorf("tunneld: data directory: %w", err)
	case !fi.IsDir():
		return fmt.Errorf("tunneld: data directory %s is not a directory", dir)
	}
	for _, m := range dataDirMarkers {
		if _, err := os.Stat(filepath.Join(dir, m)); err == nil {
			return nil
		}
	}
	if init {
		return nil
	}
	return fmt.Errorf("tunneld: %s is not a tunneld data directory (none of %v in it): give the --data-dir tunneld runs with, or pass --init-data-dir to make one there", dir, dataDirMarkers)
}

// Fingerprint is the SHA-256 of a certificate, in upper-case hex pairs
// joined by colons (as openssl x509 -fingerprint -sha256 prints it).
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	var b strings.Builder
	for i, x := range sum {
		if i > 0 {
			b.WriteByte(':')
		}
		fmt.Fprintf(&b, "%02X", x)
	}
	return b.String()
}

// serverRootCA returns the PEM of the CA the device trusts for tunneld:
// file, or tunneld's development CA (created if missing). devCA reports
// the latter.
func serverRootCA(dataDir, file string) (pemData []byte, devCA bool, err error) {
	if file == "" {
		ca, _, err := certs.LoadOrCreateCA(filepath.Join(dataDir, "tls"), devCACommonName)
		if err != nil {
			return nil, false, fmt.Errorf("tunneld: development CA: %w", err)
		}
		return ca.CertPEM, true, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, false, fmt.Errorf("tunneld: --root-ca: %w", err)
	}
	if _, err := certs.PoolFromPEM(b); err != nil {
		return nil, false, fmt.Errorf("tunneld: --root-ca %s: no PEM certificate in it", file)
	}
	return b, false, nil
}

func parseLeaf(certPEM []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil {
		return nil, errors.New("tunneld: issued certificate is not PEM")
	}
	return x509.ParseCertificate(b.Bytes)
}

// validEndpointHost accepts what the Device Client can dial on port 443: a
// host name or an IP address, without port, scheme or path.
func validEndpointHost(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	if net.ParseIP(h) != nil {
		return true
	}
	for _, r := range h {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

// writeFileMode writes data to path with exactly mode (whatever the
// umask), replacing the file.
func writeFileMode(path string, data []byte, mode fs.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// enabledOnly is a Device Client feature section that is switched off.
type enabledOnly struct {
	Enabled bool `json:"enabled"`
}

// deviceClientJSON is the AWS IoT Device Client configuration file (keys
// as its Config.cpp reads them), in its documented order.
type deviceClientJSON struct {
	Endpoint  string `json:"endpoint"`
	Cert      string `json:"cert"`
	Key       string `json:"key"`
	RootCA    string `json:"root-ca"`
	ThingName string `json:"thing-name"`
	Logging   struct {
		Level string `json:"level"`
		Type  string `json:"type"`
	} `json:"logging"`
	Jobs      enabledOnly `json:"jobs"`
	Tunneling struct {
		Enabled  bool   `json:"enabled"`
		Endpoint string `json:"endpoint"`
	} `json:"tunneling"`
	DeviceDefender    enabledOnly `json:"device-defender"`
	FleetProvisioning enabledOnly `json:"fleet-provisioning"`
	Samples           struct {
		PubSub enabledOnly `json:"pub-sub"`
	} `json:"samples"`
	ConfigShadow enabledOnly `json:"config-shadow"`
	SampleShadow enabledOnly `json:"sample-shadow"`
}

// deviceClientConfig is the Device Client configuration for a device whose
// files are in deviceDir: MQTT and tunnels both to endpoint (port 443),
// only the tunneling feature on (the others need AWS services tunneld
// does not offer), logs on stdout.
func deviceClientConfig(thing, endpoint, deviceDir string, f *DeviceFiles) ([]byte, error) {
	var c deviceClientJSON
	c.Endpoint = endpoint
	c.Cert = filepath.Join(deviceDir, filepath.Base(f.CertFile))
	c.Key = filepath.Join(deviceDir, filepath.Base(f.KeyFile))
	c.RootCA = filepath.Join(deviceDir, filepath.Base(f.RootCAFile))
	c.ThingName = thing
	c.Logging.Level, c.Logging.Type = "INFO", "STDOUT"
	c.Tunneling.Enabled, c.Tunneling.Endpoint = true, endpoint
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&c); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// DataDirDeviceCA is DeviceCA for the device commands: dataDir must be an
// existing tunneld data directory unless init, which creates it.
func DataDirDeviceCA(dataDir string, init bool) (*certs.CA, string, error) {
	if abs, err := filepath.Abs(dataDir); err == nil {
		dataDir = abs
	}
	if err := checkDataDir(dataDir, init); err != nil {
		return nil, "", err
	}
	return DeviceCA(dataDir)
}
