package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sectun/sectun/internal/token"
)

// awsCLIFallback is Debian's awscli, tried when the "aws" found on PATH
// does not run (a pyenv shim for a Python that no longer has it, say).
const awsCLIFallback = "/usr/bin/aws"

// findAWSCLI returns the first AWS CLI that answers "aws --version" in
// the environment the tests run it with: "aws" on PATH, then
// /usr/bin/aws. tried says what was tried and why each was refused.
func findAWSCLI(home string) (path, version string, tried []string) {
	var candidates []string
	if p, err := exec.LookPath("aws"); err == nil {
		candidates = append(candidates, p)
	} else {
		tried = append(tried, "aws on PATH: "+err.Error())
	}
	if len(candidates) == 0 || candidates[0] != awsCLIFallback {
		candidates = append(candidates, awsCLIFallback)
	}
	for _, p := range candidates {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		cmd := exec.CommandContext(ctx, p, "--version")
		cmd.Env = cliEnv(home, p, "", "")
		out, err := cmd.CombinedOutput()
		cancel()
		v := strings.TrimSpace(string(out))
		if err == nil && strings.HasPrefix(v, "aws-cli/") {
			return p, v, tried
		}
		if len(v) > 200 {
			v = v[:200] + "..."
		}
		tried = append(tried, fmt.Sprintf("%s --version: %v %q", p, err, v))
	}
	return "", "", tried
}

// cliEnv is the whole environment the CLI at path runs with: nothing of
// the user's AWS configuration, and PATH with the CLI's own directory
// (a shim may need its neighbours).
func cliEnv(home, path, akid, secret string) []string {
	return []string{
		"PATH=" + filepath.Dir(path) + ":/usr/bin:/bin",
		"HOME=" + home,
		"LANG=C.UTF-8",
		"TZ=UTC",
		"AWS_CONFIG_FILE=" + filepath.Join(home, "config"),
		"AWS_SHARED_CREDENTIALS_FILE=/dev/null",
		"AWS_ACCESS_KEY_ID=" + akid,
		"AWS_SECRET_ACCESS_KEY=" + secret,
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_MAX_ATTEMPTS=1",
		"AWS_PAGER=",
	}
}

// cli runs the real AWS CLI against an env.
type cli struct {
	t    *testing.T
	e    *env
	home string
	path string // the CLI that runs
	v1   bool   // AWS CLI version 1 (Python botocore), not 2
}

func newCLI(t *testing.T, e *env) *cli {
	t.Helper()
	home := t.TempDir()
	// ISO 8601 timestamps: version 2's default, version 1's option.
	if err := os.WriteFile(filepath.Join(home, "config"), []byte("[default]\ncli_timestamp_format = iso8601\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path, version, tried := findAWSCLI(home)
	if path == "" {
		t.Skipf("skipping: no working AWS CLI (Debian package awscli):\n%s", strings.Join(tried, "\n"))
	}
	t.Logf("AWS CLI %s: %s", path, version)
	return &cli{t: t, e: e, home: home, path: path, v1: strings.HasPrefix(version, "aws-cli/1.")}
}

type cliResult struct {
	stdout, stderr string
	code           int
}

// run runs "aws iotsecuretunneling <args>" with the given credentials and
// a 60 s timeout.
func (c *cli) run(akid, secret string, args ...string) cliResult {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	full := append([]string{"iotsecuretunneling"}, args...)
	full = append(full, "--endpoint-url", c.e.hs.URL, "--region", "us-east-1", "--output", "json")
	if !c.v1 {
		full = append(full, "--no-cli-pager") // v1 has no pager and no such option
	}
	cmd := exec.CommandContext(ctx, c.path, full...)
	cmd.Env = cliEnv(c.home, c.path, akid, secret)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		c.t.Fatalf("aws %s: timed out", strings.Join(args, " "))
	}
	res := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	case err != nil:
		c.t.Fatalf("aws %s: %v", strings.Join(args, " "), err)
	}
	return res
}

// ok runs a command that must succeed and decodes its JSON output (if
// out is non-nil).
func (c *cli) ok(out any, args ...string) {
	c.t.Helper()
	r := c.run(testAKID, testSecret, args...)
	if r.code != 0 {
		c.t.Fatalf("aws %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	if out != nil {
		if err := json.Unmarshal([]byte(r.stdout), out); err != nil {
			c.t.Fatalf("aws %s: output %q: %v", strings.Join(args, " "), r.stdout, err)
		}
	}
	// Tokens printed by the CLI must not reach the server's logs either.
	var m map[string]any
	if json.Unmarshal([]byte(r.stdout), &m) == nil {
		c.e.collectTokens([]byte(r.stdout))
	}
}

// fails runs a command that must fail with a service error whose code is
// in stderr.
func (c *cli) fails(akid, secret, code string, args ...string) {
	c.t.Helper()
	r := c.run(akid, secret, args...)
	if r.code == 0 || !strings.Contains(r.stderr, "("+code+")") {
		c.t.Errorf("aws %s: exit %d, stderr %q; want a failure with (%s)", strings.Join(args, " "), r.code, r.stderr, code)
	}
}

// cliTunnel is describe-tunnel's tunnel as the CLI prints it (timestamps
// as ISO 8601 strings).
type cliTunnel struct {
	TunnelID                   string            `json:"tunnelId"`
	TunnelArn                  string            `json:"tunnelArn"`
	Status                     string            `json:"status"`
	SourceConnectionState      map[string]string `json:"sourceConnectionState"`
	DestinationConnectionState map[string]string `json:"destinationConnectionState"`
	Description                string            `json:"description"`
	DestinationConfig          struct {
		ThingName string   `json:"thingName"`
		Services  []string `json:"services"`
	} `json:"destinationConfig"`
	TimeoutConfig struct {
		MaxLifetimeTimeoutMinutes int `json:"maxLifetimeTimeoutMinutes"`
	} `json:"timeoutConfig"`
	Tags          []tagOut `json:"tags"`
	CreatedAt     string   `json:"createdAt"`
	LastUpdatedAt string   `json:"lastUpdatedAt"`
}

// TestAWSCLI drives the server with the real AWS CLI: every operation, and
// the errors a user sees.
func TestAWSCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping the AWS CLI test in -short mode (about 20 CLI runs, ~1 s each)")
	}
	e := newEnv(t, func(c *Config) { c.Now = time.Now }) // the CLI signs with the real clock
	c := newCLI(t, e)

	var o openResult
	c.ok(&o, "open-tunnel", "--description", "cli test",
		"--destination-config", "thingName=pump-1,services=SSH,HTTP",
		"--timeout-config", "maxLifetimeTimeoutMinutes=30",
		"--tags", "key=team,value=ops")
	if !uuidRE.MatchString(o.TunnelID) || o.TunnelArn != e.srv.TunnelARN(o.TunnelID) || o.SourceAccessToken == "" || o.DestinationAccessToken == "" {
		t.Fatalf("open-tunnel = %+v", o)
	}
	st := e.get(o.TunnelID)
	if !token.Equal(st.Source.TokenHash, token.Hash(o.SourceAccessToken)) || !token.Equal(st.Destination.TokenHash, token.Hash(o.DestinationAccessToken)) {
		t.Error("stored hashes do not match the tokens the CLI printed")
	}
	if n := e.notes.take(); len(n) != 1 || n[0].ThingName != "pump-1" || n[0].Token != o.DestinationAccessToken || !slices.Equal(n[0].Services, []string{"SSH", "HTTP"}) {
		t.Errorf("notifications %+v", n)
	}

	var d struct {
		Tunnel cliTunnel `json:"tunnel"`
	}
	c.ok(&d, "describe-tunnel", "--tunnel-id", o.TunnelID)
	tu := d.Tunnel
	if tu.TunnelID != o.TunnelID || tu.TunnelArn != o.TunnelArn || tu.Status != "OPEN" || tu.Description != "cli test" ||
		tu.DestinationConfig.ThingName != "pump-1" || !slices.Equal(tu.DestinationConfig.Services, []string{"SSH", "HTTP"}) ||
		tu.TimeoutConfig.MaxLifetimeTimeoutMinutes != 30 || tu.SourceConnectionState["status"] != "DISCONNECTED" ||
		tu.DestinationConnectionState["status"] != "DISCONNECTED" {
		t.Errorf("describe-tunnel = %+v", tu)
	}
	if diff := cmp.Diff([]tagOut{{"team", "ops"}}, tu.Tags); diff != "" {
		t.Errorf("tags (-want +got):\n%s", diff)
	}
	// The CLI turned our epoch seconds back into the same instant.
	for _, ts := range []string{tu.CreatedAt, tu.LastUpdatedAt, tu.SourceConnectionState["lastUpdatedAt"]} {
		got, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil || !got.Equal(st.CreatedAt) {
			t.Errorf("timestamp %q (%v), want %v", ts, err, st.CreatedAt)
		}
	}

	// Two more tunnels, one for the same thing: list newest first, by
	// thing, one page at a time. (awscli 2.9 has no paginator for
	// ListTunnels, so --max-items/--page-size do not exist there; paging
	// is --max-results/--next-token.)
	var o2, o3 openResult
	c.ok(&o2, "open-tunnel")
	c.ok(&o3, "open-tunnel", "--destination-config", "thingName=pump-1,services=SSH")
	type cliList struct {
		TunnelSummaries []struct {
			TunnelID  string `json:"tunnelId"`
			TunnelArn string `json:"tunnelArn"`
			Status    string `json:"status"`
			CreatedAt string `json:"createdAt"`
		} `json:"tunnelSummaries"`
		NextToken string `json:"nextToken"`
	}
	var l cliList
	c.ok(&l, "list-tunnels")
	if len(l.TunnelSummaries) != 3 || l.TunnelSummaries[0].TunnelID != o3.TunnelID || l.TunnelSummaries[2].TunnelID != o.TunnelID || l.NextToken != "" {
		t.Errorf("list-tunnels = %+v", l)
	}
	l = cliList{}
	c.ok(&l, "list-tunnels", "--thing-name", "pump-1", "--max-results", "1")
	if len(l.TunnelSummaries) != 1 || l.TunnelSummaries[0].TunnelID != o3.TunnelID || l.NextToken == "" {
		t.Fatalf("page 1 = %+v", l)
	}
	next := l.NextToken
	l = cliList{}
	c.ok(&l, "list-tunnels", "--thing-name", "pump-1", "--max-results", "1", "--next-token", next)
	if len(l.TunnelSummaries) != 1 || l.TunnelSummaries[0].TunnelID != o.TunnelID || l.TunnelSummaries[0].Status != "OPEN" || l.NextToken != "" {
		t.Errorf("page 2 = %+v", l)
	}

	var rot map[string]string
	c.ok(&rot, "rotate-tunnel-access-token", "--tunnel-id", o.TunnelID, "--client-mode", "DESTINATION",
		"--destination-config", "thingName=pump-1,services=SSH,HTTP")
	if rot["tunnelArn"] != o.TunnelArn || rot["destinationAccessToken"] == "" || rot["sourceAccessToken"] != "" {
		t.Errorf("rotate-tunnel-access-token = %v", rot)
	}
	if st := e.get(o.TunnelID); !token.Equal(st.Destination.TokenHash, token.Hash(rot["destinationAccessToken"])) {
		t.Error("rotation did not store the new destination token")
	}
	if n := e.notes.take(); len(n) != 2 || n[1].Token != rot["destinationAccessToken"] { // [0] is o3's open
		t.Errorf("notifications %+v", n)
	}

	c.ok(nil, "tag-resource", "--resource-arn", o.TunnelArn, "--tags", "key=env,value=lab")
	c.ok(nil, "untag-resource", "--resource-arn", o.TunnelArn, "--tag-keys", "team")
	var tags struct {
		Tags []tagOut `json:"tags"`
	}
	c.ok(&tags, "list-tags-for-resource", "--resource-arn", o.TunnelArn)
	if diff := cmp.Diff([]tagOut{{"env", "lab"}}, tags.Tags); diff != "" {
		t.Errorf("list-tags-for-resource (-want +got):\n%s", diff)
	}

	c.ok(nil, "close-tunnel", "--tunnel-id", o.TunnelID)
	if st := e.get(o.TunnelID); st.Status != "CLOSED" {
		t.Errorf("after close-tunnel: %+v", st)
	}
	c.ok(nil, "close-tunnel", "--tunnel-id", o.TunnelID, "--delete")
	if peers := e.peers.take(); len(peers) != 3 { // rotate DESTINATION, two closes
		t.Errorf("peer calls %+v", peers)
	}

	// Errors, as the CLI reports them. Independent: run them in parallel.
	t.Run("errors", func(t *testing.T) {
		cases := []struct {
			name, akid, secret, code string
			args                     []string
		}{
			{"deleted tunnel", testAKID, testSecret, CodeResourceNotFound, []string{"describe-tunnel", "--tunnel-id", o.TunnelID}},
			{"unknown tunnel", testAKID, testSecret, CodeResourceNotFound, []string{"close-tunnel", "--tunnel-id", "00000000-0000-4000-8000-000000000000"}},
			{"wrong secret", testAKID, "not-the-secret", "InvalidSignatureException", []string{"list-tunnels"}},
			{"unknown key", "AKIDNOBODY", testSecret, "UnrecognizedClientException", []string{"list-tunnels"}},
			{"lifetime too long", testAKID, testSecret, CodeValidation, []string{"open-tunnel", "--timeout-config", "maxLifetimeTimeoutMinutes=721"}},
			{"bad thing name", testAKID, testSecret, CodeValidation, []string{"open-tunnel", "--destination-config", `{"thingName":"bad thing","services":["SSH"]}`}},
			{"too many services", testAKID, testSecret, CodeValidation, []string{"open-tunnel", "--destination-config", "services=A,B,C,D"}},
			{"rotate closed", testAKID, testSecret, CodeValidation, []string{"rotate-tunnel-access-token", "--tunnel-id", o2.TunnelID, "--client-mode", "ALL"}},
		}
		c.ok(nil, "close-tunnel", "--tunnel-id", o2.TunnelID)
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				cc := &cli{t: t, e: c.e, home: c.home, path: c.path, v1: c.v1}
				cc.fails(tc.akid, tc.secret, tc.code, tc.args...)
			})
		}
	})
}

// TestFindAWSCLI: the CLI is looked up on PATH, and one that does not
// answer --version (a broken pyenv shim) is passed over for /usr/bin/aws.
func TestFindAWSCLI(t *testing.T) {
	dir := t.TempDir()
	script := func(body string) {
		if err := os.WriteFile(filepath.Join(dir, "aws"), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+":/usr/bin:/bin")
	script(`echo "aws-cli/9.9.9 Python/3 test"`)
	if path, version, tried := findAWSCLI(t.TempDir()); path != filepath.Join(dir, "aws") || version != "aws-cli/9.9.9 Python/3 test" {
		t.Errorf("findAWSCLI = %q %q (%v), want the aws on PATH", path, version, tried)
	}
	script(`echo "pyenv: aws: command not found" >&2; exit 127`)
	path, _, tried := findAWSCLI(t.TempDir())
	if path == filepath.Join(dir, "aws") {
		t.Errorf("findAWSCLI chose a CLI that does not run")
	}
	if len(tried) == 0 || !strings.Contains(tried[0], "command not found") {
		t.Errorf("tried = %q, want the broken one's output", tried)
	}
	if _, err := os.Stat(awsCLIFallback); err == nil && path != awsCLIFallback {
		t.Errorf("findAWSCLI = %q, want %s after a broken one on PATH", path, awsCLIFallback)
	}
}
