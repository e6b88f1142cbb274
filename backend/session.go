package backend

import (
	"strings"
	"sync"
	"time"
)

// session is one relayed session, as proxy reported it.
type session struct {
	key     string // lower-cased user
	server  *Server
	state   *serverState // server.state when it started (a reload may retire it)
	closeFn func(reason string)
	closing bool // closeFn was called
}

// userState is a user's open sessions and affinity. The affinity holds while
// a session is open and until `until` after the last one ended.
type userState struct {
	sessions map[*session]struct{}
	pin      string    // server of the latest session, or of a Move
	until    time.Time // with no session open: when the affinity ends
	moved    bool      // pin comes from Move
}

func (u *userState) pinned(now time.Time) bool {
	return len(u.sessions) > 0 || now.Before(u.until)
}

// user returns key's state, creating it. p.mu is held for writing.
func (p *Pool) user(key string) *userState {
	u := p.users[key]
	if u == nil {
		u = &userState{sessions: map[*session]struct{}{}}
		p.users[key] = u
	}
	return u
}

// SessionStarted records a relayed session of user on s; closeFn closes both
// of its sockets (used by drain with kick, Move and Kick) and gets the reason
// to log. The returned func ends the session (the affinity then lasts
// backend.affinity); calling it more than once is harmless.
func (p *Pool) SessionStarted(user string, s *Server, closeFn func(reason string)) (end func()) {
	sess := &session{key: strings.ToLower(user), server: s, closeFn: closeFn}
	p.mu.Lock()
	sess.state = s.state
	u := p.user(sess.key)
	u.sessions[sess] = struct{}{}
	u.pin, u.moved = s.Name, false
	sess.state.sessions[sess] = struct{}{}
	sess.state.gauge.Inc() // under p.mu: a reload may delete the series
	p.mu.Unlock()
	if p.shares() {
		p.markDirty(sess.key, s.Name)
	}
	var once sync.Once
	return func() { once.Do(func() { p.endSession(sess) }) }
}

func (p *Pool) endSession(sess *session) {
	if p.shares() {
		defer p.markDirty(sess.key, "")
	}
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if u := p.users[sess.key]; u != nil {
		delete(u.sessions, sess)
		if len(u.sessions) == 0 {
			u.until = now.Add(p.cfg.Affinity.Duration)
		}
	}
	st := sess.state
	delete(st.sessions, sess)
	if st.removed && len(st.sessions) == 0 && p.states[st.name] == nil {
		p.m.sessions.DeleteLabelValues(st.name)
		return
	}
	st.gauge.Dec()
}

// closeAll calls the closeFn of sessions not closing yet, outside p.mu: a
// closeFn may end its session at once. It returns how many it closed.
func closeAll(list []*session, reason string) int {
	for _, s := range list {
		s.closeFn(reason)
	}
	return len(list)
}

// take marks the sessions of set that match keep as closing and returns them.
// p.mu is held for writing.
func take(set map[*session]struct{}, keep func(*session) bool) []*session {
	var out []*session
	for s := range set {
		if !s.closing && keep(s) {
			s.closing = true
			out = append(out, s)
		}
	}
	return out
}

// Where tells where user's next login goes and why, its open sessions and
// its affinity.
func (p *Pool) Where(user string) UserStatus {
	key := strings.ToLower(user)
	us := p.where(key)
	if p.store != nil {
		p.sharedWhere(&us, key)
	}
	return us
}

// where is Where on this node's own view.
func (p *Pool) where(key string) UserStatus {
	now := p.now()
	p.mu.RLock()
	defer p.mu.RUnlock()
	us := UserStatus{User: key}
	var buf [maxStackScores]*Server
	order, reason := p.route(buf[:0], key, now)
	if len(order) > 0 {
		us.Backend, us.Reason = order[0].Name, reason
	}
	if u := p.users[key]; u != nil && u.pinned(now) {
		us.Sessions, us.Pinned = len(u.sessions), u.pin
		if us.Sessions == 0 {
			us.Until = u.until
		}
		if u.moved && reason == "affinity" {
			us.Reason = "moved"
		}
	}
	return us
}

// Move closes user's sessions on other servers than name and pins it to
// name for backend.affinity: its next logins go there while name is up and
// not draining. Sessions already on name stay.
func (p *Pool) Move(user, name string) error {
	key := strings.ToLower(user)
	now := p.now()
	p.mu.Lock()
	if p.byName[name] == nil {
		p.mu.Unlock()
		return ErrUnknownServer
	}
	u := p.user(key)
	u.pin, u.moved, u.until = name, true, now.Add(p.cfg.Affinity.Duration)
	list := take(u.sessions, func(s *session) bool { return s.server.Name != name })
	affinity := p.cfg.Affinity.Duration
	p.mu.Unlock()
	if p.store != nil {
		p.sharedMove(key, name, affinity)
	}
	n := closeAll(list, "moved to backend "+name+" by the operator")
	p.log.Info("user moved", "user", key, "backend", name, "closed", n)
	return nil
}

// Kick closes user's sessions and returns how many there were. Its affinity
// stays.
func (p *Pool) Kick(user string) int {
	key := strings.ToLower(user)
	p.mu.Lock()
	var list []*session
	if u := p.users[key]; u != nil {
		list = take(u.sessions, func(*session) bool { return true })
	}
	p.mu.Unlock()
	n := closeAll(list, "kicked by the operator")
	p.log.Info("user kicked", "user", key, "closed", n)
	return n
}

// sweep forgets users with no session and an expired affinity.
func (p *Pool) sweep(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, u := range p.users {
		if !u.pinned(now) {
			delete(p.users, k)
		}
	}
}
