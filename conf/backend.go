package conf

import (
	"strings"
)

// backendServers checks both forms of the server list and the pool keys
// (issue 12).
func (v *validator) backendServers(b *Backend) {
	switch {
	case len(b.Servers) > 0 && len(b.Server) > 0:
		v.fail("backend.servers", "set either backend.servers or [[backend.server]] tables, not both")
	case len(b.Servers) == 0 && len(b.Server) == 0:
		v.fail("backend.servers", "at least one server is required")
	}
	seen := map[string]bool{}
	for _, s := range b.Servers {
		v.hostPort("backend.servers", s)
		if seen[s] {
			v.fail("backend.servers", "%q is listed twice", s)
		}
		seen[s] = true
	}
	for i, s := range b.Server {
		v.backendServer(i, &s, seen)
	}
	v.oneOf("backend.route", b.Route, RouteUser, RouteFirst)
	v.positiveDuration("backend.check_interval", b.CheckInterval)
	v.positiveDuration("backend.check_timeout", b.CheckTimeout)
	v.positive("backend.fall", b.Fall)
	v.positive("backend.rise", b.Rise)
	if b.WarmConnections < 0 || b.WarmConnections > maxWarm {
		v.fail("backend.warm_connections", "must be between 0 and %d, got %d", maxWarm, b.WarmConnections)
	}
}

// maxWarm bounds backend.warm_connections: each one holds a pre-login
// connection (a login process, on Dovecot) on every server.
const maxWarm = 64

func (v *validator) backendServer(i int, s *BackendServer, seen map[string]bool) {
	switch {
	case !isServerName(s.Name):
		v.fail(serverKey(i, "name"), "%q is not a server name (letters, digits, '.', '-', '_', ':')", s.Name)
	case seen[s.Name]:
		v.fail(serverKey(i, "name"), "%q is used twice", s.Name)
	}
	seen[s.Name] = true
	v.hostPort(serverKey(i, "address"), s.Address)
	v.positive(serverKey(i, "weight"), s.Weight)
	if s.TLS != "" {
		v.oneOf(serverKey(i, "tls"), s.TLS, TLSNone, TLSImplicit, TLSStartTLS)
	}
	if s.ClientIP != "" {
		v.oneOf(serverKey(i, "client_ip"), s.ClientIP, ClientIPID, ClientIPProxyV2, ClientIPProxyV1, ClientIPNone)
	}
	if s.TLS == TLSNone && (s.TLSCAFile != "" || s.TLSServerName != "" || s.TLSSkipVerify != nil && *s.TLSSkipVerify) {
		v.fail(serverKey(i, "tls"), `is "none", yet TLS settings are given for this server`)
	}
}

// isServerName accepts what a map file line and a URL path segment can carry.
func isServerName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	return !strings.ContainsFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(".-_:[]", r))
	})
}

// anyServerTLS reports whether some [[backend.server]] sets its own TLS mode,
// which makes the [backend] TLS keys meaningful even with backend.tls = "none".
func (b *Backend) anyServerTLS() bool {
	for _, s := range b.Server {
		if s.TLS != "" && s.TLS != TLSNone {
			return true
		}
	}
	return false
}

// ServerList returns the configured servers in order, short form expanded
// (named by address, weight DefaultWeight); [[backend.server]] tables win when
// both are set (only code can build that; a file may not).
func (b *Backend) ServerList() []BackendServer {
	if len(b.Server) > 0 {
		return b.Server
	}
	out := make([]BackendServer, len(b.Servers))
	for i, a := range b.Servers {
		out[i] = BackendServer{Name: a, Address: a, Weight: DefaultWeight}
	}
	return out
}
