package backend

import (
	"context"
	"errors"
	"strings"
	"time"
)

// AffinityStore shares user pinning among the gateways of a fleet, so that
// every node sends a user to the same server and none splits a user's
// concurrent sessions (cluster/pinstore implements it on Redis). Keys are
// lower-cased users. The pool never waits on it longer than its timeout and
// routes on its own view when it fails.
type AffinityStore interface {
	// Pick returns user's pin across the fleet. When it has none, it pins
	// user to want for reserve (the login in flight), atomically, and says
	// so with Fresh: of two nodes asking at once, both get the first's
	// choice. An empty want only reads.
	Pick(ctx context.Context, user, want string, reserve time.Duration) (Pin, error)
	// Report sets this node's count of user's open sessions; server, when
	// not "", is where its latest session runs and becomes the pin. Counts
	// are leases the node renews (see Options.AffinityRefresh): a crashed
	// node's run out. Once no node has a session the pin holds for
	// affinity.
	Report(ctx context.Context, user string, sessions int, server string, affinity time.Duration) error
	// Move pins user to server for affinity: the operator's move.
	Move(ctx context.Context, user, server string, affinity time.Duration) error
}

// Pin is a user's shared affinity.
type Pin struct {
	Server   string    // "" none
	Sessions int       // open sessions across the fleet
	Until    time.Time // when the pin ends if no session is open
	Moved    bool      // set by the operator's Move
	Fresh    bool      // made by this Pick (a reservation for want)
}

const (
	defaultAffinityTimeout = 100 * time.Millisecond
	defaultAffinityRefresh = 20 * time.Second
)

// shares reports whether routing asks the fleet's store: there is one, and
// more than one server to choose from.
func (p *Pool) shares() bool { return p.store != nil && p.choice.Load() }

// sharedRoute puts the fleet's pin first in order (the usable servers, local
// choice first) when that server is usable here. On a store error or
// timeout it returns the local choice: fail open.
func (p *Pool) sharedRoute(order []*Server, key, reason string) ([]*Server, string) {
	began := time.Now()
	pin, err := p.pick(strings.Clone(key), order[0].Name)
	if err != nil {
		p.storeFailed("pick", err)
		return order, reason
	}
	p.storeOK(began)
	if pin.Fresh || pin.Server == "" {
		return order, reason
	}
	for i, s := range order {
		if s.Name == pin.Server {
			copy(order[1:i+1], order[:i])
			order[0] = s
			return order, "affinity"
		}
	}
	// Pinned to a server that is down, draining or unknown here: the local
	// choice, as for a local pin; the session's Report moves the pin.
	return order, reason
}

// pick asks the store, waiting at most storeTimeout even when the client
// ignores its context (a go-redis client without ContextTimeoutEnabled waits
// for its own read timeout): the answer then comes too late and is dropped.
func (p *Pool) pick(key, want string) (Pin, error) {
	if !p.mayAsk() {
		return Pin{}, errStoreDown
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.storeTimeout)
	defer cancel()
	type result struct {
		pin Pin
		err error
	}
	done := make(chan result, 1)
	reserve := p.reserve()
	go func() {
		pin, err := p.store.Pick(ctx, key, want, reserve)
		done <- result{pin, err}
	}()
	select {
	case r := <-done:
		return r.pin, r.err
	case <-ctx.Done():
		return Pin{}, ctx.Err()
	}
}

// sharedWhere makes us tell the fleet's pin (read only) when it decides
// the route here: its server is usable on this node.
func (p *Pool) sharedWhere(us *UserStatus, key string) {
	began := time.Now()
	pin, err := p.pick(key, "")
	if err != nil {
		p.storeFailed("pick", err)
		return
	}
	p.storeOK(began)
	if pin.Server == "" {
		return
	}
	p.mu.RLock()
	s := p.byName[pin.Server]
	usable := s != nil && s.usable()
	p.mu.RUnlock()
	if !usable {
		return
	}
	us.Backend, us.Pinned, us.Reason = pin.Server, pin.Server, "affinity"
	if pin.Moved {
		us.Reason = "moved"
	}
	us.Until = time.Time{}
	if pin.Sessions == 0 {
		us.Until = pin.Until
	}
}

// reserve is how long a fresh pin waits for its login's session: the
// longest a login takes.
func (p *Pool) reserve() time.Duration {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.cfg.ConnectTimeout.Duration + p.cfg.LoginTimeout.Duration
}

// errStoreDown answers a login's pick during an outage without asking.
var errStoreDown = errors.New("shared pinning unavailable: using this node's own view")

// storeProbeEvery spaces the logins that ask the store during an outage:
// the others take the local choice at once instead of each waiting out
// the timeout on a store that is known to be away.
const storeProbeEvery = time.Second

// mayAsk reports whether a login should ask the store: always while it
// answers, and during an outage once per storeProbeEvery (the background
// reports probe too, and either ends the outage).
func (p *Pool) mayAsk() bool {
	if !p.storeDown.Load() {
		return true
	}
	last := p.storeProbe.Load()
	now := time.Now().UnixNano()
	return now-last >= int64(storeProbeEvery) && p.storeProbe.CompareAndSwap(last, now)
}

// storeFailed logs the first failure of an outage (not one per login).
func (p *Pool) storeFailed(op string, err error) {
	if p.storeDown.CompareAndSwap(false, true) {
		p.storeDownAt.Store(time.Now().UnixNano())
		p.log.Warn("shared user pinning unavailable; routing on this node's own view", "op", op, "error", err)
	}
}

// storeOK ends an outage, unless the call that succeeded began before the
// outage was noticed: a late answer sent just before Redis froze says
// nothing about Redis now.
func (p *Pool) storeOK(began time.Time) {
	if p.storeDown.Load() && began.UnixNano() > p.storeDownAt.Load() && p.storeDown.CompareAndSwap(true, false) {
		p.log.Info("shared user pinning available again")
	}
}

// markDirty queues key's session count for the store; server, when not "",
// is where its latest session started.
func (p *Pool) markDirty(key, server string) {
	p.syncMu.Lock()
	if server != "" || p.dirty[key] == "" {
		p.dirty[key] = server
	}
	p.syncMu.Unlock()
	select {
	case p.syncWake <- struct{}{}:
	default:
	}
}

// syncLoop reports session counts to the store as they change, and every
// refresh interval renews the counts of users with open sessions (the
// leases that let a crashed node's counts run out). It never blocks a
// login: logins only mark users dirty.
func (p *Pool) syncLoop(ctx context.Context) {
	t := time.NewTicker(p.storeRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.syncWake:
		case <-t.C:
			p.mu.RLock()
			for k, u := range p.users {
				if len(u.sessions) > 0 {
					p.markDirtyLocked(k)
				}
			}
			p.mu.RUnlock()
		}
		p.flush(ctx)
	}
}

// markDirtyLocked queues a renewal of key's count without waking the loop.
func (p *Pool) markDirtyLocked(key string) {
	p.syncMu.Lock()
	if _, ok := p.dirty[key]; !ok {
		p.dirty[key] = ""
	}
	p.syncMu.Unlock()
}

// flush sends the queued counts. On the first failure the rest stay
// queued for the next tick or change.
func (p *Pool) flush(ctx context.Context) {
	p.syncMu.Lock()
	batch := p.dirty
	p.dirty = map[string]string{}
	p.syncMu.Unlock()
	p.mu.RLock()
	affinity := p.cfg.Affinity.Duration
	p.mu.RUnlock()
	for key, server := range batch {
		p.mu.RLock()
		n := 0
		if u := p.users[key]; u != nil {
			n = len(u.sessions)
		}
		p.mu.RUnlock()
		began := time.Now()
		cctx, cancel := context.WithTimeout(ctx, p.storeTimeout)
		err := p.store.Report(cctx, key, n, server, affinity)
		cancel()
		if err == nil {
			p.storeOK(began)
			delete(batch, key)
			continue
		}
		p.storeFailed("report", err)
		p.syncMu.Lock()
		for k, s := range batch {
			if cur, ok := p.dirty[k]; !ok || cur == "" && s != "" {
				p.dirty[k] = s
			}
		}
		p.syncMu.Unlock()
		return
	}
}

// sharedMove pins key to name in the store too; an error is logged.
func (p *Pool) sharedMove(key, name string, affinity time.Duration) {
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), p.storeTimeout)
	defer cancel()
	if err := p.store.Move(ctx, key, name, affinity); err != nil {
		p.storeFailed("move", err)
		return
	}
	p.storeOK(began)
}
