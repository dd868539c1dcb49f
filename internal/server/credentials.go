package server

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// loadCredentialFiles reads access keys from files in the AWS shared
// credentials format (every profile's aws_access_key_id and
// aws_secret_access_key).
func loadCredentialFiles(paths []string) (map[string]string, error) {
	creds := map[string]string{}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("credentials file: %w", err)
		}
		err = parseCredentials(f, creds)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("credentials file %s: %w", p, err)
		}
	}
	return creds, nil
}

// parseCredentials reads one AWS shared credentials file into creds.
func parseCredentials(r io.Reader, creds map[string]string) error {
	sc := bufio.NewScanner(r)
	var id, secret, section string
	flush := func() error {
		switch {
		case id == "" && secret == "":
		case id == "" || secret == "":
			return fmt.Errorf("profile [%s] needs both aws_access_key_id and aws_secret_access_key", section)
		default:
			creds[id] = secret
		}
		id, secret = "", ""
		return nil
	}
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		switch {
		case s == "" || s[0] == '#' || s[0] == ';':
		case s[0] == '[':
			if err := flush(); err != nil {
				return err
			}
			section = strings.Trim(s, "[]")
		default:
			k, v, ok := strings.Cut(s, "=")
			if !ok {
				return fmt.Errorf("line %d: want key = value", line)
			}
			switch strings.TrimSpace(k) {
			case "aws_access_key_id":
				id = strings.TrimSpace(v)
			case "aws_secret_access_key":
				secret = strings.TrimSpace(v)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	if len(creds) == 0 {
		return errors.New("no access keys found")
	}
	return nil
}

// ensureCredentialsFile creates path with a fresh access key in the AWS
// shared credentials format if it does not exist, so the AWS CLI can use it
// through AWS_SHARED_CREDENTIALS_FILE.
func ensureCredentialsFile(path string) (created bool, err error) {
	if _, err := os.Stat(path); err == nil {
		return false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	id, secret := newAccessKey()
	content := fmt.Sprintf("# Access key for this tunneld's management API (made at first start).\n[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", id, secret)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return false, err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return false, err
	}
	return true, f.Close()
}

func newAccessKey() (id, secret string) {
	const alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
	var b [16]byte
	rand.Read(b[:])
	idb := []byte("STUN")
	for _, c := range b {
		idb = append(idb, alnum[int(c)%len(alnum)])
	}
	var s [30]byte
	rand.Read(s[:])
	return string(idb), base64.StdEncoding.EncodeToString(s[:])
}
