// Package certs makes the X.509 material a self-hosted deployment needs: a
// local certificate authority, server certificates for development
// (tunneld --tls-self-signed) and client certificates for devices. Keys are
// ECDSA P-256, written with mode 0600.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CA is a certificate authority that can issue certificates.
type CA struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
}

// NewCA creates a CA valid for ten years.
func NewCA(commonName string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"sectun"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: pemBlock("CERTIFICATE", der)}, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// Issued is a certificate and its key, PEM encoded.
type Issued struct {
	CertPEM, KeyPEM []byte
}

// TLSCertificate returns the pair as a tls.Certificate.
func (i *Issued) TLSCertificate() (tls.Certificate, error) {
	return tls.X509KeyPair(i.CertPEM, i.KeyPEM)
}

// IssueServer issues a server certificate for the given DNS names and IP
// addresses, valid for validity.
func (ca *CA) IssueServer(hosts []string, validity time.Duration) (*Issued, error) {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: firstOr(hosts, "localhost")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return ca.issue(tmpl, validity)
}

// IssueClient issues a client certificate whose CommonName is name (a
// device's thing name).
func (ca *CA) IssueClient(name string, validity time.Duration) (*Issued, error) {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return ca.issue(tmpl, validity)
}

func (ca *CA) issue(tmpl *x509.Certificate, validity time.Duration) (*Issued, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial()
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(validity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &Issued{CertPEM: pemBlock("CERTIFICATE", der), KeyPEM: pemBlock("EC PRIVATE KEY", keyDER)}, nil
}

func firstOr(s []string, def string) string {
	if len(s) > 0 {
		return s[0]
	}
	return def
}

// Save writes the CA certificate and key to dir as ca.pem and ca-key.pem.
func (ca *CA) Save(dir string) error {
	keyDER, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), ca.CertPEM, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "ca-key.pem"), pemBlock("EC PRIVATE KEY", keyDER), 0o600)
}

// LoadCA reads a CA saved by Save.
func LoadCA(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		return nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, fmt.Errorf("certs: %s: no PEM data", dir)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, err
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: certPEM}, nil
}

// LoadOrCreateCA loads the CA in dir, creating it first if dir holds none.
// Creation is safe against another process creating the same CA at the
// same moment (tunneld starting while `tunneld device create` runs): the
// CA is written to a fresh directory that is renamed into place, and the
// loser of the rename loads the winner's CA.
func LoadOrCreateCA(dir, commonName string) (ca *CA, created bool, err error) {
	ca, err = LoadCA(dir)
	if err == nil {
		return ca, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	if ca, err = NewCA(commonName); err != nil {
		return nil, false, err
	}
	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, false, err
	}
	tmp, err := os.MkdirTemp(parent, ".ca-*")
	if err != nil {
		return nil, false, err
	}
	if err := ca.Save(tmp); err != nil {
		os.RemoveAll(tmp)
		return nil, false, err
	}
	// os.Rename refuses an existing directory, even an empty one: remove
	// an empty one first (os.Remove fails on a non-empty one, so this
	// never removes another process's CA).
	if fi, err := os.Lstat(dir); err == nil && fi.IsDir() {
		os.Remove(dir)
	}
	if err := os.Rename(tmp, dir); err != nil {
		// dir exists: another process's CA, or other files.
		os.RemoveAll(tmp)
		if theirs, lerr := LoadCA(dir); lerr == nil {
			return theirs, false, nil
		}
		return ca, true, ca.Save(dir)
	}
	return ca, true, nil
}

// DevServer makes sure dir holds a development CA and a server certificate
// (server.pem, server-key.pem) for hosts, reusing what is there while it is
// valid for another day and covers the hosts. It returns the paths.
func DevServer(dir string, hosts []string) (caPath, certPath, keyPath string, err error) {
	ca, _, err := LoadOrCreateCA(dir, "sectun development CA")
	if err != nil {
		return "", "", "", err
	}
	caPath = filepath.Join(dir, "ca.pem")
	certPath = filepath.Join(dir, "server.pem")
	keyPath = filepath.Join(dir, "server-key.pem")
	if pair, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil && covers(pair, ca, hosts) {
		return caPath, certPath, keyPath, nil
	}
	iss, err := ca.IssueServer(hosts, 397*24*time.Hour)
	if err != nil {
		return "", "", "", err
	}
	if err := os.WriteFile(certPath, iss.CertPEM, 0o644); err != nil {
		return "", "", "", err
	}
	return caPath, certPath, keyPath, os.WriteFile(keyPath, iss.KeyPEM, 0o600)
}

func covers(pair tls.Certificate, ca *CA, hosts []string) bool {
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil || time.Until(leaf.NotAfter) < 24*time.Hour || leaf.CheckSignatureFrom(ca.Cert) != nil {
		return false
	}
	for _, h := range hosts {
		if leaf.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}

// PoolFromPEM returns a certificate pool holding the PEM certificates.
func PoolFromPEM(pemData []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		return nil, errors.New("certs: no certificate found in PEM data")
	}
	return pool, nil
}
