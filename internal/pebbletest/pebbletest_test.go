package pebbletest

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"
)

// TestStartStop checks the harness itself: the directory answers over HTTPS
// trusted through CAFile, Stop makes it unreachable, Start brings it back with
// a new issuing root.
func TestStartStop(t *testing.T) {
	p := Start(t, Options{})
	if err := getDirectory(t, p); err != nil {
		t.Fatalf("GET %s after Start: %v", p.DirectoryURL, err)
	}
	before := p.Roots(t)

	p.Stop()
	if err := getDirectory(t, p); err == nil {
		t.Fatalf("GET %s after Stop succeeded, want an error", p.DirectoryURL)
	}

	p.Start()
	if err := getDirectory(t, p); err != nil {
		t.Fatalf("GET %s after restart: %v", p.DirectoryURL, err)
	}
	if after := p.Roots(t); after.Equal(before) {
		t.Errorf("Roots after restart = the same root, want a new one")
	}
}

// getDirectory fetches the directory as an ACME client would: trusting only
// CAFile.
func getDirectory(t *testing.T, p *Pebble) error {
	t.Helper()
	pem, err := os.ReadFile(p.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatalf("%s holds no PEM certificate", p.CAFile)
	}
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
	}}
	resp, err := c.Get(p.DirectoryURL)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}
