// Package proxy is the gateway's data path: it accepts client connections,
// terminates TLS (implicit or STARTTLS), runs the pre-auth IMAP state machine,
// asks the policy whether a login may be tried, logs in to the backend on the
// client's behalf (RFC 9051 LOGIN or RFC 4616 AUTHENTICATE PLAIN) and then
// relays bytes untouched until either side closes.
//
// It does not decide policy (package limiter does) nor where certificates come
// from (package acme); both arrive through small interfaces.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imapgw/imapgw/backend"
	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/limiter"
)

// Policy is what the proxy asks before admitting a connection or a login.
// Try reserves the login; the proxy tells the outcome through the returned
// attempt (Failed, Succeeded, or Done for anything else). *limiter.Limiter
// implements it.
type Policy interface {
	Admit(src netip.Addr) (release func(), err error)
	Try(src netip.Addr, user string) (*limiter.Attempt, error)
}

var _ Policy = (*limiter.Limiter)(nil)

// Certs supplies the TLS configuration for client connections. It is asked once
// per handshake-carrying listener; its GetCertificate picks the certificate per
// handshake, so renewals reach new sessions only.
type Certs interface {
	TLSConfig() *tls.Config
}

// Options are the seams of a Server.
type Options struct {
	Policy     Policy                // required
	Certs      Certs                 // required
	Logger     *slog.Logger          // default slog.Default()
	Registerer prometheus.Registerer // nil: metrics are counted but not registered
	// Backends routes each login to a server, dials it and tracks sessions;
	// its owner runs its health checks and reloads it. Nil: the server builds
	// one from cfg.Backend itself (no health checks, only strikes from failed
	// dials) and reloads it in Update.
	Backends *backend.Pool
}

// Server runs the listeners of one configuration and the sessions they accept.
type Server struct {
	cfg     atomic.Pointer[conf.Config]
	pool    *backend.Pool
	ownPool bool // built here from cfg.Backend: Update reloads it
	policy  Policy
	tlsConf *tls.Config
	log     *slog.Logger
	m       *metrics

	untrusted *logThrottle // log lines about peers refused on proxy_protocol listeners
	refusals  refusalLog   // refused logins, logged in summary

	mu        sync.Mutex
	listeners map[string]*listener // by address
	sessions  map[*session]struct{}
	closing   bool
	ctx       context.Context // cancelled when the server shuts down: ends pre-auth waits
	cancel    context.CancelFunc
	wg        sync.WaitGroup // accept loops, sessions and the trimmer
	started   atomic.Uint64  // sessions started, for the trimmer
	work      chan func()    // sessions for waiting workers (workers.go)
}

// New prepares a server; Start opens its listeners.
func New(cfg *conf.Config, o Options) (*Server, error) {
	if o.Policy == nil || o.Certs == nil {
		return nil, errors.New("proxy: Policy and Certs are required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Server{
		policy:    o.Policy,
		tlsConf:   o.Certs.TLSConfig(),
		log:       o.Logger,
		m:         newMetrics(o.Registerer),
		untrusted: newLogThrottle(untrustedLogEvery),
		listeners: map[string]*listener{},
		sessions:  map[*session]struct{}{},
		work:      make(chan func()),
	}
	s.pool = o.Backends
	if s.pool == nil {
		p, err := backend.New(cfg.Backend, backend.Options{Logger: o.Logger})
		if err != nil {
			return nil, err
		}
		s.pool, s.ownPool = p, true
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.cfg.Store(cfg)
	if o.Registerer != nil {
		// The ceiling next to imapgw_sessions, so an alert can say "near
		// max_connections" without copying the config into the rules.
		o.Registerer.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "imapgw_max_connections", Help: "limits.max_connections in force: the most open sessions the gateway accepts.",
		}, func() float64 { return float64(s.Config().Limits.MaxConnections) }))
	}
	return s, nil
}

// Config returns the configuration in force.
func (s *Server) Config() *conf.Config { return s.cfg.Load() }

// Start opens every configured listener and serves them in the background.
func (s *Server) Start() error {
	if err := s.syncListeners(s.Config().Listen); err != nil {
		return err
	}
	s.wg.Add(2)
	go s.trimLoop()
	go s.refusalLoop()
	return nil
}

// Update applies a reloaded configuration: new sessions use it, listeners are
// added and removed; established sessions are untouched.
func (s *Server) Update(cfg *conf.Config) error {
	if s.ownPool {
		if err := s.pool.Reload(cfg.Backend); err != nil {
			return err
		}
	}
	if err := s.syncListeners(cfg.Listen); err != nil {
		return err
	}
	s.cfg.Store(cfg)
	return nil
}

// Addrs returns the bound address of each listener, in config order.
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []net.Addr
	for _, l := range s.Config().Listen {
		if ln := s.listeners[l.Address]; ln != nil {
			out = append(out, ln.ln.Addr())
		}
	}
	return out
}

// BoundListener is a configured listener's address and where it is bound.
type BoundListener struct {
	Address, Bound string
}

// Listeners returns the open listeners: each configured address and the
// address it is bound to (the port, when the config says ":0").
func (s *Server) Listeners() []BoundListener {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]BoundListener, 0, len(s.listeners))
	for addr, ln := range s.listeners {
		out = append(out, BoundListener{addr, ln.ln.Addr().String()})
	}
	return out
}

// listenConfig: Go's per-connection keep-alive is off at accept; the
// listening socket carries keepAlive where accepted sockets inherit it
// (keepalive_linux.go), else start sets it on admitted connections only.
var listenConfig = net.ListenConfig{KeepAlive: -1, Control: listenKeepAlive}

// syncListeners opens the listeners in want that are not open and closes those
// no longer wanted. Opening is all or nothing.
func (s *Server) syncListeners(want []conf.Listen) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return errors.New("server is shutting down")
	}
	keep := map[string]bool{}
	var opened []*listener
	for _, lc := range want {
		keep[lc.Address] = true
		if l, ok := s.listeners[lc.Address]; ok {
			l.cfg.Store(&lc)
			continue
		}
		ln, err := listenConfig.Listen(context.Background(), "tcp", lc.Address)
		if err != nil {
			for _, o := range opened {
				o.ln.Close()
			}
			return fmt.Errorf("listening on %s: %w", lc.Address, err)
		}
		// A listener keeps its address for life (reloads key them by it).
		l := &listener{ln: ln, srv: s, accepted: s.m.connections.WithLabelValues(lc.Address, "accepted")}
		l.cfg.Store(&lc)
		opened = append(opened, l)
	}
	for addr, l := range s.listeners {
		if !keep[addr] {
			l.ln.Close()
			delete(s.listeners, addr)
			s.log.Info("listener closed", "address", addr)
		}
	}
	for _, l := range opened {
		s.listeners[l.cfg.Load().Address] = l
		s.wg.Add(1)
		go l.serve()
		s.log.Info("listening", "address", l.ln.Addr().String(), "tls", l.cfg.Load().TLS, "proxy_protocol", l.cfg.Load().ProxyProtocol)
	}
	return nil
}

// Shutdown stops accepting, says BYE to sessions that have not logged in, gives
// relayed sessions until drain_timeout (or ctx) to end, then closes the rest.
func (s *Server) Shutdown(ctx context.Context) {
	s.mu.Lock()
	s.closing = true
	for _, l := range s.listeners {
		l.ln.Close()
	}
	s.mu.Unlock()
	s.cancel() // pre-auth sessions see this and say BYE
	// After cancel: a session that checks ctx before its next read sees it
	// cancelled; one already reading is woken here. No session is tracked
	// after closing is set.
	s.mu.Lock()
	for ss := range s.sessions {
		ss.interrupt()
	}
	s.mu.Unlock()
	if s.ownPool {
		s.pool.Close() // its warm connections; a wired-in pool is closed by its Run
	}

	drain := s.Config().Server.DrainTimeout.Duration
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	t := time.NewTimer(drain)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	case <-ctx.Done():
	}
	s.mu.Lock()
	n := len(s.sessions)
	for ss := range s.sessions {
		ss.closeNow()
	}
	s.mu.Unlock()
	s.log.Info("drain timeout: closing sessions", "sessions", n)
	<-done
}

// Sessions returns a snapshot of the active sessions.
func (s *Server) Sessions() []SessionInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]SessionInfo, 0, len(s.sessions))
	for ss := range s.sessions {
		out = append(out, ss.info())
	}
	return out
}

func (s *Server) track(ss *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.sessions[ss] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(ss *session) {
	s.mu.Lock()
	delete(s.sessions, ss)
	s.mu.Unlock()
	s.wg.Done()
}

// recoverPanic turns a panic in a connection's goroutine into a log line with the
// stack and a metric, so one bad session never takes the gateway down.
func (s *Server) recoverPanic(id string) {
	if r := recover(); r != nil {
		s.m.panics.Inc()
		s.log.Error("panic in session", "session", id, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	}
}

// Panics returns how many panics were recovered; tests assert it stays 0.
func (s *Server) Panics() float64 { return counterValue(s.m.panics) }
