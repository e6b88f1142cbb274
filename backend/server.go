package backend

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/imapgw/imapgw/conf"
)

// Server is one configured IMAP server, immutable once built: each Reload
// makes new Servers, and a session keeps the one it was opened on. Health,
// drain and sessions carry over to the new Server of the same name and
// address.
type Server struct {
	Name, Address string
	Weight        int

	// TLS is the server's mode: conf.TLSNone, conf.TLSImplicit or conf.TLSStartTLS.
	TLS string
	// ClientIP is how the client's address is passed on: conf.ClientIPID (the
	// login's ID command, sent by proxy), ClientIPProxyV1/V2 (a PROXY header,
	// sent by Dial) or ClientIPNone.
	ClientIP string
	// ConnectTimeout bounds Dial: TCP, PROXY header, TLS, greeting, STARTTLS
	// and CAPABILITY. LoginTimeout bounds the answer to the credentials (used
	// by proxy).
	ConnectTimeout, LoginTimeout time.Duration

	tlsConfig *tls.Config // nil with TLSNone
	weight    float64     // Weight, for the hash path
	nameHash  uint64      // fnv1a(Name): its side of the rendezvous score
	state     *serverState
	warm      *warmSet // nil: this server keeps no warm connections
}

// newServer resolves one server's settings: its own keys, else [backend]'s.
// roots caches CA pools by file so that each file is read once per load.
func newServer(b *conf.Backend, cs conf.BackendServer, roots map[string]*x509.CertPool) (*Server, error) {
	s := &Server{Name: cs.Name, Address: cs.Address, Weight: cs.Weight,
		TLS: or(cs.TLS, b.TLS), ClientIP: or(cs.ClientIP, b.ClientIP),
		ConnectTimeout: b.ConnectTimeout.Duration, LoginTimeout: b.LoginTimeout.Duration,
		weight: float64(cs.Weight), nameHash: fnv1a(cs.Name)}
	if s.Weight <= 0 {
		return nil, fmt.Errorf("backend %s: weight must be positive, got %d", s.Name, s.Weight)
	}
	s.warm = newWarmSet(b, s.ClientIP)
	if s.TLS == "" {
		s.TLS = conf.TLSNone
	}
	if s.TLS == conf.TLSNone {
		return s, nil
	}
	skip := b.TLSSkipVerify
	if cs.TLSSkipVerify != nil {
		skip = *cs.TLSSkipVerify
	}
	host, _, _ := net.SplitHostPort(s.Address)
	s.tlsConfig = &tls.Config{ServerName: or(cs.TLSServerName, or(b.TLSServerName, host)),
		InsecureSkipVerify: skip, MinVersion: tls.VersionTLS12}
	if skip {
		return s, nil
	}
	pool, err := rootPool(or(cs.TLSCAFile, b.TLSCAFile), roots)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", s.Name, err)
	}
	s.tlsConfig.RootCAs = pool
	return s, nil
}

// rootPool reads a CA file, or loads the system roots for "". Loading now
// matters: parsing the system roots can take seconds, which the first login
// must not pay inside connect_timeout.
func rootPool(file string, cache map[string]*x509.CertPool) (*x509.CertPool, error) {
	if p, ok := cache[file]; ok {
		return p, nil
	}
	var pool *x509.CertPool
	if file == "" {
		p, err := x509.SystemCertPool()
		if err != nil {
			return nil, fmt.Errorf("loading system roots: %w", err)
		}
		pool = p
	} else {
		pem, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("tls_ca_file: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls_ca_file %s: no PEM certificates", file)
		}
	}
	cache[file] = pool
	return pool, nil
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// newServers builds every configured server, in config order.
func newServers(b *conf.Backend) ([]*Server, error) {
	list := b.ServerList()
	if len(list) == 0 {
		return nil, fmt.Errorf("backend: no servers configured")
	}
	roots := map[string]*x509.CertPool{}
	seen := map[string]bool{}
	out := make([]*Server, 0, len(list))
	for _, cs := range list {
		if seen[cs.Name] {
			return nil, fmt.Errorf("backend %s: name used twice", cs.Name)
		}
		seen[cs.Name] = true
		s, err := newServer(b, cs, roots)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}
