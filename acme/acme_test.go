package acme

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/pebbletest"
)

// Each test run uses host names of its own: certmagic keeps some state per
// name in globals (active challenges, renewal jobs and their backoff), the
// tests run in parallel, and -count=N runs them again in the same process.
var domainSeq atomic.Int64

// domain returns a fresh domain under imapgw.test; Pebble's DNS resolves
// every name to 127.0.0.1.
func domain(label string) string {
	return fmt.Sprintf("%s-%d.imapgw.test", label, domainSeq.Add(1))
}

// acmeConfig is an ACME configuration against p with the challenge
// listeners on the given loopback ports (0: disabled).
func acmeConfig(t *testing.T, p *pebbletest.Pebble, hostname string, httpPort, tlsPort int) *conf.Config {
	t.Helper()
	c := baseConfig(t, conf.CertACME, hostname)
	c.ACME.CA = p.DirectoryURL
	c.ACME.CARoot = p.CAFile
	c.ACME.Email = "ops@imapgw.test"
	c.ACME.HTTPChallengeAddress, c.ACME.TLSALPNChallengeAddress = "", ""
	if httpPort != 0 {
		c.ACME.HTTPChallengeAddress = "127.0.0.1:" + strconv.Itoa(httpPort)
	}
	if tlsPort != 0 {
		c.ACME.TLSALPNChallengeAddress = "127.0.0.1:" + strconv.Itoa(tlsPort)
	}
	return c
}

// fastRetries makes a failed obtain retry within a second.
func fastRetries(o Options) Options {
	o.RetryInterval, o.MaxRetryInterval = 100*time.Millisecond, time.Second
	return o
}

func TestACMEHTTP01ThenCachedWithCADown(t *testing.T) {
	t.Parallel()
	dom := domain("http")
	host := "mail." + dom
	port := pebbletest.FreePort(t)
	p := pebbletest.Start(t, pebbletest.Options{HTTPPort: port})
	cfg := acmeConfig(t, p, host, port, 0)
	cfg.TLS.Names = []string{"imap." + dom}
	log, logs := newLogger(t)
	reg := prometheus.NewRegistry()
	m, err := New(cfg, fastRetries(Options{Logger: log, Registerer: reg}))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if m.Ready() {
		t.Fatalf("Ready() before Start = true, want false")
	}
	cancel := startManager(t, m)
	addr := serve(t, m)
	waitFor(t, 30*time.Second, "a certificate from Pebble", m.Ready)
	roots := p.Roots(t)

	tests := []struct{ sni, name string }{
		{host, host},
		{"imap." + dom, "imap." + dom},
		{"", host}, // no SNI: the hostname's certificate
	}
	for _, tc := range tests {
		waitFor(t, 30*time.Second, "a certificate for "+tc.name, func() bool {
			c, err := dial(t, addr, verifying(roots, tc.sni, tc.name))
			if err == nil {
				c.Close()
			}
			return err == nil
		})
	}
	c, err := dial(t, addr, verifying(roots, host, host, "imap"))
	if err != nil {
		t.Fatalf("handshake offering ALPN imap: %v", err)
	}
	if got := c.ConnectionState().NegotiatedProtocol; got != "imap" {
		t.Errorf("NegotiatedProtocol = %q, want imap", got)
	}
	echo(t, c, "a1 NOOP\r\n")

	waitLog(t, logs, 5*time.Second, "level=INFO", `msg="certificate obtained"`, "name="+host)
	infos := m.Certificates()
	if len(infos) != 2 {
		t.Fatalf("Certificates() = %+v, want two (one per name)", infos)
	}
	for _, info := range infos {
		if info.Source != "acme" || !strings.Contains(info.Issuer, "Pebble") {
			t.Errorf("Certificates() entry = %+v, want source acme and a Pebble issuer", info)
		}
	}
	leaf := c.ConnectionState().PeerCertificates[0]
	got := metricValue(t, reg, "imapgw_certificate_expiry_timestamp_seconds", host)
	if want := float64(leaf.NotAfter.Unix()); got != want {
		t.Errorf("expiry metric for mail.http.imapgw.test = %v, want %v", got, want)
	}

	// the HTTP challenge listener answers challenges only
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/")
	if err != nil {
		t.Fatalf("GET / on the challenge listener: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET / on the challenge listener: status %d, want 404", resp.StatusCode)
	}

	// restart with the CA down: the stored certificate is served at once
	stopManager(t, m, cancel)
	p.Stop()
	log2, _ := newLogger(t)
	m2, err := New(cfg, fastRetries(Options{Logger: log2}))
	if err != nil {
		t.Fatalf("New (second manager): %v", err)
	}
	startManager(t, m2)
	if !m2.Ready() {
		t.Fatalf("Ready() right after Start with a stored certificate = false, want true")
	}
	addr2 := serve(t, m2)
	if got := peer(t, addr2, verifying(roots, "", host)); got.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Errorf("second manager serves serial %s, want the stored %s", got.SerialNumber, leaf.SerialNumber)
	}
}

func TestACMETLSALPN01(t *testing.T) {
	t.Parallel()
	dom := domain("alpn")
	host := "mail." + dom
	port := pebbletest.FreePort(t)
	p := pebbletest.Start(t, pebbletest.Options{TLSPort: port})
	cfg := acmeConfig(t, p, host, 0, port)
	log, logs := newLogger(t)
	m, err := New(cfg, fastRetries(Options{Logger: log}))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	startManager(t, m)
	waitFor(t, 30*time.Second, "a certificate from Pebble over TLS-ALPN-01", m.Ready)
	addr := serve(t, m)
	peer(t, addr, verifying(p.Roots(t), host, host))
	if hasLine(logs.String(), "level=WARN", "no certificate yet") {
		t.Errorf("obtaining needed a retry; want success at the first attempt")
	}
}

func TestACMERenewal(t *testing.T) {
	t.Parallel()
	dom := domain("renew")
	host := "mail." + dom
	port := pebbletest.FreePort(t)
	p := pebbletest.Start(t, pebbletest.Options{HTTPPort: port})
	cfg := acmeConfig(t, p, host, port, 0)
	log, logs := newLogger(t)
	reg := prometheus.NewRegistry()
	m, err := New(cfg, fastRetries(Options{
		Logger:             log,
		Registerer:         reg,
		CertLifetime:       8 * time.Second,
		RenewalWindowRatio: 0.5,
		RenewCheckInterval: 250 * time.Millisecond,
	}))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	startManager(t, m)
	waitFor(t, 30*time.Second, "a certificate from Pebble", m.Ready)
	addr := serve(t, m)
	roots := p.Roots(t)
	client := verifying(roots, host, host)

	old, err := dial(t, addr, client)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	first := old.ConnectionState().PeerCertificates[0]
	if life := first.NotAfter.Sub(first.NotBefore); life > time.Minute {
		t.Fatalf("Pebble issued a certificate valid %s, want seconds (order notAfter)", life)
	}
	echo(t, old, "a1 NOOP\r\n")

	waitFor(t, 30*time.Second, "a renewed certificate", func() bool {
		return peer(t, addr, client).SerialNumber.Cmp(first.SerialNumber) != 0
	})
	echo(t, old, "a2 NOOP\r\n") // the connection made before the renewal still works
	waitLog(t, logs, 5*time.Second, "level=INFO", `msg="certificate renewed"`, "name="+host)

	// the CA goes away: the next renewal fails, is logged and counted, and
	// the current certificate is served until it expires
	p.Stop()
	current := peer(t, addr, client)
	waitLog(t, logs, 15*time.Second, "level=ERROR", "renewing a certificate failed", "name="+host)
	if got := metricValue(t, reg, "imapgw_certificate_errors_total", ""); got < 1 {
		t.Errorf("imapgw_certificate_errors_total after a failed renewal = %v, want at least 1", got)
	}
	if got := peer(t, addr, client); got.SerialNumber.Cmp(current.SerialNumber) != 0 {
		t.Errorf("serial after a failed renewal = %s, want the current %s", got.SerialNumber, current.SerialNumber)
	}
	if !m.Ready() {
		t.Errorf("Ready() after a failed renewal, before expiry = false, want true")
	}
	waitFor(t, 15*time.Second, "Ready() to turn false once the certificate expired", func() bool { return !m.Ready() })
}

func TestACMECADownNothingCached(t *testing.T) {
	t.Parallel()
	dom := domain("down")
	host := "mail." + dom
	port := pebbletest.FreePort(t)
	p := pebbletest.Start(t, pebbletest.Options{HTTPPort: port})
	p.Stop()
	cfg := acmeConfig(t, p, host, port, 0)
	log, logs := newLogger(t)
	reg := prometheus.NewRegistry()
	m, err := New(cfg, fastRetries(Options{Logger: log, Registerer: reg}))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	startManager(t, m)
	addr := serve(t, m)

	// two failures: it keeps retrying, and serves nothing meanwhile
	waitLog(t, logs, 10*time.Second, "level=WARN", "no certificate yet; will retry", "attempt=2")
	if m.Ready() {
		t.Fatalf("Ready() with the CA down and nothing stored = true, want false")
	}
	if _, err := dial(t, addr, &tls.Config{ServerName: host, InsecureSkipVerify: true}); err == nil {
		t.Errorf("handshake with no certificate loaded succeeded, want an error")
	}
	if got := metricValue(t, reg, "imapgw_certificate_errors_total", ""); got < 1 {
		t.Errorf("imapgw_certificate_errors_total = %v, want at least 1", got)
	}

	p.Start()
	waitFor(t, 30*time.Second, "a certificate once the CA is back", m.Ready)
	peer(t, addr, verifying(p.Roots(t), host, host))
}

// TestACMEUpdateNames: a name added by a config reload gets its certificate
// without a restart; a changed [acme] setting is refused.
func TestACMEUpdateNames(t *testing.T) {
	t.Parallel()
	dom := domain("update")
	host := "mail." + dom
	port := pebbletest.FreePort(t)
	p := pebbletest.Start(t, pebbletest.Options{HTTPPort: port})
	cfg := acmeConfig(t, p, host, port, 0)
	log, _ := newLogger(t)
	m, err := New(cfg, fastRetries(Options{Logger: log}))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	startManager(t, m)
	waitFor(t, 30*time.Second, "a certificate from Pebble", m.Ready)
	addr := serve(t, m)

	bad := *cfg
	bad.ACME.Email = "other@imapgw.test"
	if err := m.Update(&bad); err == nil || !strings.Contains(err.Error(), "acme") {
		t.Errorf("Update(acme.email changed) = %v, want an error naming acme", err)
	}

	more := *cfg
	more.TLS.Names = []string{"new." + dom}
	if err := m.Update(&more); err != nil {
		t.Fatalf("Update(names += new.update.imapgw.test) = %v, want nil", err)
	}
	roots := p.Roots(t)
	waitFor(t, 30*time.Second, "a certificate for the added name", func() bool {
		c, err := dial(t, addr, verifying(roots, "new."+dom, "new."+dom))
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	// the name removed again: no longer managed, and a client asking for it
	// gets the hostname's certificate rather than a failed handshake
	if err := m.Update(cfg); err != nil {
		t.Fatalf("Update(names -= new.update.imapgw.test) = %v, want nil", err)
	}
	for _, info := range m.Certificates() {
		if slices.Contains(info.Names, "new."+dom) {
			t.Errorf("Certificates() after removing the name still lists %v", info.Names)
		}
	}
	peer(t, addr, verifying(roots, "new."+dom, host))
}
