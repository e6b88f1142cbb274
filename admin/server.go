package admin

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imapgw/imapgw/acme"
	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/limiter"
)

// Bans is the part of the policy the endpoint reads and changes.
// *limiter.Limiter implements it.
type Bans interface {
	Bans() []limiter.Ban
	CheckBan(ip netip.Addr, d time.Duration) error
	AddBan(ip netip.Addr, d time.Duration, reason string) limiter.Ban
	LiftBan(ip netip.Addr) bool
	Source(ip netip.Addr) limiter.SourceInfo
}

var _ Bans = (*limiter.Limiter)(nil)

// Sessions lists the active sessions.
type Sessions interface {
	Sessions() []SessionInfo
}

// SessionsFunc adapts a func to Sessions.
type SessionsFunc func() []SessionInfo

// Sessions calls f.
func (f SessionsFunc) Sessions() []SessionInfo { return f() }

var _ Sessions = SessionsFunc(nil)

// SessionInfo describes one session; package main copies the data path's own
// description into it.
type SessionInfo struct {
	ID       string    `json:"id"`
	Client   string    `json:"client"`
	Listener string    `json:"listener"`
	User     string    `json:"user,omitempty"`
	Backend  string    `json:"backend,omitempty"`
	State    string    `json:"state"` // "preauth" or "relaying"
	Since    time.Time `json:"since"`
	BytesIn  int64     `json:"bytes_in"`  // client to backend, after login
	BytesOut int64     `json:"bytes_out"` // backend to client, after login
}

// Options configure a Server. Address and Bans are required; every other
// field has a working zero value.
type Options struct {
	// Address is the host:port to listen on, e.g. "127.0.0.1:9993".
	Address string
	// Token is the bearer token every route but /healthz and /readyz requires.
	// "" disables authentication, which New allows on loopback addresses only;
	// /debug/pprof is then not served.
	Token string
	// Names are more host names or addresses (admin.names) accepted in a
	// request's Host, with any port, besides the address as bound.
	Names []string
	// TLS, when not nil, serves HTTPS with this config (its GetCertificate
	// or Certificates); nil serves plain HTTP.
	TLS *tls.Config
	// Gatherer is served on /metrics and summed for /api/v1/stats.
	// nil: both are empty.
	Gatherer prometheus.Gatherer
	// Bans is the policy; required.
	Bans Bans
	// InKernel reports whether a ban's prefix is in the kernel's firewall
	// (bans.firewall); GET /api/v1/bans then shows it as in_kernel.
	// nil: no firewall, the field is left out.
	InKernel func(netip.Prefix) bool
	// Sessions lists the active sessions. nil: none.
	Sessions Sessions
	// Listeners lists the IMAP listeners for the status page. nil: none shown.
	Listeners func() []ListenerInfo
	// Backends is the backend pool. nil: its routes answer 501.
	Backends Backends
	// Cluster reports the link to the other gateways ([cluster]). nil: a
	// single node, GET /api/v1/cluster says enabled false.
	Cluster func() ClusterInfo
	// Certs lists the loaded certificates. nil: none.
	Certs func() []acme.CertInfo
	// Ready reports whether a certificate is loaded; /readyz answers 503 until
	// it does. nil: always ready.
	Ready func() bool
	// Draining reports whether the gateway is shutting down: /readyz then
	// answers 503 whatever Ready says, so that load balancers stop sending
	// clients while sessions drain. nil: never.
	Draining func() bool
	// Reload re-reads and applies the config file, as SIGHUP. nil: the route
	// answers 500.
	Reload func() error
	// Logger gets the endpoint's lines. Default slog.Default().
	Logger *slog.Logger
	// Now is the clock for uptime and remaining times. Default time.Now.
	Now func() time.Time
}

// Server is the admin HTTP endpoint.
type Server struct {
	o       Options
	started time.Time
	token   []byte // sha256 of Options.Token; nil when authentication is off
	hosts   hostRule
	http    *http.Server
	ui      uiState // the status page's signing key and login history

	mu sync.Mutex
	ln net.Listener
}

// New checks o and builds the server; Start opens its listener. It refuses a
// non-loopback address without a token: the API lifts bans and reloads the
// configuration.
func New(o Options) (*Server, error) {
	if o.Address == "" {
		return nil, errors.New("admin: no address")
	}
	if o.Bans == nil {
		return nil, errors.New("admin: Bans is required")
	}
	if o.Token == "" && !conf.IsLoopback(o.Address) {
		return nil, fmt.Errorf("admin.address %q is not loopback: set admin.token_file", o.Address)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	hosts, err := newHostRule(o.Address, o.Names)
	if err != nil {
		return nil, err
	}
	s := &Server{o: o, started: o.Now(), hosts: hosts, ui: newUIState()}
	if o.Token != "" {
		s.token = digest(o.Token)
	}
	s.http = &http.Server{
		Handler:           s.checkHost(s.routes()),
		TLSConfig:         o.TLS,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(o.Logger.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// Start listens on Options.Address and serves in the background.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.o.Address)
	if err != nil {
		return fmt.Errorf("admin: listening on %s: %w", s.o.Address, err)
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	s.o.Logger.Info("admin endpoint listening", "address", ln.Addr().String(), "token", s.token != nil, "tls", s.o.TLS != nil)
	if s.token != nil && s.o.TLS == nil && !conf.IsLoopback(s.o.Address) {
		// A warning, not a refusal: a config that ran before must not stop a
		// restart, and a management network or a TLS proxy in front may
		// already protect the token.
		s.o.Logger.Warn("admin.address is not loopback and admin.tls is \"none\": the bearer token crosses the network in clear; set admin.tls",
			"address", s.o.Address)
	}
	go s.sampleLoop(s.ui.stop)
	go func() {
		serve := s.http.Serve
		if s.o.TLS != nil {
			serve = func(ln net.Listener) error { return s.http.ServeTLS(ln, "", "") }
		}
		if err := serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.o.Logger.Error("admin endpoint stopped", "err", err)
		}
	}()
	return nil
}

// Addr is the bound address, nil before Start.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Shutdown stops accepting and waits for requests in flight until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.ui.stopOnce.Do(func() { close(s.ui.stop) })
	return s.http.Shutdown(ctx)
}
