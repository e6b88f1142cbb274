package admin

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// FileCertificate serves admin.cert_file and admin.key_file (admin.tls =
// "files"): it loads them now, an error naming the key at fault, and
// re-reads them at a handshake after either file changed, so a renewed pair
// (certbot's live/ symlinks) is served without a restart. A broken new pair
// is logged once and the previous one stays in service. Admin handshakes are
// few, so a stat of each file per handshake costs nothing that matters.
func FileCertificate(certFile, keyFile string, log *slog.Logger) (func(*tls.ClientHelloInfo) (*tls.Certificate, error), error) {
	fc := &fileCert{certFile: certFile, keyFile: keyFile, log: log}
	if err := fc.load(fc.stamp()); err != nil {
		return nil, err
	}
	return fc.get, nil
}

type fileCert struct {
	certFile, keyFile string
	log               *slog.Logger

	mu   sync.Mutex
	cert *tls.Certificate
	seen [2]time.Time // the files' modification times when last loaded or tried
}

func (fc *fileCert) stamp() [2]time.Time {
	var st [2]time.Time
	for i, name := range []string{fc.certFile, fc.keyFile} {
		if fi, err := os.Stat(name); err == nil {
			st[i] = fi.ModTime()
		}
	}
	return st
}

// load reads the pair; the caller holds mu (or owns fc).
func (fc *fileCert) load(st [2]time.Time) error {
	fc.seen = st
	cert, err := tls.LoadX509KeyPair(fc.certFile, fc.keyFile)
	if err != nil {
		return fmt.Errorf("admin.cert_file %s, admin.key_file %s: %w", fc.certFile, fc.keyFile, err)
	}
	fc.cert = &cert
	return nil
}

func (fc *fileCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if st := fc.stamp(); st != fc.seen {
		if err := fc.load(st); err != nil {
			fc.log.Error("admin certificate not reloaded; still serving the previous one", "err", err)
		} else {
			fc.log.Info("admin certificate reloaded", "cert_file", fc.certFile)
		}
	}
	return fc.cert, nil
}

// ClientTLS is the client side of admin TLS, for `imapgw bans` and `status`:
// it trusts the PEM certificates in caFile (admin.ca_file), or the system
// roots when caFile is "", and verifies the certificate against serverName
// ("" means the host the client dials).
func ClientTLS(caFile, serverName string) (*tls.Config, error) {
	cfg := &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return cfg, nil
	}
	data, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("admin.ca_file: %w", err)
	}
	cfg.RootCAs = x509.NewCertPool()
	if !cfg.RootCAs.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("admin.ca_file %s: no PEM certificate in it", caFile)
	}
	return cfg, nil
}
