package acme

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/imapgw/imapgw/conf"
)

// magic is the ACME source: certmagic with a cache and config of our own
// (the package defaults would renew with a default config, not ours), its
// storage under server.state_dir, and our own challenge listeners.
type magic struct {
	m      *Manager
	ctx    context.Context // Start's
	cache  *certmagic.Cache
	cfg    *certmagic.Config
	issuer *certmagic.ACMEIssuer
	http   *http.Server                  // HTTP-01, nil when disabled
	alpn   net.Listener                  // TLS-ALPN-01, nil when disabled
	alpnTC *tls.Config                   // for alpn
	loops  map[string]context.CancelFunc // obtain loops by name, guarded by Manager.mu
}

// startACME binds the challenge listeners, sets certmagic up, loads what
// storage holds and starts obtaining what it does not. The caller holds m.mu.
func (m *Manager) startACME(ctx context.Context, s *settings) (*magic, error) {
	httpLn, alpnLn, err := listenChallenges(s.acme)
	if err != nil {
		return nil, err
	}
	zl := newZapLogger(m.log.Handler())
	mg := &magic{m: m, ctx: ctx, loops: map[string]context.CancelFunc{}}
	if alpnLn != nil {
		mg.alpn = m.limitChallenge(alpnLn, challengeALPN)
	}
	mg.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return mg.cfg, nil },
		RenewCheckInterval: m.opts.RenewCheckInterval,
		Logger:             zl,
	})
	mg.cfg = certmagic.New(mg.cache, certmagic.Config{
		RenewalWindowRatio: m.opts.RenewalWindowRatio,
		OnEvent:            m.onEvent,
		ShouldEmitFunc:     func(event string) bool { return loggedEvents[event] },
		Storage:            m.storage(s),
		Logger:             zl,
	})
	mg.issuer = certmagic.NewACMEIssuer(mg.cfg, m.issuerTemplate(s.acme, httpLn, alpnLn, zl))
	mg.cfg.Issuers = []certmagic.Issuer{mg.issuer}
	m.magic.Store(mg)

	if httpLn != nil {
		mg.http = newChallengeServer(mg, m.log)
		ln := m.limitChallenge(httpLn, challengeHTTP)
		m.wg.Go(func() { _ = mg.http.Serve(ln) })
	}
	if alpnLn != nil {
		mg.alpnTC = &tls.Config{GetCertificate: m.getCertificate, NextProtos: []string{alpnACMETLS}}
		m.wg.Go(mg.serveALPN)
	}
	mg.manage(s.names)
	return mg, nil
}

// storage is Options.Storage, else the files under server.state_dir.
func (m *Manager) storage(s *settings) certmagic.Storage {
	if m.opts.Storage != nil {
		return m.opts.Storage
	}
	return &certmagic.FileStorage{Path: s.acmeDir()}
}

// issuerTemplate configures the ACME client. certmagic starts a challenge
// server of its own unless it finds one listening where it would listen, so
// it is pointed at ours (ListenHost, Alt*Port): it then dials ours, finds it
// up and leaves the answering to it.
func (m *Manager) issuerTemplate(a conf.ACME, httpLn, alpnLn net.Listener, zl *zap.Logger) certmagic.ACMEIssuer {
	t := certmagic.ACMEIssuer{
		CA:                      a.CA,
		Email:                   a.Email,
		Agreed:                  true, // the operator agreed by configuring acme.email
		TrustedRoots:            m.roots,
		DisableHTTPChallenge:    httpLn == nil,
		DisableTLSALPNChallenge: alpnLn == nil,
		NotAfter:                m.opts.CertLifetime,
		Logger:                  zl,
	}
	if httpLn != nil {
		t.ListenHost, _, _ = net.SplitHostPort(a.HTTPChallengeAddress)
		t.AltHTTPPort = httpLn.Addr().(*net.TCPAddr).Port
	}
	if alpnLn != nil {
		if httpLn == nil {
			t.ListenHost, _, _ = net.SplitHostPort(a.TLSALPNChallengeAddress)
		}
		t.AltTLSALPNPort = alpnLn.Addr().(*net.TCPAddr).Port
	}
	return t
}

func listenChallenges(a conf.ACME) (httpLn, alpnLn net.Listener, err error) {
	if a.HTTPChallengeAddress != "" {
		if httpLn, err = net.Listen("tcp", a.HTTPChallengeAddress); err != nil {
			return nil, nil, fmt.Errorf("acme.http_challenge_address: %w", err)
		}
	}
	if a.TLSALPNChallengeAddress != "" {
		if alpnLn, err = net.Listen("tcp", a.TLSALPNChallengeAddress); err != nil {
			if httpLn != nil {
				httpLn.Close()
			}
			return nil, nil, fmt.Errorf("acme.tls_alpn_challenge_address: %w", err)
		}
	}
	return httpLn, alpnLn, nil
}

// ServeHTTP answers HTTP-01 challenges and nothing else.
func (mg *magic) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if mg.issuer.HandleHTTPChallenge(w, r) {
		return
	}
	http.Error(w, "imapgw answers ACME challenges only", http.StatusNotFound)
}

// serveALPN completes TLS handshakes for TLS-ALPN-01 validations (the
// validator needs nothing after the handshake) until the listener closes.
func (mg *magic) serveALPN() {
	for {
		c, err := mg.alpn.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil { // e.g. out of file descriptors: pause, as net/http does
			time.Sleep(100 * time.Millisecond)
			continue
		}
		mg.m.wg.Go(func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(challengeTimeout))
			_ = tls.Server(c, mg.alpnTC).Handshake()
		})
	}
}

// manage loads each name's certificate from storage now, so a cached one is
// served before Start returns, and starts obtaining those missing. The
// caller holds Manager.mu.
func (mg *magic) manage(names []string) {
	loaded := false
	for _, name := range names {
		_, err := mg.cfg.CacheManagedCertificate(mg.ctx, name)
		switch {
		case err == nil:
			loaded = true
		case errors.Is(err, fs.ErrNotExist):
			mg.startObtain(name)
		default:
			mg.m.log.Warn("stored certificate not loaded; obtaining a new one", "name", name, "error", err)
			mg.startObtain(name)
		}
	}
	if loaded {
		// what storage held may be due for renewal: check now rather than
		// at the first tick of certmagic's maintenance
		mg.m.wg.Go(func() { _ = mg.cache.RenewManagedCertificates(mg.ctx) })
	}
}

func (mg *magic) startObtain(name string) {
	ctx, cancel := context.WithCancel(mg.ctx)
	mg.loops[name] = cancel
	mg.m.wg.Go(func() {
		defer cancel()
		mg.obtain(ctx, name)
	})
}

// obtain gets name managed, retrying with backoff while the CA is
// unreachable or the validation fails. certmagic's ManageAsync would retry
// too, but its first retry is a fixed minute later; this loop makes the wait
// a setting and logs each failure with the next try's time. Once the name
// is managed, certmagic's maintenance renews it.
func (mg *magic) obtain(ctx context.Context, name string) {
	// certmagic reads the attempt count to know a try is a retry: it then
	// validates against the CA's staging endpoint first (Let's Encrypt),
	// sparing production's rate limits.
	attempts := 0
	ctx = context.WithValue(ctx, certmagic.AttemptsCtxKey, &attempts)
	wait, most := mg.m.opts.RetryInterval, mg.m.opts.MaxRetryInterval
	if wait <= 0 {
		wait = defaultRetryInterval
	}
	if most <= 0 {
		most = defaultMaxRetryInterval
	}
	for {
		reported := mg.m.failures.Load()
		err := mg.cfg.ManageSync(ctx, []string{name})
		if err == nil || ctx.Err() != nil {
			return
		}
		attempts++
		if mg.m.failures.Load() == reported { // failed before certmagic's cert_failed event
			mg.m.metrics.errors.Inc()
			mg.m.log.Error("obtaining a certificate failed", "name", name, "error", err)
		}
		mg.m.log.Warn("no certificate yet; will retry", "name", name, "attempt", attempts, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, most)
	}
}

// setNames starts managing added names and drops removed ones. The caller
// holds Manager.mu.
func (mg *magic) setNames(old, names []string) {
	var added []string
	for _, n := range names {
		if !slices.Contains(old, n) {
			added = append(added, n)
		}
	}
	var removed []certmagic.SubjectIssuer
	for _, n := range old {
		if slices.Contains(names, n) {
			continue
		}
		if cancel := mg.loops[n]; cancel != nil {
			cancel()
			delete(mg.loops, n)
		}
		removed = append(removed, certmagic.SubjectIssuer{Subject: n, IssuerKey: mg.issuer.IssuerKey()})
	}
	if len(removed) > 0 {
		mg.cache.RemoveManaged(removed)
	}
	mg.manage(added)
}

// stop closes the listeners and stops certmagic's maintenance; obtain loops
// end with Start's context.
func (mg *magic) stop() {
	if mg.http != nil {
		_ = mg.http.Close()
	}
	if mg.alpn != nil {
		_ = mg.alpn.Close()
	}
	mg.cache.Stop()
}

// getCertificate serves the certificate for the SNI name. Clients without
// SNI (those connecting by IP address) and clients asking for a name we do
// not manage get the hostname's certificate: a name mismatch the user can
// inspect beats a failed handshake.
func (mg *magic) getCertificate(hello *tls.ClientHelloInfo, hostname string) (*tls.Certificate, error) {
	if hello.ServerName == "" {
		h := *hello
		h.ServerName = hostname
		hello = &h
	}
	cert, err := mg.cfg.GetCertificate(hello)
	if err != nil && !isALPNChallenge(hello) && !strings.EqualFold(hello.ServerName, hostname) {
		h := *hello
		h.ServerName = hostname
		cert, err = mg.cfg.GetCertificate(&h)
	}
	if err != nil {
		return nil, err
	}
	return cert, nil
}

// isALPNChallenge reports a TLS-ALPN-01 validation (RFC 8737 section 3):
// it offers acme-tls/1 alone.
func isALPNChallenge(hello *tls.ClientHelloInfo) bool {
	return len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == alpnACMETLS
}

func (mg *magic) ready(hostname string, now time.Time) bool {
	for _, c := range mg.cache.AllMatchingCertificates(hostname) {
		if c.Leaf != nil && now.Before(c.Leaf.NotAfter) {
			return true
		}
	}
	return false
}

func (mg *magic) certificates(names []string) []CertInfo {
	var infos []CertInfo
	seen := map[string]bool{}
	for _, n := range names {
		for _, c := range mg.cache.AllMatchingCertificates(n) {
			if c.Leaf == nil || seen[c.Hash()] {
				continue
			}
			seen[c.Hash()] = true
			infos = append(infos, CertInfo{
				Names:    append([]string(nil), c.Names...),
				NotAfter: c.Leaf.NotAfter,
				Issuer:   c.Leaf.Issuer.String(),
				Source:   sourceACME,
			})
		}
	}
	return infos
}

// loggedEvents are the certmagic events onEvent handles; the others (one
// per handshake among them) are not even built.
var loggedEvents = map[string]bool{
	"cert_obtaining":      true,
	"cert_obtained":       true,
	"cert_failed":         true,
	"cached_managed_cert": true,
	"cert_ocsp_revoked":   true,
}

// onEvent turns certmagic's events into our structured log lines and the
// failure counter.
func (m *Manager) onEvent(_ context.Context, event string, data map[string]any) error {
	name, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	switch event {
	case "cert_obtaining":
		m.log.Info("requesting a certificate from the CA", "name", name)
	case "cert_obtained":
		msg := "certificate obtained"
		if renewal {
			msg = "certificate renewed"
		}
		m.log.Info(msg, "name", name, "issuer", data["issuer"])
	case "cert_failed":
		m.failures.Add(1)
		m.metrics.errors.Inc()
		msg := "obtaining a certificate failed"
		attrs := []any{"name", name, "error", data["error"]}
		if renewal {
			msg = "renewing a certificate failed; still serving the current one"
			attrs = append(attrs, "remaining", data["remaining"])
		}
		m.log.Error(msg, attrs...)
	case "cached_managed_cert":
		m.log.Info("certificate loaded", "source", sourceACME, "names", data["sans"])
	case "cert_ocsp_revoked":
		m.log.Error("certificate revoked according to OCSP; renewing it", "names", data["subjects"])
	}
	return nil
}
