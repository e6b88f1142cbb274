package admin

import (
	"context"
	"crypto/tls"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/internal/testbed"
)

// serial is the serial number of the certificate the server at addr serves.
func servedSerial(t *testing.T, addr string, cfg *tls.Config) string {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatalf("TLS to %s: %v", addr, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// writePair writes cert to dir and moves the files' times to at, so a
// replacement within the file system's time granularity is still seen.
func writePair(t *testing.T, dir string, cert tls.Certificate, at time.Time) (string, string) {
	t.Helper()
	certFile, keyFile := testbed.WriteLeafPEM(t, dir, cert)
	for _, f := range []string{certFile, keyFile} {
		if err := os.Chtimes(f, at, at); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

// TestTLSFiles: admin.tls = "files" serves the pair over HTTPS to a client
// that verifies it, picks up a replaced pair at the next handshake, keeps the
// previous one when the new pair is broken, and names admin.cert_file when
// the pair cannot be loaded at start.
func TestTLSFiles(t *testing.T) {
	ca := testbed.NewCA(t)
	dir := t.TempDir()
	caFile := ca.WritePEM(t, t.TempDir())
	first := ca.Leaf(t, "admin.test")
	certFile, keyFile := writePair(t, dir, first, time.Now().Add(-time.Hour))
	logs := &testbed.LogBuffer{}
	get, err := FileCertificate(certFile, keyFile, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, func(o *Options) { o.TLS = &tls.Config{GetCertificate: get} })
	addr := f.srv.Addr().String()

	ctls, err := ClientTLS(caFile, "admin.test")
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClientTLS(addr, testToken, ctls)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Bans(context.Background()); err != nil {
		t.Fatalf("Bans() over https = %v", err)
	}
	if want := first.Leaf.SerialNumber.String(); servedSerial(t, addr, ctls) != want {
		t.Fatalf("served serial is not the first pair's %s", want)
	}

	second := ca.Leaf(t, "admin.test")
	writePair(t, dir, second, time.Now())
	if got, want := servedSerial(t, addr, ctls), second.Leaf.SerialNumber.String(); got != want {
		t.Errorf("after replacing the files: serial %s, want the new pair's %s", got, want)
	}

	if err := os.WriteFile(keyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(keyFile, time.Now().Add(time.Hour), time.Now().Add(time.Hour))
	if got, want := servedSerial(t, addr, ctls), second.Leaf.SerialNumber.String(); got != want {
		t.Errorf("after breaking the key: serial %s, want the previous pair's %s", got, want)
	}
	if !strings.Contains(logs.String(), "still serving the previous one") {
		t.Errorf("no log of the broken pair:\n%s", logs.String())
	}

	if _, err := FileCertificate(filepath.Join(dir, "missing.pem"), keyFile, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "admin.cert_file") {
		t.Errorf("FileCertificate(missing) = %v, want an error naming admin.cert_file", err)
	}
	if _, err := ClientTLS(filepath.Join(dir, "missing.pem"), ""); err == nil || !strings.Contains(err.Error(), "admin.ca_file") {
		t.Errorf("ClientTLS(missing) = %v, want an error naming admin.ca_file", err)
	}
	// Plain HTTP to the TLS port is not answered by the API.
	if code, body := send(t, addr, request{method: "GET", path: "/api/v1/bans", auth: "Bearer " + testToken}); code != 400 || strings.Contains(body, "[") {
		t.Errorf("plain http GET /api/v1/bans on the TLS port = %d %s, want net/http's 400", code, body)
	}
}

// TestClearTokenWarning: a token on a non-loopback address without TLS is
// warned about at start (not refused: a config that ran before must still
// start); with TLS, or on loopback, there is no warning.
func TestClearTokenWarning(t *testing.T) {
	ca := testbed.NewCA(t)
	leaf := ca.Leaf(t, "127.0.0.1")
	tests := []struct {
		address string
		tls     *tls.Config
		warn    bool
	}{
		{"0.0.0.0:0", nil, true},
		{"0.0.0.0:0", &tls.Config{Certificates: []tls.Certificate{leaf}}, false},
		{"127.0.0.1:0", nil, false},
	}
	for _, tt := range tests {
		logs := &testbed.LogBuffer{}
		newFixture(t, func(o *Options) {
			o.Address, o.TLS = tt.address, tt.tls
			o.Logger = slog.New(slog.NewTextHandler(logs, nil))
		})
		if got := strings.Contains(logs.String(), "crosses the network in clear"); got != tt.warn {
			t.Errorf("address %s, TLS %v: warning %v, want %v\n%s", tt.address, tt.tls != nil, got, tt.warn, logs.String())
		}
	}
}
