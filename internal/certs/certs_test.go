package certs

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestDevServerReuseAndVerify(t *testing.T) {
	dir := t.TempDir()
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	caPath, certPath, keyPath, err := DevServer(dir, hosts)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(certPath)
	if _, _, _, err := DevServer(dir, hosts); err != nil {
		t.Fatal(err)
	}
	second, _ := os.ReadFile(certPath)
	if string(first) != string(second) {
		t.Fatal("valid certificate was not reused")
	}
	caPEM, _ := os.ReadFile(caPath)
	pool, err := PoolFromPEM(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	for _, h := range hosts {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: h}); err != nil {
			t.Errorf("verify for %s: %v", h, err)
		}
	}
	if st, _ := os.Stat(keyPath); st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", st.Mode().Perm())
	}
	// A new host forces a new certificate from the same CA.
	if _, _, _, err := DevServer(dir, append(hosts, "example.test")); err != nil {
		t.Fatal(err)
	}
	third, _ := os.ReadFile(certPath)
	if string(third) == string(second) {
		t.Fatal("certificate not reissued for a new host")
	}
}

func TestClientCertificate(t *testing.T) {
	ca, err := NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	iss, err := ca.IssueClient("thing-1", 24*60*60*1e9)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := iss.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != "thing-1" {
		t.Fatalf("CN %q", leaf.Subject.CommonName)
	}
}

// TestLoadOrCreateCAConcurrent: processes creating the CA at once (tunneld
// starting while `tunneld device create` runs) end up with one CA.
func TestLoadOrCreateCAConcurrent(t *testing.T) {
	for _, existing := range []bool{false, true} {
		parent := t.TempDir()
		dir := filepath.Join(parent, "devices")
		if existing {
			if err := os.Mkdir(dir, 0o700); err != nil { // an empty directory is replaced
				t.Fatal(err)
			}
		}
		const n = 8
		pems := make([]string, n)
		created := make([]bool, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				ca, c, err := LoadOrCreateCA(dir, "device CA")
				if err != nil {
					t.Error(err)
					return
				}
				pems[i], created[i] = string(ca.CertPEM), c
			})
		}
		wg.Wait()
		onDisk, err := LoadCA(dir)
		if err != nil {
			t.Fatal(err)
		}
		winners := 0
		for i := range n {
			if pems[i] != string(onDisk.CertPEM) {
				t.Errorf("caller %d got another CA than the one on disk", i)
			}
			if created[i] {
				winners++
			}
		}
		if winners != 1 {
			t.Errorf("%d callers created the CA, want 1", winners)
		}
		left, _ := filepath.Glob(filepath.Join(parent, ".ca-*"))
		if len(left) != 0 {
			t.Errorf("temporary directories left: %v", left)
		}
		if st, _ := os.Stat(filepath.Join(dir, "ca-key.pem")); st == nil || st.Mode().Perm() != 0o600 {
			t.Errorf("CA key mode: %v", st)
		}
	}
}
