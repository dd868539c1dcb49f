package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// referenceEnv names the reference local proxy (AWS's C++ localproxy);
// by default ../shared/peers/localproxy, where CI keeps it.
const referenceEnv = "SECTUN_REFERENCE_LOCALPROXY"

// referenceBinary returns the reference local proxy, or "" when absent.
func referenceBinary() string {
	p := os.Getenv(referenceEnv)
	if p == "" {
		p = filepath.Join("..", "shared", "peers", "localproxy")
	}
	if fi, err := os.Stat(p); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return ""
	}
	if _, err := exec.LookPath("openssl"); err != nil {
		return ""
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return ""
	}
	return abs
}

var (
	refServiceIDs = regexp.MustCompile(`Extracting service Ids from control message`)
	refListening  = regexp.MustCompile(`Listening for new connection on port \d+`)
)

// startReferencePair connects two reference local proxies to tunneld (TLS
// only: the reference always speaks it) on a tunnel of their own, the
// destination forwarding to dstAddr, and returns the source's listening
// address.
func startReferencePair(ctx context.Context, ps *procs, bin, workDir string, d *tunneld, dstAddr string) (string, error) {
	caDir := filepath.Join(workDir, "reference-ca")
	if err := os.MkdirAll(caDir, 0o700); err != nil {
		return "", err
	}
	pem, err := os.ReadFile(d.caPath)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(caDir, "ca.pem"), pem, 0o600); err != nil {
		return "", err
	}
	// The reference's -c wants a directory of hashed CA certificates.
	if out, err := exec.CommandContext(ctx, "openssl", "rehash", caDir).CombinedOutput(); err != nil {
		return "", fmt.Errorf("openssl rehash: %v: %s", err, out)
	}
	tun, err := d.openTunnel(ctx, "bench-reference", "A")
	if err != nil {
		return "", err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	common := []string{"-e", strings.TrimPrefix(d.url, "https://"), "-c", caDir, "-v", "5"}
	dst, err := startProc("reference-dst", bin, []string{"AWSIOT_TUNNEL_ACCESS_TOKEN=" + tun.DestinationAccessToken},
		append([]string{"-d", "A=" + dstAddr}, common...)...)
	if err != nil {
		return "", err
	}
	ps.add(dst)
	if _, err := dst.waitLine(ctx, refServiceIDs, startTimeout); err != nil {
		return "", err
	}
	src, err := startProc("reference-src", bin, []string{"AWSIOT_TUNNEL_ACCESS_TOKEN=" + tun.SourceAccessToken},
		append([]string{"-s", "A=" + strconv.Itoa(port)}, common...)...)
	if err != nil {
		return "", err
	}
	ps.add(src)
	if _, err := src.waitLine(ctx, refListening, startTimeout); err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}
