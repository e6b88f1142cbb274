package backend

import (
	"slices"
	"time"
)

// Status is one server as the admin API shows it.
type Status struct {
	Name, Address string
	Weight        int
	State         string // "up", "down", "draining"
	Sessions      int
	LastCheck     time.Time // zero before the first check
	LastError     string    // of the last failed check or data-path dial; "" after a good check
	Capabilities  []string  // pre-login, from the last good check
}

// UserStatus is where a user's next login goes and why.
type UserStatus struct {
	User     string    // lower-cased
	Backend  string    // where a login goes now ("" none up)
	Reason   string    // "affinity", "map", "hash", "first", "moved"
	Sessions int       // open sessions
	Pinned   string    // server of the affinity, if any
	Until    time.Time // affinity expiry when no session is open
}

// Servers returns every configured server in config order.
func (p *Pool) Servers() []Status {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make([]Status, 0, len(p.servers))
	for _, s := range p.servers {
		st := s.state
		out = append(out, Status{Name: s.Name, Address: s.Address, Weight: s.Weight,
			State: st.stateName(), Sessions: len(st.sessions), LastCheck: st.lastCheck,
			LastError: st.lastErr, Capabilities: slices.Clone(st.caps)})
	}
	return out
}

func (st *serverState) stateName() string {
	switch {
	case st.draining:
		return "draining"
	case st.up:
		return "up"
	default:
		return "down"
	}
}

// Drain stops new logins to name (users with sessions there move on their
// next login); with kick its sessions are closed too. Draining lasts until
// Undrain, across reloads.
func (p *Pool) Drain(name string, kick bool) error {
	p.mu.Lock()
	s := p.byName[name]
	if s == nil {
		p.mu.Unlock()
		return ErrUnknownServer
	}
	s.state.draining = true
	var list []*session
	if kick {
		list = take(s.state.sessions, func(*session) bool { return true })
	}
	p.mu.Unlock()
	n := closeAll(list, "backend "+name+" drained with kick by the operator")
	p.log.Info("backend draining", "backend", name, "kick", kick, "closed", n)
	return nil
}

// Undrain lets logins reach name again.
func (p *Pool) Undrain(name string) error {
	p.mu.Lock()
	s := p.byName[name]
	if s != nil {
		s.state.draining = false
	}
	p.mu.Unlock()
	if s == nil {
		return ErrUnknownServer
	}
	p.log.Info("backend undrained", "backend", name)
	return nil
}
