package backend

import (
	"slices"
	"strings"
)

// AuthMechanisms returns the SASL mechanisms (the X of AUTH=X, upper-cased)
// that every server whose pre-login capabilities are known advertises: the
// gateway offers an OAuth mechanism only when any server a user may be routed
// to can take it. known is false while no server's capabilities are known
// (before the first health check or login).
func (p *Pool) AuthMechanisms() (mechs []string, known bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	for _, s := range p.servers {
		if s.state.caps == nil {
			continue
		}
		own := authMechs(s.state.caps)
		if !known {
			mechs, known = own, true
			continue
		}
		mechs = slices.DeleteFunc(mechs, func(m string) bool { return !slices.Contains(own, m) })
	}
	return mechs, known
}

func authMechs(caps []string) []string {
	var out []string
	for _, c := range caps {
		if len(c) > 5 && strings.EqualFold(c[:5], "AUTH=") {
			out = append(out, strings.ToUpper(c[5:]))
		}
	}
	return out
}

// NoteCaps records the pre-login capabilities a login's dial saw for s, when
// no health check has recorded any yet: a pool whose checks do not run (one
// backend, no checker) learns them from its first connection.
func (p *Pool) NoteCaps(s *Server, caps []string) {
	p.mu.RLock()
	known := s.state == nil || s.state.caps != nil
	p.mu.RUnlock()
	if known { // the common case, under the read lock only
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if s.state != nil && s.state.caps == nil && !s.state.removed {
		s.state.caps = slices.Clone(caps)
	}
}
