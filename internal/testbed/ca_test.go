package testbed

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"testing"
)

func TestCALeaf(t *testing.T) {
	ca := NewCA(t)
	leaf := ca.Leaf(t, "localhost", "127.0.0.1", "::1", "mail.example.test")
	tests := []struct {
		name string
		ok   bool
	}{
		{"localhost", true},
		{"127.0.0.1", true},
		{"::1", true},
		{"mail.example.test", true},
		{"127.0.0.2", false},
		{"other.example.test", false},
	}
	for _, tt := range tests {
		_, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: tt.name, Roots: ca.Pool()})
		if (err == nil) != tt.ok {
			t.Errorf("Verify(%s) = %v, want ok %v", tt.name, err, tt.ok)
		}
	}
	// A leaf from another CA must not verify against this pool.
	other := NewCA(t).Leaf(t, "localhost")
	if _, err := other.Leaf.Verify(x509.VerifyOptions{DNSName: "localhost", Roots: ca.Pool()}); err == nil {
		t.Errorf("Verify(leaf of another CA) = nil, want an error")
	}
}

func TestCAWritePEM(t *testing.T) {
	ca := NewCA(t)
	dir := t.TempDir()
	caFile := ca.WritePEM(t, dir)
	certFile, keyFile := WriteLeafPEM(t, dir, ca.Leaf(t, "localhost"))

	data, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("WritePEM wrote %q, want a CERTIFICATE block", data)
	}
	root, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !root.Equal(ca.Cert) {
		t.Errorf("WritePEM round trip = %v, want the CA certificate", err)
	}

	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatalf("LoadX509KeyPair(WriteLeafPEM) = %v", err)
	}
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{DNSName: "localhost", Roots: ca.Pool()}); err != nil {
		t.Errorf("Verify(loaded leaf) = %v, want nil", err)
	}
	fi, err := os.Stat(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode = %v, want 0600", perm)
	}
}
