package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/pebbletest"
	"github.com/imapgw/imapgw/internal/testbed"
)

// TestACMEGatewayWithDovecot: the whole gateway starts with no certificate,
// obtains one from a real ACME CA (Pebble, HTTP-01 really validated), and a
// client that trusts only Pebble's root logs in to a real Dovecot through it,
// with SNI and without.
func TestACMEGatewayWithDovecot(t *testing.T) {
	d := testbed.StartDovecot(t, testbed.DovecotOptions{})
	port := pebbletest.FreePort(t)
	p := pebbletest.Start(t, pebbletest.Options{HTTPPort: port})

	host := fmt.Sprintf("gw%d.imapgw.test", time.Now().UnixNano()%100000) // certmagic keeps per-name globals
	cfg := conf.Default()
	cfg.Server.Hostname = host
	cfg.Server.StateDir = t.TempDir()
	cfg.Listen = []conf.Listen{{Address: "127.0.0.1:0", TLS: conf.TLSImplicit}}
	cfg.TLS.Certificate = conf.CertACME
	cfg.ACME.CA = p.DirectoryURL
	cfg.ACME.CARoot = p.CAFile
	cfg.ACME.Email = "postmaster@imapgw.test"
	cfg.ACME.HTTPChallengeAddress = fmt.Sprintf("127.0.0.1:%d", port)
	cfg.Backend.Servers = []string{d.Addr}
	cfg.Admin.Address = ""
	logs := &testbed.LogBuffer{}
	g, err := startGateway(cfg, "", logs)
	if err != nil {
		t.Fatal(err)
	}
	defer g.shutdown()

	for deadline := time.Now().Add(60 * time.Second); !g.certs.Ready(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no certificate after 60 s; log:\n%s", logs.String())
		}
	}
	if !strings.Contains(logs.String(), "certificate obtained") {
		t.Errorf("no 'certificate obtained' log line")
	}
	addr := g.srv.Addrs()[0].String()
	roots := p.Roots(t)
	withSNI := &tls.Config{RootCAs: roots, ServerName: host}
	// Without SNI (a client connecting by IP address): verify by hand against
	// the hostname, which is the certificate such clients must get.
	noSNI := &tls.Config{InsecureSkipVerify: true, VerifyConnection: func(cs tls.ConnectionState) error {
		if cs.ServerName != "" {
			return fmt.Errorf("client sent SNI %q", cs.ServerName)
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: host, Roots: roots, Intermediates: inter})
		return err
	}}
	for name, tc := range map[string]*tls.Config{"SNI": withSNI, "no SNI": noSNI} {
		c, err := imapclient.DialTLS(addr, &imapclient.Options{TLSConfig: tc})
		if err != nil {
			t.Fatalf("%s: dial: %v", name, err)
		}
		if err := c.Login("alice", "alice-secret").Wait(); err != nil {
			t.Fatalf("%s: login: %v", name, err)
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatalf("%s: select: %v", name, err)
		}
		c.Logout().Wait()
		c.Close()
	}
	d.WaitLog(t, "user=<alice>", 5*time.Second)
}
