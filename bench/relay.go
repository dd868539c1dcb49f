package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/signal"
	"regexp"
	"sync"
	"syscall"
	"time"
)

// relayMain is the hidden "relay" subcommand: one hop of the baseline
// chain. It forwards every connection accepted on 127.0.0.1:0 to -target
// with io.Copy in both directions (half-closing as each side ends) until
// SIGTERM, and prints "relay listening on ADDR" once it accepts.
func relayMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	target := fs.String("target", "", "address to forward to")
	tlsIn := fs.Bool("tls-in", false, "accept TLS (a self-signed certificate made at start)")
	tlsOut := fs.Bool("tls-out", false, "dial the target with TLS (not verified)")
	if err := fs.Parse(args); err != nil || *target == "" {
		fmt.Fprintln(stderr, "usage: bench relay [-tls-in] [-tls-out] -target HOST:PORT")
		return 2
	}
	var ln net.Listener
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(stderr, "relay:", err)
		return 1
	}
	if *tlsIn {
		cert, err := selfSigned()
		if err != nil {
			fmt.Fprintln(stderr, "relay:", err)
			return 1
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
	}
	var outTLS *tls.Config
	if *tlsOut {
		outTLS = &tls.Config{InsecureSkipVerify: true}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	fmt.Fprintln(stdout, "relay listening on", ln.Addr())
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	for {
		c, err := ln.Accept()
		if err != nil {
			break
		}
		mu.Lock()
		open[c] = true
		mu.Unlock()
		wg.Go(func() {
			forward(c, *target, outTLS)
			mu.Lock()
			delete(open, c)
			mu.Unlock()
		})
	}
	mu.Lock()
	for c := range open {
		c.Close()
	}
	mu.Unlock()
	wg.Wait()
	return 0
}

// forward copies between c and a new connection to target (over TLS if
// tlsOut is set). On Linux io.Copy between two TCP sockets uses splice(2):
// this is the plainest relay Go offers; with TLS on a side each direction
// decrypts and re-encrypts through a 32 KiB buffer, the cryptographic
// work of a hop of sectun's TLS path.
func forward(c net.Conn, target string, tlsOut *tls.Config) {
	defer c.Close()
	var u net.Conn
	var err error
	if tlsOut != nil {
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: tlsOut}
		u, err = d.Dial("tcp", target)
	} else {
		u, err = net.DialTimeout("tcp", target, 10*time.Second)
	}
	if err != nil {
		return
	}
	defer u.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(u, c)
		closeWrite(u)
		close(done)
	}()
	io.Copy(c, u)
	closeWrite(c)
	<-done
}

// closeWrite half-closes c: a TCP FIN, or a TLS close_notify.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// selfSigned makes an ECDSA P-256 certificate for 127.0.0.1.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "bench relay"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

var relayLine = regexp.MustCompile(`relay listening on (\S+)`)

// startRelayChain starts hops relay processes chained in front of target
// and returns them, first hop first, and the first hop's address. With
// tlsLegs the links between hops are TLS, each hop terminating and
// re-encrypting, as sectun's TLS path does (client and target links
// plain, as sectun's are).
func startRelayChain(ctx context.Context, ps *procs, target string, hops int, tlsLegs bool) ([]*proc, string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	chain := make([]*proc, hops)
	next := target
	for i := hops - 1; i >= 0; i-- {
		args := []string{"relay", "-target", next}
		name := fmt.Sprintf("relay%d", i+1)
		if tlsLegs {
			name = "tls-" + name
			if i > 0 {
				args = append(args, "-tls-in")
			}
			if i < hops-1 {
				args = append(args, "-tls-out")
			}
		}
		p, err := startProc(name, exe, nil, args...)
		if err != nil {
			return nil, "", err
		}
		ps.add(p)
		m, err := p.waitLine(ctx, relayLine, 30*time.Second)
		if err != nil {
			return nil, "", err
		}
		chain[i] = p
		next = m[1]
	}
	return chain, next, nil
}
