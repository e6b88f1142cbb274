package conf

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
)

type validator struct {
	file  string
	lines lineIndex
	errs  Errors
}

func (v *validator) fail(key, format string, args ...any) {
	line := v.lines.find(key)
	if line == 0 { // a key inside a table: fall back to the table's header
		if i := strings.LastIndex(key, "."); i > 0 {
			line = v.lines.find(key[:i])
		}
	}
	v.errs = append(v.errs, &Error{File: v.file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) oneOf(key, val string, allowed ...string) {
	if !slices.Contains(allowed, val) {
		v.fail(key, "%q is not one of %s", val, strings.Join(allowed, ", "))
	}
}

func (v *validator) hostPort(key, addr string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		v.fail(key, "%q is not host:port", addr)
		return
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		v.fail(key, "%q has a bad port", addr)
	}
	if strings.ContainsAny(host, " /") {
		v.fail(key, "%q has a bad host", addr)
	}
}

func (v *validator) positive(key string, n int) {
	if n <= 0 {
		v.fail(key, "must be positive, got %d", n)
	}
}

func (v *validator) positiveDuration(key string, d Duration) {
	if d.Duration <= 0 {
		v.fail(key, "must be a positive duration, got %s", d)
	}
}

func (v *validator) config(c *Config) {
	v.server(&c.Server)
	v.listen(c.Listen)
	v.tls(c)
	v.backend(&c.Backend)
	v.auth(&c.Auth)
	v.limits(&c.Limits)
	v.bans(&c.Bans)
	v.cluster(&c.Cluster)
	v.admin(&c.Admin)
	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	v.oneOf("log.format", c.Log.Format, "text", "json")
}

func (v *validator) server(s *Server) {
	if s.Hostname == "" || strings.ContainsAny(s.Hostname, " \t\r\n/[]") {
		v.fail("server.hostname", "%q is not a host name", s.Hostname)
	}
	if s.StateDir == "" {
		v.fail("server.state_dir", "must not be empty")
	}
	if s.DrainTimeout.Duration < 0 {
		v.fail("server.drain_timeout", "must not be negative")
	}
}

func (v *validator) listen(ls []Listen) {
	if len(ls) == 0 {
		v.fail("listen", "at least one [[listen]] table is required")
	}
	seen := map[string]bool{}
	for i, l := range ls {
		v.hostPort(listenKey(i, "address"), l.Address)
		v.oneOf(listenKey(i, "tls"), l.TLS, TLSImplicit, TLSStartTLS)
		if seen[l.Address] {
			v.fail(listenKey(i, "address"), "%q is listed twice", l.Address)
		}
		seen[l.Address] = true
	}
}

func (v *validator) tls(c *Config) {
	t := &c.TLS
	v.oneOf("tls.certificate", t.Certificate, CertACME, CertFiles, CertSelfSigned)
	v.oneOf("tls.min_version", t.MinVersion, "1.2", "1.3")
	for _, n := range t.Names {
		if n == "" || strings.ContainsAny(n, " /:") {
			v.fail("tls.names", "%q is not a host name", n)
		}
	}
	switch t.Certificate {
	case CertFiles:
		if t.CertFile == "" || t.KeyFile == "" {
			v.fail("tls.certificate", `"files" needs tls.cert_file and tls.key_file`)
		}
	case CertACME:
		v.acme(&c.ACME)
	}
}

func (v *validator) acme(a *ACME) {
	if u, err := url.Parse(a.CA); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		v.fail("acme.ca", "%q is not an http(s) URL", a.CA)
	}
	if a.Email == "" || !strings.Contains(a.Email, "@") {
		v.fail("acme.email", "an email address is required with tls.certificate = \"acme\"")
	}
	if a.HTTPChallengeAddress != "" {
		v.hostPort("acme.http_challenge_address", a.HTTPChallengeAddress)
	}
	if a.TLSALPNChallengeAddress != "" {
		v.hostPort("acme.tls_alpn_challenge_address", a.TLSALPNChallengeAddress)
	}
	if a.HTTPChallengeAddress == "" && a.TLSALPNChallengeAddress == "" {
		v.fail("acme", "http_challenge_address and tls_alpn_challenge_address are both empty: no challenge can be answered")
	}
}

func (v *validator) backend(b *Backend) {
	v.backendServers(b)
	v.oneOf("backend.tls", b.TLS, TLSNone, TLSImplicit, TLSStartTLS)
	v.oneOf("backend.client_ip", b.ClientIP, ClientIPID, ClientIPProxyV2, ClientIPProxyV1, ClientIPNone)
	v.positiveDuration("backend.connect_timeout", b.ConnectTimeout)
	v.positiveDuration("backend.login_timeout", b.LoginTimeout)
	if b.TLSSkipVerify && b.TLSCAFile != "" {
		v.fail("backend.tls_skip_verify", "contradicts backend.tls_ca_file: verify with the CA, or skip verification, not both")
	}
	if b.TLS == TLSNone && !b.anyServerTLS() && (b.TLSCAFile != "" || b.TLSServerName != "" || b.TLSSkipVerify) {
		v.fail("backend.tls", `is "none", yet backend TLS settings are given`)
	}
}

func (v *validator) limits(l *Limits) {
	v.positiveDuration("limits.preauth_timeout", l.PreauthTimeout)
	v.positiveDuration("limits.idle_timeout", l.IdleTimeout)
	if l.MaxLine < 512 {
		v.fail("limits.max_line", "must be at least 512 (RFC 9051 lines carry credentials), got %d", l.MaxLine)
	}
	v.positive("limits.max_literal", l.MaxLiteral)
	v.positive("limits.max_connections", l.MaxConnections)
	v.positive("limits.max_connections_per_source", l.MaxConnectionsPerSource)
	if l.ConnectionRate <= 0 {
		v.fail("limits.connection_rate", "must be positive, got %g", l.ConnectionRate)
	}
	v.positive("limits.max_auth_failures_per_connection", l.MaxAuthFailuresPerConnection)
}

func (v *validator) bans(b *Bans) {
	if b.SourcePrefixV4 < 8 || b.SourcePrefixV4 > 32 {
		v.fail("bans.source_prefix_v4", "must be 8 to 32, got %d", b.SourcePrefixV4)
	}
	if b.SourcePrefixV6 < 16 || b.SourcePrefixV6 > 128 {
		v.fail("bans.source_prefix_v6", "must be 16 to 128, got %d", b.SourcePrefixV6)
	}
	if b.FailureDelay.Duration < 0 {
		v.fail("bans.failure_delay", "must not be negative")
	}
	v.positive("bans.source_failures", b.SourceFailures)
	v.positiveDuration("bans.source_window", b.SourceWindow)
	v.positive("bans.spray_accounts", b.SprayAccounts)
	v.positiveDuration("bans.ban", b.Ban)
	v.positiveDuration("bans.max_ban", b.MaxBan)
	if b.MaxBan.Duration < b.Ban.Duration {
		v.fail("bans.max_ban", "%s is shorter than bans.ban %s", b.MaxBan, b.Ban)
	}
	v.positive("bans.account_failures", b.AccountFailures)
	v.positiveDuration("bans.account_protect", b.AccountProtect)
	if b.MaxTracked < 16 {
		v.fail("bans.max_tracked", "must be at least 16, got %d", b.MaxTracked)
	}
	v.oneOf("bans.account_key", b.AccountKey, AccountKeyUser, AccountKeyLocalPart, AccountKeyStripRealm)
	v.firewall(b)
}

func (v *validator) admin(a *Admin) {
	if a.Address == "" {
		return
	}
	v.hostPort("admin.address", a.Address)
	if a.TokenFile == "" && !IsLoopback(a.Address) {
		v.fail("admin.address", "%q is not loopback: set admin.token_file", a.Address)
	}
	for _, n := range a.Names {
		if !isHostName(n) {
			v.fail("admin.names", "%q is not a host name or an IP address (no port, no brackets)", n)
		}
	}
	v.oneOf("admin.tls", a.TLS, TLSNone, AdminTLSGateway, CertFiles)
	switch {
	case a.TLS == CertFiles && (a.CertFile == "" || a.KeyFile == ""):
		v.fail("admin.tls", `"files" needs admin.cert_file and admin.key_file`)
	case a.TLS != CertFiles && (a.CertFile != "" || a.KeyFile != ""):
		v.fail("admin.tls", `is %q, yet admin.cert_file or admin.key_file is set (they go with "files")`, a.TLS)
	case a.TLS == TLSNone && a.CAFile != "":
		v.fail("admin.ca_file", `is set, yet admin.tls is "none"`)
	}
}

// isHostName accepts a DNS name (letters, digits, '-', '_', dots) or an IP
// address without zone: what a Host header names, without the port.
func isHostName(s string) bool {
	if ip, err := netip.ParseAddr(s); err == nil {
		return ip.Zone() == ""
	}
	if s == "" || len(s) > 253 || strings.HasPrefix(s, ".") || strings.Contains(s, "..") {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// IsLoopback reports whether the host of addr is a loopback address or "localhost".
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func defaultHostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}
