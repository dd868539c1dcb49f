package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// startTimeout bounds the start of one process.
const startTimeout = 30 * time.Second

// buildBinaries builds tunneld and localproxy into dir with the go
// command, from the module that holds the working directory.
func buildBinaries(ctx context.Context, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir,
		"github.com/sectun/sectun/cmd/tunneld", "github.com/sectun/sectun/cmd/localproxy")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build (run the harness from inside the sectun module): %v\n%s", err, out)
	}
	return nil
}

// tunneld is a running tunneld with a SigV4-signing API client.
type tunneld struct {
	*proc
	url     string // http(s)://127.0.0.1:port
	wsURL   string // ws(s)://127.0.0.1:port
	dataDir string
	caPath  string // "" for plain
	tlsConf *tls.Config
	keyID   string
	secret  string
	client  *http.Client
}

var (
	bannerLine = regexp.MustCompile(`tunneld is listening on (\S+)`)
	keyIDLine  = regexp.MustCompile(`aws_access_key_id\s*=\s*(\S+)`)
	secretLine = regexp.MustCompile(`aws_secret_access_key\s*=\s*(\S+)`)
)

// startTunneld starts tunneld on 127.0.0.1:0 with a fresh data directory
// and no MQTT broker, plain or with its self-signed development CA.
func startTunneld(ctx context.Context, ps *procs, binDir, dataDir string, useTLS bool) (*tunneld, error) {
	args := []string{"--listen", "127.0.0.1:0", "--mqtt-listen", "off", "--data-dir", dataDir}
	if !useTLS {
		args = append(args, "--plaintext")
	}
	p, err := startProc("tunneld", filepath.Join(binDir, "tunneld"), nil, args...)
	if err != nil {
		return nil, err
	}
	ps.add(p)
	m, err := p.waitLine(ctx, bannerLine, startTimeout)
	if err != nil {
		return nil, err
	}
	d := &tunneld{proc: p, url: m[1], dataDir: dataDir}
	d.wsURL = "ws" + strings.TrimPrefix(d.url, "http")
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if useTLS {
		d.caPath = filepath.Join(dataDir, "tls", "ca.pem")
		pem, err := os.ReadFile(d.caPath)
		if err != nil {
			return nil, p.errorf("no development CA: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, p.errorf("%s holds no certificate", d.caPath)
		}
		d.tlsConf = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		tr.TLSClientConfig = d.tlsConf.Clone()
	}
	tr.MaxIdleConnsPerHost = 64
	d.client = &http.Client{Timeout: 30 * time.Second, Transport: tr}
	creds, err := os.ReadFile(filepath.Join(dataDir, "aws-credentials"))
	if err != nil {
		return nil, p.errorf("no credentials file: %v", err)
	}
	k, s := keyIDLine.FindSubmatch(creds), secretLine.FindSubmatch(creds)
	if k == nil || s == nil {
		return nil, p.errorf("no access key in %s", filepath.Join(dataDir, "aws-credentials"))
	}
	d.keyID, d.secret = string(k[1]), string(s[1])
	return d, nil
}

// call invokes a management API operation, signed with SigV4, and decodes
// the JSON answer into out.
func (d *tunneld) call(ctx context.Context, op string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, "POST", d.url+"/", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "IoTSecuredTunneling."+op)
	sum := sha256.Sum256(body)
	err = v4.NewSigner().SignHTTP(ctx, aws.Credentials{AccessKeyID: d.keyID, SecretAccessKey: d.secret},
		req, hex.EncodeToString(sum[:]), "IoTSecuredTunneling", "us-east-1", time.Now())
	if err != nil {
		return err
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d: %s", op, resp.StatusCode, bytes.TrimSpace(data))
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s: decoding %q: %w", op, data, err)
		}
	}
	return nil
}

// openedTunnel is OpenTunnel's answer.
type openedTunnel struct {
	TunnelID               string `json:"tunnelId"`
	SourceAccessToken      string `json:"sourceAccessToken"`
	DestinationAccessToken string `json:"destinationAccessToken"`
}

func (d *tunneld) openTunnel(ctx context.Context, thing string, services ...string) (openedTunnel, error) {
	var out openedTunnel
	in := map[string]any{"destinationConfig": map[string]any{"thingName": thing, "services": services}}
	err := d.call(ctx, "OpenTunnel", in, &out)
	return out, err
}

// localproxies is the pair of local proxies of one tunnel.
type localproxies struct {
	src, dst *proc
	addrs    map[string]string // source listen address per service
}

var (
	mappingLine   = regexp.MustCompile(`Use port mapping`)
	listeningLine = regexp.MustCompile(`Listening for (\S+) on (\S+)`)
)

// startLocalproxies starts a destination localproxy mapping every service
// to dstAddr and a source localproxy listening on a free port per service,
// as a user would: token in AWSIOT_TUNNEL_ACCESS_TOKEN, -c for TLS, and a
// --settings-json raising tcp.max_active_connections to maxConns.
func startLocalproxies(ctx context.Context, ps *procs, binDir, workDir string, d *tunneld, tun openedTunnel, services []string, dstAddr string, maxConns int) (*localproxies, error) {
	settings := filepath.Join(workDir, "settings.json")
	js := fmt.Sprintf(`{"tunneling":{"proxy":{"tcp":{"max_active_connections":"%d"}}}}`, maxConns)
	if err := os.WriteFile(settings, []byte(js), 0o600); err != nil {
		return nil, err
	}
	endpoint := d.wsURL
	var common []string
	if d.caPath != "" {
		// The reference's form: host:port means wss://, -c trusts the CA.
		endpoint = strings.TrimPrefix(d.url, "https://")
		common = append(common, "-c", d.caPath)
	}
	common = append(common, "-e", endpoint, "--settings-json", settings)
	var dmap, smap []string
	for _, s := range services {
		dmap = append(dmap, s+"="+dstAddr)
		smap = append(smap, s+"=0")
	}
	lp := filepath.Join(binDir, "localproxy")
	dst, err := startProc("localproxy-dst", lp, []string{"AWSIOT_TUNNEL_ACCESS_TOKEN=" + tun.DestinationAccessToken},
		append([]string{"-m", "dst", "-d", strings.Join(dmap, ",")}, common...)...)
	if err != nil {
		return nil, err
	}
	ps.add(dst)
	if _, err := dst.waitLine(ctx, mappingLine, startTimeout); err != nil {
		return nil, err
	}
	src, err := startProc("localproxy-src", lp, []string{"AWSIOT_TUNNEL_ACCESS_TOKEN=" + tun.SourceAccessToken},
		append([]string{"-m", "src", "-s", strings.Join(smap, ",")}, common...)...)
	if err != nil {
		return nil, err
	}
	ps.add(src)
	l := &localproxies{src: src, dst: dst, addrs: map[string]string{}}
	for range services {
		m, err := src.waitLine(ctx, listeningLine, startTimeout)
		if err != nil {
			return nil, err
		}
		l.addrs[m[1]] = m[2]
	}
	for _, s := range services {
		if l.addrs[s] == "" {
			return nil, src.errorf("no listener for service %s: %v", s, l.addrs)
		}
	}
	return l, nil
}
