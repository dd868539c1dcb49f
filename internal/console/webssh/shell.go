package webssh

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"golang.org/x/crypto/ssh"
)

// SSHConfig is how to sign in.
type SSHConfig struct {
	User string
	// Password signs in by password (and keyboard-interactive); with a
	// PrivateKey it is tried after the key.
	Password string
	// PrivateKey is a PEM or OpenSSH private key; Passphrase decrypts it.
	PrivateKey []byte
	Passphrase string
	// HostKey decides whether to trust the server's host key, given its
	// type and SHA-256 fingerprint (as ssh-keygen -l prints it); it may
	// block until the user answers. nil refuses every key.
	HostKey func(keyType, fingerprint string) bool
	// Term, Cols and Rows describe the terminal (default xterm-256color,
	// 80x24).
	Term       string
	Cols, Rows int
}

// ErrHostKeyRejected: the user did not trust the host key.
var ErrHostKeyRejected = errors.New("webssh: host key not trusted")

// Shell is an interactive SSH session.
type Shell struct {
	client *ssh.Client
	sess   *ssh.Session
	stdin  io.WriteCloser
	done   chan struct{}
	err    error
	once   sync.Once
	// HostKeyFingerprint is the SHA-256 fingerprint of the server's key.
	HostKeyFingerprint string
}

// Signers parses a private key for SSHConfig, to check it before
// connecting.
func Signers(key []byte, passphrase string) (ssh.Signer, error) {
	s, err := ssh.ParsePrivateKey(key)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		if passphrase == "" {
			return nil, errors.New("the private key is encrypted: give its passphrase")
		}
		s, err = ssh.ParsePrivateKeyWithPassphrase(key, []byte(passphrase))
	}
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	return s, nil
}

// StartShell signs in over conn, asks for a pty and starts a shell whose
// output goes to out (from a goroutine of the SSH client).
func StartShell(conn net.Conn, cfg SSHConfig, out io.Writer) (*Shell, error) {
	var auth []ssh.AuthMethod
	if len(cfg.PrivateKey) > 0 {
		s, err := Signers(cfg.PrivateKey, cfg.Passphrase)
		if err != nil {
			return nil, err
		}
		auth = append(auth, ssh.PublicKeys(s))
	}
	if cfg.Password != "" {
		pw := cfg.Password
		auth = append(auth, ssh.Password(pw), ssh.KeyboardInteractive(func(_, _ string, qs []string, _ []bool) ([]string, error) {
			a := make([]string, len(qs))
			for i := range a {
				a[i] = pw
			}
			return a, nil
		}))
	}
	if len(auth) == 0 {
		return nil, errors.New("give a password or a private key")
	}
	sh := &Shell{done: make(chan struct{})}
	rejected := false
	cc := &ssh.ClientConfig{
		User: cfg.User,
		Auth: auth,
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			sh.HostKeyFingerprint = ssh.FingerprintSHA256(key)
			if cfg.HostKey == nil || !cfg.HostKey(key.Type(), sh.HostKeyFingerprint) {
				rejected = true
				return ErrHostKeyRejected
			}
			return nil
		},
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, "device", cc)
	if err != nil {
		if rejected {
			return nil, ErrHostKeyRejected
		}
		return nil, fmt.Errorf("SSH: %w", err)
	}
	sh.client = ssh.NewClient(c, chans, reqs)
	if sh.sess, err = sh.client.NewSession(); err != nil {
		sh.client.Close()
		return nil, fmt.Errorf("SSH session: %w", err)
	}
	term, cols, rows := cfg.Term, cfg.Cols, cfg.Rows
	if term == "" {
		term = "xterm-256color"
	}
	if cols <= 0 || rows <= 0 {
		cols, rows = 80, 24
	}
	sh.sess.Stdout, sh.sess.Stderr = out, out
	if sh.stdin, err = sh.sess.StdinPipe(); err == nil {
		if err = sh.sess.RequestPty(term, rows, cols, ssh.TerminalModes{ssh.ECHO: 1}); err == nil {
			err = sh.sess.Shell()
		}
	}
	if err != nil {
		sh.client.Close()
		return nil, fmt.Errorf("SSH shell: %w", err)
	}
	go func() {
		sh.err = sh.sess.Wait()
		close(sh.done)
	}()
	return sh, nil
}

// Write types p into the shell.
func (s *Shell) Write(p []byte) (int, error) { return s.stdin.Write(p) }

// Resize tells the server the terminal's new size.
func (s *Shell) Resize(cols, rows int) error { return s.sess.WindowChange(rows, cols) }

// Done is closed when the shell has ended; Err then says how.
func (s *Shell) Done() <-chan struct{} { return s.done }

// Err is the shell's end: nil for an exit status 0.
func (s *Shell) Err() error { return s.err }

// Close ends the session.
func (s *Shell) Close() error {
	var err error
	s.once.Do(func() { err = s.client.Close() })
	return err
}
