package acme

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
)

func TestSelfSigned(t *testing.T) {
	log, _ := newLogger(t)
	cfg := baseConfig(t, conf.CertSelfSigned, "mail.example.test")
	cfg.TLS.Names = []string{"imap.example.test", "127.0.0.1"}
	m, err := New(cfg, Options{Logger: log})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	startManager(t, m)
	if !m.Ready() {
		t.Fatalf("Ready() = false, want true")
	}
	addr := serve(t, m)

	tests := []struct {
		sni, verifyAs string
	}{
		{"mail.example.test", "mail.example.test"},
		{"imap.example.test", "imap.example.test"},
		{"", "mail.example.test"}, // no SNI: the hostname's certificate
		{"", "127.0.0.1"},         // clients connecting by address check the IP SAN
	}
	for _, tc := range tests {
		leaf := peer(t, addr, &tls.Config{ServerName: tc.sni, InsecureSkipVerify: true})
		roots := x509.NewCertPool()
		roots.AddCert(leaf)
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: tc.verifyAs}); err != nil {
			t.Errorf("certificate served for SNI %q: Verify(%s) = %v, want nil", tc.sni, tc.verifyAs, err)
		}
		if leaf.PublicKeyAlgorithm != x509.ECDSA {
			t.Errorf("key algorithm = %s, want ECDSA", leaf.PublicKeyAlgorithm)
		}
	}

	c, err := dial(t, addr, &tls.Config{ServerName: "mail.example.test", InsecureSkipVerify: true, NextProtos: []string{"imap"}})
	if err != nil {
		t.Fatalf("handshake offering ALPN imap: %v", err)
	}
	if got := c.ConnectionState().NegotiatedProtocol; got != "imap" {
		t.Errorf("NegotiatedProtocol = %q, want imap", got)
	}
	echo(t, c, "a1 CAPABILITY\r\n")

	infos := m.Certificates()
	if len(infos) != 1 || infos[0].Source != "self-signed" {
		t.Fatalf("Certificates() = %+v, want one self-signed", infos)
	}
	want := []string{"mail.example.test", "imap.example.test", "127.0.0.1"}
	if !slices.Equal(infos[0].Names, want) {
		t.Errorf("Certificates()[0].Names = %v, want %v", infos[0].Names, want)
	}
}

// TestSelfSignedUpdate: new names in a reloaded config reach new handshakes.
func TestSelfSignedUpdate(t *testing.T) {
	log, _ := newLogger(t)
	cfg := baseConfig(t, conf.CertSelfSigned, "mail.example.test")
	m, err := New(cfg, Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, m)
	cfg2 := *cfg
	cfg2.TLS.Names = []string{"new.example.test"}
	if err := m.Update(&cfg2); err != nil {
		t.Fatalf("Update(names += new.example.test) = %v, want nil", err)
	}
	leaf := peer(t, addr, &tls.Config{ServerName: "new.example.test", InsecureSkipVerify: true})
	if err := leaf.VerifyHostname("new.example.test"); err != nil {
		t.Errorf("after Update: VerifyHostname(new.example.test) = %v, want nil", err)
	}
}

func TestMinVersion(t *testing.T) {
	tests := []struct {
		min       string
		clientMax uint16
		ok        bool
	}{
		{"1.2", tls.VersionTLS12, true},
		{"1.3", tls.VersionTLS13, true},
		{"1.3", tls.VersionTLS12, false},
	}
	for _, tc := range tests {
		log, _ := newLogger(t)
		cfg := baseConfig(t, conf.CertSelfSigned, "localhost")
		cfg.TLS.MinVersion = tc.min
		m, err := New(cfg, Options{Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		addr := serve(t, m)
		_, err = dial(t, addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tc.clientMax})
		if (err == nil) != tc.ok {
			t.Errorf("min_version %s, client up to %s: handshake error = %v, want ok=%v",
				tc.min, tls.VersionName(tc.clientMax), err, tc.ok)
		}
	}
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		modify func(c *conf.Config)
		want   string // in the error
	}{
		{"unknown source", func(c *conf.Config) { c.TLS.Certificate = "magic" }, `tls.certificate "magic"`},
		{"bad min version", func(c *conf.Config) { c.TLS.MinVersion = "1.1" }, "tls.min_version"},
		{"files without paths", func(c *conf.Config) { c.TLS.Certificate = conf.CertFiles }, "tls.cert_file"},
		{"missing cert file", func(c *conf.Config) {
			c.TLS.Certificate, c.TLS.CertFile, c.TLS.KeyFile = conf.CertFiles, filepath.Join(dir, "none.pem"), garbage
		}, "none.pem"},
		{"garbage cert file", func(c *conf.Config) {
			c.TLS.Certificate, c.TLS.CertFile, c.TLS.KeyFile = conf.CertFiles, garbage, garbage
		}, "tls.cert_file " + garbage},
		{"acme without email", func(c *conf.Config) { c.TLS.Certificate = conf.CertACME }, "acme.email"},
		{"acme ca_root unreadable", func(c *conf.Config) {
			c.TLS.Certificate, c.ACME.Email, c.ACME.CARoot = conf.CertACME, "ops@example.test", filepath.Join(dir, "none.pem")
		}, "acme.ca_root"},
		{"acme ca_root not PEM", func(c *conf.Config) {
			c.TLS.Certificate, c.ACME.Email, c.ACME.CARoot = conf.CertACME, "ops@example.test", garbage
		}, "no PEM certificate"},
	}
	for _, tc := range tests {
		cfg := baseConfig(t, conf.CertSelfSigned, "mail.example.test")
		tc.modify(cfg)
		_, err := New(cfg, Options{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%s) = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

// filesEnv is a files-source Manager serving a pair written by a test CA.
type filesEnv struct {
	ca        *testbed.CA
	dir       string
	certFile  string
	keyFile   string
	cfg       *conf.Config
	m         *Manager
	logs      *logBuffer
	reg       *prometheus.Registry
	addr      string
	clientCfg *tls.Config
}

func newFilesEnv(t *testing.T) *filesEnv {
	t.Helper()
	e := &filesEnv{ca: testbed.NewCA(t), dir: t.TempDir(), reg: prometheus.NewRegistry()}
	e.certFile, e.keyFile = testbed.WriteLeafPEM(t, e.dir, e.ca.Leaf(t, "mail.example.test"))
	e.cfg = baseConfig(t, conf.CertFiles, "mail.example.test")
	e.cfg.TLS.CertFile, e.cfg.TLS.KeyFile = e.certFile, e.keyFile
	logger, logs := newLogger(t)
	e.logs = logs
	m, err := New(e.cfg, Options{Logger: logger, Registerer: e.reg, PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.m = m
	startManager(t, m)
	e.addr = serve(t, m)
	e.clientCfg = &tls.Config{ServerName: "mail.example.test", RootCAs: e.ca.Pool()}
	return e
}

func (e *filesEnv) serial(t *testing.T) string {
	t.Helper()
	return peer(t, e.addr, e.clientCfg).SerialNumber.String()
}

// replace writes a new pair over the served files.
func (e *filesEnv) replace(t *testing.T) string {
	t.Helper()
	leaf := e.ca.Leaf(t, "mail.example.test")
	dir := t.TempDir()
	certFile, keyFile := testbed.WriteLeafPEM(t, dir, leaf)
	copyFile(t, certFile, e.certFile)
	copyFile(t, keyFile, e.keyFile)
	return leaf.Leaf.SerialNumber.String()
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestFilesReplaced(t *testing.T) {
	e := newFilesEnv(t)
	first := e.serial(t)
	if !e.m.Ready() {
		t.Fatalf("Ready() = false, want true")
	}
	old, err := dial(t, e.addr, e.clientCfg)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, old, "before\r\n")

	second := e.replace(t)
	if second == first {
		t.Fatal("test CA issued the same serial twice")
	}
	waitFor(t, 5*time.Second, "the replaced files to be served", func() bool { return e.serial(t) == second })
	echo(t, old, "after\r\n") // the connection made before the swap is untouched
	if got := old.ConnectionState().PeerCertificates[0].SerialNumber.String(); got != first {
		t.Errorf("old connection's certificate serial = %s, want %s", got, first)
	}

	// a broken replacement: the old pair keeps serving, the log says why
	if err := os.WriteFile(e.certFile, []byte("-----BEGIN CERTIFICATE-----\nbroken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitLog(t, e.logs, 5*time.Second, "level=ERROR", "certificate files not loaded", "tls.cert_file "+e.certFile)
	if got := e.serial(t); got != second {
		t.Errorf("serial after a broken replacement = %s, want the previous %s", got, second)
	}
	if got := metricValue(t, e.reg, "imapgw_certificate_errors_total", ""); got != 1 {
		t.Errorf("imapgw_certificate_errors_total = %v, want 1", got)
	}
}

func TestFilesReload(t *testing.T) {
	e := newFilesEnv(t)
	first := e.serial(t)

	// a key that is not the certificate's: Reload names the key file
	other := e.ca.Leaf(t, "mail.example.test")
	_, otherKey := testbed.WriteLeafPEM(t, t.TempDir(), other)
	copyFile(t, otherKey, e.keyFile)
	err := e.m.Reload()
	if err == nil || !strings.Contains(err.Error(), "tls.key_file "+e.keyFile) {
		t.Fatalf("Reload() with a mismatched key = %v, want an error naming tls.key_file %s", err, e.keyFile)
	}
	if !hasLine(e.logs.String(), "level=ERROR", "certificate files not loaded", e.keyFile) {
		t.Errorf("no error log naming %s after a failed Reload", e.keyFile)
	}
	if got := e.serial(t); got != first {
		t.Errorf("serial after a failed Reload = %s, want the previous %s", got, first)
	}

	// an expired certificate is refused too
	expired := expiredLeaf(t, e.ca)
	certFile, keyFile := testbed.WriteLeafPEM(t, t.TempDir(), expired)
	copyFile(t, certFile, e.certFile)
	copyFile(t, keyFile, e.keyFile)
	if err := e.m.Reload(); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("Reload() with an expired certificate = %v, want an error saying expired", err)
	}

	second := e.replace(t)
	if err := e.m.Reload(); err != nil {
		t.Fatalf("Reload() with a valid pair = %v, want nil", err)
	}
	if got := e.serial(t); got != second {
		t.Errorf("serial after Reload = %s, want %s", got, second)
	}
}

func TestFilesUpdate(t *testing.T) {
	e := newFilesEnv(t)
	first := e.serial(t)

	// new paths to a broken pair: refused, the old pair keeps serving
	bad := *e.cfg
	bad.TLS.CertFile = filepath.Join(e.dir, "missing.pem")
	if err := e.m.Update(&bad); err == nil || !strings.Contains(err.Error(), "missing.pem") {
		t.Fatalf("Update(missing cert_file) = %v, want an error naming missing.pem", err)
	}
	if got := e.serial(t); got != first {
		t.Errorf("serial after a refused Update = %s, want %s", got, first)
	}

	// a change that needs a restart
	other := *e.cfg
	other.TLS.Certificate = conf.CertSelfSigned
	if err := e.m.Update(&other); err == nil || !strings.Contains(err.Error(), "tls.certificate") {
		t.Errorf("Update(files → self-signed) = %v, want an error naming tls.certificate", err)
	}

	// new paths to a good pair
	leaf := e.ca.Leaf(t, "mail.example.test")
	good := *e.cfg
	good.TLS.CertFile, good.TLS.KeyFile = testbed.WriteLeafPEM(t, t.TempDir(), leaf)
	if err := e.m.Update(&good); err != nil {
		t.Fatalf("Update(new files) = %v, want nil", err)
	}
	if got, want := e.serial(t), leaf.Leaf.SerialNumber.String(); got != want {
		t.Errorf("serial after Update = %s, want %s", got, want)
	}
}

func TestFilesMetrics(t *testing.T) {
	e := newFilesEnv(t)
	leaf := peer(t, e.addr, e.clientCfg)
	got := metricValue(t, e.reg, "imapgw_certificate_expiry_timestamp_seconds", "mail.example.test")
	if want := float64(leaf.NotAfter.Unix()); got != want {
		t.Errorf("imapgw_certificate_expiry_timestamp_seconds{name=mail.example.test} = %v, want %v", got, want)
	}
}

// expiredLeaf is a certificate for mail.example.test that expired an hour ago.
func expiredLeaf(t *testing.T, ca *testbed.CA) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "mail.example.test"},
		DNSNames:     []string{"mail.example.test"},
		NotBefore:    time.Now().Add(-2 * time.Hour),
		NotAfter:     time.Now().Add(-time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
