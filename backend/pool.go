package backend

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
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

	// Affinity, when set, shares user pinning with the other gateways of
	// a fleet (cmd wires cluster/pinstore in); nil: this node alone.
	Affinity AffinityStore
	// AffinityTimeout bounds each wait on Affinity (cluster.timeout);
	// past it a login routes on this node's view. Default 100ms.
	AffinityTimeout time.Duration
	// AffinityRefresh is how often the counts of open sessions are
	// renewed in Affinity; the store's leases must outlast it. Default 20s.
	AffinityRefresh time.Duration
}

// Pool is the set of configured servers, their health and the users' routes.
// Its methods are safe for concurrent use.
type Pool struct {
	now  func() time.Time
	log  *slog.Logger
	m    *metrics
	wake chan struct{} // Reload asks Run to check at once, at the new interval

	warmCtx    context.Context // warm dials; Close cancels it
	warmCancel context.CancelFunc

	mu       sync.RWMutex
	cfg      conf.Backend
	servers  []*Server               // config order
	byName   map[string]*Server      // configured servers
	states   map[string]*serverState // configured servers' states, kept across reloads
	users    map[string]*userState   // lower-cased user → sessions and affinity
	umap     *userMap                // nil: no map file
	mapStamp fileStamp

	store AffinityStore // nil: no shared pinning
	// choice: more than one server is configured. With one there is
	// nothing to pin, and the fleet's store is not asked at all (a login
	// then costs Redis nothing for pinning).
	choice       atomic.Bool
	storeTimeout time.Duration
	storeRefresh time.Duration
	storeDown    atomic.Bool       // the last store call failed (one warning per outage)
	storeDownAt  atomic.Int64      // when storeDown was set, Unix ns
	storeProbe   atomic.Int64      // when a login last asked during an outage, Unix ns
	syncMu       sync.Mutex        // guards dirty
	dirty        map[string]string // users whose session count the store has not seen → server to pin or ""
	syncWake     chan struct{}
}

// serverState is a server's health, drain flag and sessions. A reload keeps
// it for a server whose name and address stay, whatever else changes.
type serverState struct {
	name, address string
	up, draining  bool
	removed       bool // no longer configured; its sessions run until they end
	checking      bool // a check is in flight
	fails, goods  int  // consecutive failed (checks and data-path dials) and good checks
	lastCheck     time.Time
	lastErr       string
	caps          []string
	sessions      map[*session]struct{}

	// Children every login touches, resolved when the state is made: see
	// install. A state removed by a reload keeps them; the series of a
	// removed state is deleted once its last session ends.
	gauge    prometheus.Gauge   // imapgw_backend_sessions{backend=name}
	loginsOK prometheus.Counter // imapgw_backend_logins_total{backend=name, outcome="ok"}
}

// New builds the pool from cfg (either form of the server list) and loads the
// map file. Servers start up; Run's first checks correct that at once.
func New(cfg conf.Backend, o Options) (*Pool, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	p := &Pool{now: o.Now, log: o.Logger, m: newMetrics(o.Registerer), wake: make(chan struct{}, 1),
		byName: map[string]*Server{}, states: map[string]*serverState{}, users: map[string]*userState{}}
	p.store, p.storeTimeout, p.storeRefresh = o.Affinity, o.AffinityTimeout, o.AffinityRefresh
	if p.storeTimeout <= 0 {
		p.storeTimeout = defaultAffinityTimeout
	}
	if p.storeRefresh <= 0 {
		p.storeRefresh = defaultAffinityRefresh
	}
	p.dirty, p.syncWake = map[string]string{}, make(chan struct{}, 1)
	p.warmCtx, p.warmCancel = context.WithCancel(context.Background())
	if err := p.Reload(cfg); err != nil {
		return nil, err
	}
	return p, nil
}

// Reload applies a new [backend] configuration: servers are added, removed or
// reweighted and the map file is re-read. Sessions stay: those on a removed
// server run until they end, and Kick still closes them. Health and drain
// carry over for a server that keeps its name and address. On error nothing
// changes.
func (p *Pool) Reload(cfg conf.Backend) error {
	servers, err := newServers(&cfg)
	if err != nil {
		return err
	}
	var m *userMap
	var stamp fileStamp
	if cfg.MapFile != "" {
		if m, stamp, err = loadMap(cfg.MapFile, namesOf(servers)); err != nil {
			return err
		}
	}
	p.mu.Lock()
	removed := p.retire(servers)
	replaced := p.servers
	added := p.install(servers)
	p.cfg, p.umap, p.mapStamp = cfg, m, stamp
	p.mu.Unlock()
	closeWarm(replaced)
	for _, name := range removed {
		p.log.Info("backend removed; its sessions run until they end", "backend", name)
	}
	for _, name := range added {
		p.log.Info("backend added", "backend", name)
	}
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return nil
}

func namesOf(servers []*Server) func(string) bool {
	names := make(map[string]bool, len(servers))
	for _, s := range servers {
		names[s.Name] = true
	}
	return func(n string) bool { return names[n] }
}

// retire marks the states of servers gone from the new list (or moved to
// another address) removed, and returns their names.
func (p *Pool) retire(servers []*Server) []string {
	keep := map[string]string{}
	for _, s := range servers {
		keep[s.Name] = s.Address
	}
	var gone []string
	for name, st := range p.states {
		if addr, ok := keep[name]; ok && addr == st.address {
			continue
		}
		st.removed = true
		delete(p.states, name)
		p.m.up.DeleteLabelValues(name)
		p.m.warmReady.DeleteLabelValues(name)
		p.m.warm.DeletePartialMatch(prometheus.Labels{"backend": name})
		if len(st.sessions) == 0 {
			p.m.sessions.DeleteLabelValues(name)
		}
		gone = append(gone, name)
	}
	return gone
}

// install makes servers the configured list, giving each its kept or a new
// state, and returns the names of those with a new one.
func (p *Pool) install(servers []*Server) (added []string) {
	p.servers = servers
	p.choice.Store(len(servers) > 1)
	p.byName = make(map[string]*Server, len(servers))
	for _, s := range servers {
		st := p.states[s.Name]
		if st == nil {
			st = &serverState{name: s.Name, address: s.Address, up: true, sessions: map[*session]struct{}{},
				gauge: p.m.sessions.WithLabelValues(s.Name), loginsOK: p.m.logins.WithLabelValues(s.Name, outcomeOK)}
			p.states[s.Name] = st
			p.m.up.WithLabelValues(s.Name).Set(1)
			added = append(added, s.Name)
		}
		s.state = st
		p.byName[s.Name] = s
		if s.warm != nil {
			s.warm.hit = p.m.warm.WithLabelValues(s.Name, "hit")
			s.warm.miss = p.m.warm.WithLabelValues(s.Name, "miss")
			s.warm.ready = p.m.warmReady.WithLabelValues(s.Name)
			s.warm.ready.Set(0)
		}
	}
	return added
}

// usable: new logins may go there. Callers hold p.mu.
func (s *Server) usable() bool { return s.state.up && !s.state.draining }

// outcomeOK is the outcome proxy reports for a login that succeeded.
const outcomeOK = "ok"

// CountLogin counts a login on s by outcome (imapgw_backend_logins_total).
func (p *Pool) CountLogin(s *Server, outcome string) {
	// No p.mu: s.state is set once, before install publishes s.
	if outcome == outcomeOK {
		s.state.loginsOK.Inc()
		return
	}
	p.m.logins.WithLabelValues(s.Name, outcome).Inc()
}

// CountFailover counts a login that went on to the next server after from
// failed to dial or greet (imapgw_backend_failovers_total), and logs it.
// Added to the POOL_API.md contract: proxy calls it, the pool owns the metric.
func (p *Pool) CountFailover(user string, from, to *Server) {
	p.m.failovers.Inc()
	p.log.Info("backend failover", "user", user, "from", from.Name, "to", to.Name)
}
