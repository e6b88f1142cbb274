package backend

import (
	"net/netip"
	"sync"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/prometheus/client_golang/prometheus"
)

// Warm connections (backend.warm_connections). A login on a fresh connection
// waits for the TCP connect, the TLS handshake when there is one, and the
// greeting; on Dovecot the greeting comes from a login process started for the
// connection. That wait is most of what the gateway adds to a login (issue 16:
// about a third of a login's time through the gateway at 2 clients). So each
// server keeps a few connections dialed and greeted, and a login takes one and
// only sends its credentials. The client's address still reaches the server:
// the ID command goes with the credentials. A PROXY header cannot, since it is
// written when the connection opens, so servers with client_ip = "proxy-v1" or
// "proxy-v2" have none.
//
// They are made on demand only: every login tops its server's set up again,
// and only when logins come often enough to use them (the previous one less
// than warmMaxAge before). A gateway with no logins holds none, and one with a
// login now and then does not fill the server's log with connections that
// never log in.

// warmMaxAge is how long a warm connection may wait for a login before the
// gateway closes it. Dovecot drops a connection that has not logged in after
// 3 minutes and Exchange after one (NOTES.md); well under both, so that the
// gateway, not the server, ends them.
const warmMaxAge = 20 * time.Second

// warmSet is one server's warm connections. Each Server has its own: a reload
// builds new Servers (perhaps with another TLS setting) and closes the old
// sets.
type warmSet struct {
	want int // backend.warm_connections

	hit, miss prometheus.Counter // imapgw_backend_warm_total, set by install
	ready     prometheus.Gauge   // imapgw_backend_warm_connections: len(idle)

	mu       sync.Mutex
	idle     []warmConn // oldest first
	filling  bool       // a fill goroutine runs
	lastTake time.Time  // the last login that asked
	closed   bool
}

type warmConn struct {
	c  *Conn
	at time.Time // greeted
}

// newWarmSet returns the set for a server, or nil when it keeps none.
func newWarmSet(b *conf.Backend, clientIP string) *warmSet {
	if b.WarmConnections <= 0 || (clientIP != conf.ClientIPID && clientIP != conf.ClientIPNone) {
		return nil
	}
	return &warmSet{want: b.WarmConnections}
}

// TakeWarm returns one of s's warm connections, greeted and with its
// pre-login capabilities, with no deadline set; nil when none is ready, and
// the login dials. The connection may still have died since the check made
// here: the proxy dials afresh when it finds it closed, and treats one that
// never answers as a server that never greets. Every call tops the set up
// when logins come often enough.
func (p *Pool) TakeWarm(s *Server) *Conn {
	w := s.warm
	if w == nil {
		return nil
	}
	p.mu.RLock()
	usable := s.usable() && !s.state.removed
	p.mu.RUnlock()
	if !usable {
		return nil
	}
	now := p.now()
	c, drop, fill := w.take(now)
	for _, d := range drop {
		p.m.warm.WithLabelValues(s.Name, d.why).Inc()
		d.c.Close()
	}
	if fill {
		go p.warmFill(s, w)
	}
	if c == nil {
		w.miss.Inc()
	} else {
		w.hit.Inc()
	}
	return c
}

// dropped is a warm connection closed unused, and why (a metric label).
type dropped struct {
	c   *Conn
	why string // "expired", "stale" or "unused"
}

// warmCheckAge: a warm connection younger than this is used without looking
// at its socket first (a syscall per login). A server rarely closes a
// connection within a second of greeting, and when the login finds one
// closed, the proxy dials that server afresh.
const warmCheckAge = time.Second

// take pops the oldest live connection, returning the ones found expired or
// dead on the way (for the caller to close outside the lock), and whether to
// start a fill goroutine.
func (w *warmSet) take(now time.Time) (c *Conn, drop []dropped, fill bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for c == nil && len(w.idle) > 0 {
		wc := w.idle[0]
		copy(w.idle, w.idle[1:])
		w.idle[len(w.idle)-1] = warmConn{} // no closed connection kept reachable
		w.idle = w.idle[:len(w.idle)-1]
		age := now.Sub(wc.at)
		switch {
		case age > warmMaxAge:
			drop = append(drop, dropped{wc.c, "expired"})
		case age > warmCheckAge && !wc.c.quiet():
			drop = append(drop, dropped{wc.c, "stale"})
		default:
			c = wc.c
		}
	}
	w.ready.Set(float64(len(w.idle)))
	recent := !w.lastTake.IsZero() && now.Sub(w.lastTake) < warmMaxAge
	w.lastTake = now
	fill = recent && !w.closed && !w.filling && len(w.idle) < w.want
	w.filling = w.filling || fill
	return c, drop, fill
}

// warmFill dials until w holds want connections, one at a time, then
// returns. One goroutine per set: under a steady stream of logins it keeps
// running and keeps the stack a dial and greeting need (a goroutine per dial
// grew a fresh stack each time, which cost more than the dial saved at 8
// clients); logins that find the set empty meanwhile dial for themselves. A
// failed dial ends the fill and is only counted (outcome "failed"): the
// server's health stays the checks' and the logins' own dials' to judge, as
// without warm connections, so that a login to a dead server does not strike
// it twice.
func (p *Pool) warmFill(s *Server, w *warmSet) {
	for {
		c, err := s.Dial(p.warmCtx, netip.AddrPort{})
		if err == nil {
			c.Conn.SetDeadline(time.Time{})
		}
		w.mu.Lock()
		keep := err == nil && !w.closed
		if keep {
			w.idle = append(w.idle, warmConn{c, p.now()})
			w.ready.Set(float64(len(w.idle)))
		}
		more := keep && len(w.idle) < w.want
		w.filling = more
		w.mu.Unlock()
		switch {
		case err != nil && p.warmCtx.Err() == nil:
			p.m.warm.WithLabelValues(s.Name, "failed").Inc()
			p.log.Debug("warm connection failed", "backend", s.Name, "error", err)
		case err == nil && !keep:
			c.Close()
		}
		if !more {
			return
		}
	}
}

// sweepWarm closes the warm connections that waited too long, and all of
// those of servers no login may use now (down, draining).
func (p *Pool) sweepWarm(now time.Time) {
	p.mu.RLock()
	servers := make([]*Server, 0, len(p.servers))
	usable := make([]bool, 0, len(p.servers))
	for _, s := range p.servers {
		if s.warm != nil {
			servers = append(servers, s)
			usable = append(usable, s.usable())
		}
	}
	p.mu.RUnlock()
	for i, s := range servers {
		for _, d := range s.warm.expire(now, !usable[i]) {
			p.m.warm.WithLabelValues(s.Name, d.why).Inc()
			d.c.Close()
		}
	}
}

// expire removes the connections older than warmMaxAge, or all with all set.
func (w *warmSet) expire(now time.Time, all bool) []dropped {
	w.mu.Lock()
	defer w.mu.Unlock()
	var drop []dropped
	keep := w.idle[:0]
	for _, wc := range w.idle {
		switch {
		case all:
			drop = append(drop, dropped{wc.c, "unused"})
		case now.Sub(wc.at) > warmMaxAge:
			drop = append(drop, dropped{wc.c, "expired"})
		default:
			keep = append(keep, wc)
		}
	}
	clear(w.idle[len(keep):])
	w.idle = keep
	w.ready.Set(float64(len(keep)))
	return drop
}

// close closes the set's connections; the set takes no more.
func (w *warmSet) close() {
	w.mu.Lock()
	idle := w.idle
	w.idle, w.closed = nil, true
	w.ready.Set(0)
	w.mu.Unlock()
	for _, wc := range idle {
		wc.c.Close()
	}
}

// closeWarm closes the warm sets of servers (those a reload replaced, or all
// at Close).
func closeWarm(servers []*Server) {
	for _, s := range servers {
		if s.warm != nil {
			s.warm.close()
		}
	}
}

// Close closes the warm connections, cancels the warm dials in flight and
// makes no more. Run calls it when it returns; a pool that is never Run (the
// proxy's own, in tests) is closed by its owner.
func (p *Pool) Close() {
	p.warmCancel()
	p.mu.RLock()
	servers := p.servers
	p.mu.RUnlock()
	closeWarm(servers)
}
