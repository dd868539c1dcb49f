package operator

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// ErrNoCredentials: no access key was found in the environment or the
// shared credentials file.
var ErrNoCredentials = errors.New("operator: no AWS credentials")

// Env looks up an environment variable (os.Getenv in production).
type Env func(string) string

// LoadCredentials finds access keys the way the AWS CLI does, in order:
// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) from
// the environment; then the profile (profile, else AWS_PROFILE, else
// "default") of the shared credentials file (AWS_SHARED_CREDENTIALS_FILE,
// else ~/.aws/credentials). The error wraps ErrNoCredentials and says
// where it looked; it never contains a secret.
func LoadCredentials(profile string, getenv Env) (aws.Credentials, error) {
	if id, secret := getenv("AWS_ACCESS_KEY_ID"), getenv("AWS_SECRET_ACCESS_KEY"); id != "" && secret != "" && profile == "" {
		return aws.Credentials{AccessKeyID: id, SecretAccessKey: secret, SessionToken: getenv("AWS_SESSION_TOKEN"), Source: "environment"}, nil
	}
	if profile == "" {
		profile = getenv("AWS_PROFILE")
	}
	if profile == "" {
		profile = "default"
	}
	path := getenv("AWS_SHARED_CREDENTIALS_FILE")
	if path == "" {
		home := getenv("HOME")
		if home == "" {
			home, _ = os.UserHomeDir()
		}
		path = filepath.Join(home, ".aws", "credentials")
	}
	f, err := os.Open(path)
	if err != nil {
		return aws.Credentials{}, fmt.Errorf("%w: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set and %w (set AWS_SHARED_CREDENTIALS_FILE, e.g. to tunneld's <data-dir>/aws-credentials)", ErrNoCredentials, err)
	}
	defer f.Close()
	c, err := parseCredentials(f, profile)
	if err != nil {
		return aws.Credentials{}, fmt.Errorf("%s: %w", path, err)
	}
	c.Source = path
	return c, nil
}

// parseCredentials reads one profile of an AWS shared credentials file
// (INI: [profile] sections of key = value lines, # and ; comments).
func parseCredentials(r io.Reader, profile string) (aws.Credentials, error) {
	sc := bufio.NewScanner(io.LimitReader(r, 1<<20))
	var c aws.Credentials
	section, found := "", false
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if line[0] == '[' && line[len(line)-1] == ']' {
			section = strings.TrimSpace(strings.TrimPrefix(line[1:len(line)-1], "profile "))
			if section == profile {
				found = true
			}
			continue
		}
		if section != profile {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "aws_access_key_id":
			c.AccessKeyID = strings.TrimSpace(v)
		case "aws_secret_access_key":
			c.SecretAccessKey = strings.TrimSpace(v)
		case "aws_session_token":
			c.SessionToken = strings.TrimSpace(v)
		}
	}
	if err := sc.Err(); err != nil {
		return c, err
	}
	if !found {
		return c, fmt.Errorf("%w: no [%s] profile", ErrNoCredentials, profile)
	}
	if c.AccessKeyID == "" || c.SecretAccessKey == "" {
		return c, fmt.Errorf("%w: profile [%s] lacks aws_access_key_id or aws_secret_access_key", ErrNoCredentials, profile)
	}
	return c, nil
}

// Region returns the region to sign for: flag, else AWS_REGION, else
// AWS_DEFAULT_REGION, else "us-east-1" (tunneld accepts any).
func Region(flag string, getenv Env) string {
	for _, r := range []string{flag, getenv("AWS_REGION"), getenv("AWS_DEFAULT_REGION")} {
		if r != "" {
			return r
		}
	}
	return "us-east-1"
}
