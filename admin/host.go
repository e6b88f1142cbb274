package admin

import (
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// hostRule is which Host values the endpoint answers (issue 11, point 5). A
// page a browser loaded from a name its author controls can point that name
// at 127.0.0.1 (DNS rebinding) and then read the endpoint as its own origin;
// its requests still carry the attacker's name as Host. So the endpoint
// answers only its own address, the host admin.address names ("localhost",
// an IP, a name), and admin.names: names the operator controls.
type hostRule struct {
	host  string          // admin.address's host, canonical; "" for a wildcard
	names map[string]bool // admin.names, canonical, matched with any port
}

func newHostRule(address string, names []string) (hostRule, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return hostRule{}, fmt.Errorf("admin.address %q: %w", address, err)
	}
	r := hostRule{host: canonicalHost(host), names: map[string]bool{}}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
		r.host = ""
	}
	for _, n := range names {
		r.names[canonicalHost(n)] = true
	}
	return r, nil
}

// canonicalHost lower-cases a name and writes an address in its one
// canonical form ("::1" for "[0:0::1]"); "" for an address with a zone.
func canonicalHost(h string) string {
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	if ip, err := netip.ParseAddr(h); err == nil {
		if ip.Zone() != "" {
			return ""
		}
		return ip.Unmap().String()
	}
	return strings.ToLower(h)
}

// allows reports whether r's Host names this endpoint: one of the names with
// any port, or, on the bound port, the configured host or the very address
// the connection arrived at (an IP literal is the endpoint's own origin, so
// no other page shares it).
func (hr hostRule) allows(r *http.Request, boundPort string) bool {
	host, port, err := net.SplitHostPort(r.Host)
	if err != nil { // no port: the scheme's default
		host, port = r.Host, "80"
		if r.TLS != nil {
			port = "443"
		}
	}
	host = canonicalHost(host)
	switch {
	case host == "":
		return false
	case hr.names[host]:
		return true
	case port != boundPort:
		return false
	case host == hr.host:
		return true
	}
	local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return false
	}
	lip, err := netip.ParseAddrPort(local.String())
	if err != nil {
		return false
	}
	ip := lip.Addr().Unmap().WithZone("")
	// "localhost" is no one else's name either: browsers and resolvers keep
	// it on the machine (RFC 6761, 6.3).
	return host == ip.String() || (host == "localhost" && ip.IsLoopback())
}

// checkHost answers 421 to a request whose Host is not this endpoint's.
// /healthz and /readyz are exempt: load balancers and orchestrators probe
// them by whatever address they have, and they tell nothing and change
// nothing.
func (s *Server) checkHost(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
			next.ServeHTTP(w, r)
			return
		}
		if !s.hosts.allows(r, s.boundPort()) {
			host := r.Host
			if len(host) > 100 {
				host = host[:100] + "…"
			}
			writeError(w, http.StatusMisdirectedRequest,
				fmt.Sprintf("Host %q is not this endpoint's address or one of admin.names", host))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) boundPort() string {
	a := s.Addr()
	if a == nil {
		return ""
	}
	_, port, _ := net.SplitHostPort(a.String())
	return port
}

// isJSON reports whether r declares a JSON body. State-changing requests
// must: a page on another origin can send a text/plain or form POST without
// asking (no CORS preflight), but not an application/json one.
func isJSON(r *http.Request) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return err == nil && mt == "application/json"
}

// changesState: every method but the safe ones (RFC 9110, 9.2.1).
func changesState(method string) bool {
	return method != http.MethodGet && method != http.MethodHead && method != http.MethodOptions
}
