package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/imapgw/imapgw/conf"
)

// Certificate sources, the values of tls.certificate and of CertInfo.Source.
const (
	sourceACME       = conf.CertACME
	sourceFiles      = conf.CertFiles
	sourceSelfSigned = conf.CertSelfSigned
)

// ALPN protocol names offered by TLSConfig.
const (
	alpnIMAP    = "imap"       // RFC 7301 registry; some clients offer it
	alpnACMETLS = "acme-tls/1" // RFC 8737 TLS-ALPN-01 validation
)

// Options are the Manager's dependencies. The zero value works. The fields
// after Now are timing knobs, zero meaning the production default; tests set
// them for certificates that live seconds and retries that come in
// milliseconds.
type Options struct {
	// Logger receives the Manager's lines and certmagic's (one level lower
	// than certmagic says: see newZapLogger). Default slog.Default().
	Logger *slog.Logger
	// Registerer gets imapgw_certificate_expiry_timestamp_seconds{name} and
	// imapgw_certificate_errors_total. nil: the metrics are not registered.
	Registerer prometheus.Registerer
	// Now is the clock for self-signed validity, expiry checks of files and
	// Ready. Default time.Now. (certmagic keeps its own clock.)
	Now func() time.Time
	// Admit, when set, is asked at accept for every connection to a
	// challenge listener, with the source address; it has the signature of
	// the connection policy's Admit (cmd wires the limiter in). A refused
	// connection (non-nil error) is closed at once; an admitted one calls
	// release when it closes. nil: every source is admitted (the
	// per-listener connection cap still applies).
	Admit func(src netip.Addr) (release func(), err error)
	// Storage, when set, holds the ACME account, certificates and locks
	// instead of server.state_dir/acme: a storage shared by several gateways
	// (cluster/certstore on Redis) makes one of them obtain and renew while
	// the others wait on its lock and load the result. nil: FileStorage.
	Storage certmagic.Storage
	// ChallengeConnections caps the connections each challenge listener
	// holds at once. Default 256, or 1/8 of the process's file-descriptor
	// limit when that is lower (at least 16). Tests only.
	ChallengeConnections int

	// PollInterval is how often the files source checks its files for
	// changes (a stat of each). Default 2s.
	PollInterval time.Duration
	// RetryInterval is the wait after a first failed ACME obtain; it doubles
	// after each failure up to MaxRetryInterval. Default 1m (as certmagic's
	// own first retry: a CA's failed-validation limits are per hour).
	RetryInterval time.Duration
	// MaxRetryInterval caps RetryInterval's doubling. Default 1h.
	MaxRetryInterval time.Duration
	// RenewCheckInterval is how often certmagic checks whether a certificate
	// is due for renewal. Default certmagic's (10m). Tests only.
	RenewCheckInterval time.Duration
	// RenewalWindowRatio is the part of a certificate's lifetime, at its end,
	// in which it is renewed. Default certmagic's (1/3). Tests only.
	RenewalWindowRatio float64
	// CertLifetime asks the CA for certificates valid this long (the order's
	// notAfter); not every CA honours it. Default: the CA's choice. Tests only.
	CertLifetime time.Duration
}

const (
	defaultPollInterval     = 2 * time.Second
	defaultRetryInterval    = time.Minute
	defaultMaxRetryInterval = time.Hour
)

// CertInfo describes a loaded certificate, for the admin endpoint.
type CertInfo struct {
	Names    []string  // DNS names and IP addresses it is valid for
	NotAfter time.Time // expiry
	Issuer   string    // the issuer's distinguished name
	Source   string    // "acme", "files" or "self-signed"
}

// Manager owns the gateway's certificates. Its methods are safe for
// concurrent use.
type Manager struct {
	log       *slog.Logger
	now       func() time.Time
	opts      Options
	metrics   *metrics
	tlsConfig *tls.Config

	cur    atomic.Pointer[settings]
	static atomic.Pointer[staticCert] // self-signed and files
	magic  atomic.Pointer[magic]      // acme, once started
	// failures counts certmagic's cert_failed events, so an obtain loop can
	// tell whether its failure was already logged and counted.
	failures atomic.Int64

	mu      sync.Mutex // serializes Start, Reload, Update and the file poller
	started bool
	stopped bool           // Start's ctx is done: start no more goroutines
	roots   *x509.CertPool // acme.ca_root, nil for system roots
	watch   fileWatch      // files: the state of the files last loaded
	wg      sync.WaitGroup // goroutines that end when Start's ctx is done
	done    chan struct{}
}

// New checks cfg and prepares the certificate source: a self-signed
// certificate is generated and files are loaded here (an error if they are
// unreadable or invalid); for ACME the CA root is read and the storage
// directory made, while obtaining waits for Start.
func New(cfg *conf.Config, o Options) (*Manager, error) {
	s, err := newSettings(cfg)
	if err != nil {
		return nil, err
	}
	m := &Manager{log: o.Logger, now: o.Now, opts: o, done: make(chan struct{})}
	if m.log == nil {
		m.log = slog.Default()
	}
	if m.now == nil {
		m.now = time.Now
	}
	m.metrics = newMetrics(m.Certificates)
	m.cur.Store(s)
	m.tlsConfig = &tls.Config{
		GetCertificate: m.getCertificate,
		MinVersion:     s.minVersion,
		NextProtos:     []string{alpnIMAP},
	}
	switch s.source {
	case sourceSelfSigned:
		err = m.makeSelfSigned(s)
	case sourceFiles:
		err = m.reloadLocked(s, "start")
	case sourceACME:
		// acme-tls/1 on every listener: certmagic answers the challenge
		// wherever the CA's validation arrives.
		m.tlsConfig.NextProtos = append(m.tlsConfig.NextProtos, alpnACMETLS)
		err = m.prepareACME(s)
	}
	if err != nil {
		return nil, err
	}
	if err := m.metrics.register(o.Registerer); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Manager) makeSelfSigned(s *settings) error {
	c, err := selfSigned(s.names, m.now())
	if err != nil {
		return err
	}
	m.static.Store(c)
	m.log.Warn("serving a self-signed certificate: for development only", "names", c.info.Names)
	return nil
}

func (m *Manager) prepareACME(s *settings) error {
	if s.acme.CARoot != "" {
		data, err := os.ReadFile(s.acme.CARoot)
		if err != nil {
			return fmt.Errorf("acme.ca_root: %w", err)
		}
		m.roots = x509.NewCertPool()
		if !m.roots.AppendCertsFromPEM(data) {
			return fmt.Errorf("acme.ca_root %s: no PEM certificate in it", s.acme.CARoot)
		}
	}
	if err := os.MkdirAll(s.acmeDir(), 0o700); err != nil {
		return fmt.Errorf("server.state_dir: %w", err)
	}
	return nil
}

// Start starts what runs in the background: the file poller, or the ACME
// challenge listeners and certificate management. It returns once they are
// started; they stop when ctx is done, after which Done is closed. A valid
// certificate found in storage is loaded before Start returns.
func (m *Manager) Start(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started {
		return errors.New("certificate manager already started")
	}
	s := m.cur.Load()
	var mg *magic
	switch s.source {
	case sourceFiles:
		m.wg.Go(func() { m.pollFiles(ctx) })
	case sourceACME:
		var err error
		if mg, err = m.startACME(ctx, s); err != nil {
			return err
		}
	}
	m.started = true
	go func() {
		<-ctx.Done()
		m.mu.Lock()
		m.stopped = true // before Wait: wg.Go must not race with it
		m.mu.Unlock()
		if mg != nil {
			mg.stop()
		}
		m.wg.Wait()
		close(m.done)
	}()
	return nil
}

// Done is closed once everything Start started has stopped (never, if
// Start was not called).
func (m *Manager) Done() <-chan struct{} { return m.done }

// TLSConfig returns the config for every client listener. It picks the
// certificate per handshake (clients without SNI get the hostname's), so
// a renewal or reload reaches new connections only.
func (m *Manager) TLSConfig() *tls.Config { return m.tlsConfig.Clone() }

var errNoCertificate = errors.New("no certificate loaded yet")

func (m *Manager) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := m.static.Load(); c != nil {
		return &c.cert, nil
	}
	if mg := m.magic.Load(); mg != nil {
		return mg.getCertificate(hello, m.cur.Load().hostname)
	}
	return nil, errNoCertificate
}

// Ready reports whether an unexpired certificate for the hostname is loaded.
func (m *Manager) Ready() bool {
	if c := m.static.Load(); c != nil {
		return m.now().Before(c.info.NotAfter)
	}
	if mg := m.magic.Load(); mg != nil {
		return mg.ready(m.cur.Load().hostname, m.now())
	}
	return false
}

// Certificates lists the loaded certificates.
func (m *Manager) Certificates() []CertInfo {
	if c := m.static.Load(); c != nil {
		return []CertInfo{c.info}
	}
	if mg := m.magic.Load(); mg != nil {
		return mg.certificates(m.cur.Load().names)
	}
	return nil
}

// Reload re-reads the certificate files now (SIGHUP). An invalid pair is
// logged and returned, and the previous certificate stays in service. With
// the other sources it does nothing: ACME certificates are renewed by
// certmagic, a self-signed one needs no reload.
func (m *Manager) Reload() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.cur.Load()
	if s.source != sourceFiles {
		return nil
	}
	if err := m.reloadLocked(s, "reload requested"); err != nil {
		m.filesFailed(err)
		return err
	}
	return nil
}

// Update applies a reloaded configuration: new names, new file paths. On any
// error nothing changes and the previous certificates stay in service.
// Changing the source, tls.min_version or the [acme] settings needs a
// restart and is refused with an error naming the keys.
func (m *Manager) Update(cfg *conf.Config) error {
	ns, err := newSettings(cfg)
	if err != nil {
		return m.updateFailed(err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.cur.Load()
	if keys := restartKeys(old, ns); len(keys) > 0 {
		return m.updateFailed(fmt.Errorf("%s changed: restart imapgw to apply", strings.Join(keys, ", ")))
	}
	switch ns.source {
	case sourceSelfSigned:
		if !slices.Equal(old.names, ns.names) {
			err = m.makeSelfSigned(ns)
		}
	case sourceFiles:
		if old.certFile != ns.certFile || old.keyFile != ns.keyFile {
			if err = m.reloadLocked(ns, "configuration changed"); err != nil {
				m.metrics.errors.Inc()
			}
		}
	case sourceACME:
		if mg := m.magic.Load(); mg != nil && !m.stopped {
			mg.setNames(old.names, ns.names)
		}
	}
	if err != nil {
		return m.updateFailed(err)
	}
	m.cur.Store(ns)
	return nil
}

func (m *Manager) updateFailed(err error) error {
	m.log.Error("certificate settings not updated; the previous ones stay in force", "error", err)
	return err
}
