package backend

import "time"

// Status is one server as the admin API shows it.
type Status struct {
	Name, Address string
	Weight        int
	State         string // "up", "down", "draining"
	Sessions      int
	LastCheck     time.Time
	LastError     string
	Capabilities  []string
}

// UserStatus is where a user's next login goes and why.
type UserStatus struct {
	User     string
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
		out = append(out, Status{Name: s.Name, Address: s.Address, Weight: s.Weight, State: "up"})
	}
	return out
}

// Drain stops new logins to name; with kick its sessions are closed too.
func (p *Pool) Drain(name string, kick bool) error { return nil }

// Undrain lets logins reach name again.
func (p *Pool) Undrain(name string) error { return nil }

// Where tells where user's next login goes, and its sessions and affinity.
func (p *Pool) Where(user string) UserStatus { return UserStatus{User: user} }

// Move closes user's sessions and pins it to name for backend.affinity.
func (p *Pool) Move(user, name string) error { return nil }

// Kick closes user's sessions and returns how many there were.
func (p *Pool) Kick(user string) int { return 0 }
