package tunnelsctl

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/sectun/sectun/internal/operator"
)

// ErrUsage marks a bad command line.
var ErrUsage = errors.New("tunnelsctl: usage")

const usage = `Usage: tunneld tunnels list|describe ID|close ID [options]

Calls the management API of a running tunneld, signed with its API key:
  list            the tunnels (newest first), --status OPEN|CLOSED to filter
  describe ID     one tunnel's state, as the API answers (JSON)
  close ID        close a tunnel (its proxies are disconnected)

Where tunneld is: --config reads its listen, data-dir, region and plaintext
settings (e.g. /etc/sectun/tunneld.conf, with --data-dir /var/lib/tunneld as
the unit gives); else --endpoint and --data-dir. The API key is
<data-dir>/aws-credentials and the CA <data-dir>/tls/ca.pem unless
--credentials-file and --ca say otherwise.

Options:
`

// Run runs `tunneld tunnels ARGS`.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("tunneld tunnels", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", "", "tunneld's configuration `file` (name = value lines)")
	dataDir := fs.String("data-dir", "", "tunneld's data `directory` (default from --config, else tunneld-data)")
	endpoint := fs.String("endpoint", "", "API `URL` (default from --config's listen, else https://127.0.0.1:8443)")
	credFile := fs.String("credentials-file", "", "AWS shared-credentials `file` with the API key (default <data-dir>/aws-credentials)")
	profile := fs.String("profile", "default", "profile in the credentials file")
	caFile := fs.String("ca", "", "CA `file` to trust (default <data-dir>/tls/ca.pem if it exists, else system roots)")
	region := fs.String("region", "", "signing region (default from --config, else us-east-1)")
	status := fs.String("status", "", "list: only OPEN or CLOSED tunnels")
	asJSON := fs.Bool("json", false, "list: print the API's JSON answer")
	timeout := fs.Duration("timeout", 30*time.Second, "how long a request may take")
	fs.Usage = func() { fmt.Fprint(stderr, usage, fs.FlagUsages()) }
	if err := fs.Parse(args); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return fmt.Errorf("%w: want list, describe ID or close ID", ErrUsage)
	}
	conf := map[string]string{}
	if *configFile != "" {
		var err error
		if conf, err = readConfig(*configFile); err != nil {
			return err
		}
	}
	pick := func(flag, key, def string) string {
		switch {
		case flag != "":
			return flag
		case conf[key] != "":
			return conf[key]
		}
		return def
	}
	dir := pick(*dataDir, "data-dir", "tunneld-data")
	ep := *endpoint
	if ep == "" {
		ep = endpointFor(pick("", "listen", "127.0.0.1:8443"), conf["plaintext"] == "true")
	}
	reg := pick(*region, "region", "us-east-1")
	cred := pick(*credFile, "credentials-file", filepath.Join(dir, "aws-credentials"))
	creds, err := operator.LoadCredentials(*profile, func(k string) string {
		if k == "AWS_SHARED_CREDENTIALS_FILE" {
			return cred
		}
		return ""
	})
	if err != nil {
		return err
	}
	ca := *caFile
	if ca == "" && conf["tls-cert"] == "" {
		if p := filepath.Join(dir, "tls", "ca.pem"); fileExists(p) {
			ca = p
		}
	}
	var tc *tls.Config
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return fmt.Errorf("--ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--ca %s: no PEM certificate", ca)
		}
		tc = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	hc := operator.NewHTTPClient(tc)
	hc.Timeout = *timeout
	c := &operator.Client{Endpoint: ep, Region: reg, Credentials: creds, HTTP: hc}
	switch cmd := rest[0]; {
	case cmd == "list" && len(rest) == 1:
		return list(ctx, c, strings.ToUpper(*status), *asJSON, stdout)
	case cmd == "describe" && len(rest) == 2:
		var out json.RawMessage
		if err := c.Call(ctx, "DescribeTunnel", map[string]string{"tunnelId": rest[1]}, &out); err != nil {
			return err
		}
		return printJSON(stdout, out)
	case cmd == "close" && len(rest) == 2:
		if err := c.CloseTunnel(ctx, rest[1]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "closed %s\n", rest[1])
		return nil
	}
	fs.Usage()
	return fmt.Errorf("%w: want list, describe ID or close ID, not %q", ErrUsage, strings.Join(rest, " "))
}

// Summary is a row of ListTunnels' answer.
type Summary struct {
	TunnelID      string  `json:"tunnelId"`
	Status        string  `json:"status"`
	Description   string  `json:"description"`
	CreatedAt     float64 `json:"createdAt"`
	LastUpdatedAt float64 `json:"lastUpdatedAt"`
}

func list(ctx context.Context, c *operator.Client, status string, asJSON bool, w io.Writer) error {
	if status != "" && status != "OPEN" && status != "CLOSED" {
		return fmt.Errorf("%w: --status %q: want OPEN or CLOSED", ErrUsage, status)
	}
	var all []json.RawMessage
	next := ""
	for range 1000 { // pages of 100 at most: 100,000 tunnels
		in := map[string]any{"maxResults": 100}
		if next != "" {
			in["nextToken"] = next
		}
		var out struct {
			TunnelSummaries []json.RawMessage `json:"tunnelSummaries"`
			NextToken       string            `json:"nextToken"`
		}
		if err := c.Call(ctx, "ListTunnels", in, &out); err != nil {
			return err
		}
		all = append(all, out.TunnelSummaries...)
		if next = out.NextToken; next == "" {
			break
		}
	}
	var rows []Summary
	var kept []json.RawMessage
	for _, raw := range all {
		var s Summary
		if err := json.Unmarshal(raw, &s); err != nil {
			return fmt.Errorf("ListTunnels: %w", err)
		}
		if status == "" || s.Status == status {
			rows = append(rows, s)
			kept = append(kept, raw)
		}
	}
	if asJSON {
		body, err := json.Marshal(map[string]any{"tunnelSummaries": kept})
		if err != nil {
			return err
		}
		return printJSON(w, body)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TUNNEL ID\tSTATUS\tCREATED\tDESCRIPTION")
	for _, s := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.TunnelID, s.Status, epoch(s.CreatedAt), s.Description)
	}
	return tw.Flush()
}

func epoch(f float64) string {
	if f <= 0 {
		return "-"
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)).UTC().Format("2006-01-02 15:04:05Z")
}

func printJSON(w io.Writer, raw []byte) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// endpointFor is the URL a client on this host uses for tunneld's
// --listen address: an unspecified host (0.0.0.0, [::], "") is loopback.
func endpointFor(listen string, plaintext bool) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		host, port = listen, "8443"
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	scheme := "https"
	if plaintext {
		scheme = "http"
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

// readConfig reads the keys of a tunneld --config file (name = value
// lines, # and ; comments, [sections] ignored). A boolean option given
// without a value is "true".
func readConfig(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		s := strings.TrimSpace(sc.Text())
		if s == "" || s[0] == '#' || s[0] == ';' || s[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			v = "true"
		}
		m[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"`)
	}
	return m, sc.Err()
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
