package acme

import (
	"crypto/tls"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/imapgw/imapgw/conf"
)

// settings are the parts of the config this package uses, normalized.
type settings struct {
	source     string
	hostname   string
	names      []string // hostname first, then tls.names; lowercase, no repeats
	certFile   string
	keyFile    string
	minVersion uint16
	stateDir   string
	acme       conf.ACME
}

func newSettings(cfg *conf.Config) (*settings, error) {
	if cfg == nil {
		return nil, errors.New("no configuration")
	}
	s := &settings{
		source:   cfg.TLS.Certificate,
		hostname: strings.ToLower(cfg.Server.Hostname),
		certFile: cfg.TLS.CertFile,
		keyFile:  cfg.TLS.KeyFile,
		stateDir: cfg.Server.StateDir,
		acme:     cfg.ACME,
	}
	if s.hostname == "" {
		return nil, errors.New("server.hostname is empty")
	}
	for _, n := range append([]string{s.hostname}, cfg.TLS.Names...) {
		if n = strings.ToLower(n); !slices.Contains(s.names, n) {
			s.names = append(s.names, n)
		}
	}
	switch cfg.TLS.MinVersion {
	case "", "1.2":
		s.minVersion = tls.VersionTLS12
	case "1.3":
		s.minVersion = tls.VersionTLS13
	default:
		return nil, fmt.Errorf("tls.min_version %q is not 1.2 or 1.3", cfg.TLS.MinVersion)
	}
	switch s.source {
	case sourceSelfSigned:
	case sourceFiles:
		if s.certFile == "" || s.keyFile == "" {
			return nil, errors.New(`tls.certificate "files" needs tls.cert_file and tls.key_file`)
		}
	case sourceACME:
		if s.acme.Email == "" {
			return nil, errors.New(`acme.email is required with tls.certificate "acme"`)
		}
		if s.stateDir == "" {
			return nil, errors.New("server.state_dir is empty")
		}
		if s.acme.HTTPChallengeAddress == "" && s.acme.TLSALPNChallengeAddress == "" {
			return nil, errors.New("acme: no challenge listener configured")
		}
	default:
		return nil, fmt.Errorf("tls.certificate %q is not acme, files or self-signed", s.source)
	}
	return s, nil
}

// acmeDir is where certmagic keeps the ACME account and certificates.
func (s *settings) acmeDir() string { return filepath.Join(s.stateDir, "acme") }

// restartKeys names the settings that differ between a and b and that a
// running Manager cannot change: they would need new listeners or a new
// TLS config already handed out.
func restartKeys(a, b *settings) []string {
	var keys []string
	if a.source != b.source {
		keys = append(keys, "tls.certificate")
	}
	if a.minVersion != b.minVersion {
		keys = append(keys, "tls.min_version")
	}
	if a.source == sourceACME && b.source == sourceACME {
		if a.stateDir != b.stateDir {
			keys = append(keys, "server.state_dir")
		}
		if a.acme != b.acme {
			keys = append(keys, "acme")
		}
	}
	return keys
}
