package proxy

import (
	"bytes"
	"errors"
	"strings"
	"time"

	"github.com/imapgw/imapgw/backend"
	"github.com/imapgw/imapgw/limiter"
)

// tryLogin asks the policy, logs in to the backend and answers the client. It
// writes exactly one structured log line per decision (the line fail2ban-style
// tooling greps), never with the password.
func (s *session) tryLogin(tag string, c creds) (relaying, done bool) {
	start := time.Now()
	s.setUser(c.user)
	if strings.ContainsAny(c.user, "\x00\r\n") || bytes.IndexByte(c.password, 0) >= 0 {
		s.writef("%s BAD NUL, CR and LF are not allowed in credentials\r\n", tag)
		return false, false
	}
	att, err := s.srv.policy.Try(s.client.Addr(), c.user)
	if err != nil {
		s.srv.refusals.auth(s, c, err, start)
		return false, s.refuse(tag, err)
	}
	// Every outcome ends the reservation: Failed and Succeeded below, Done for
	// the rest (backend error, other codes, client gone, shutdown, panic).
	defer att.Done()
	res := s.backendLogin(s.srv.ctx, c)
	server := serverName(res.server)
	switch res.outcome {
	case outcomeOK:
		if err := att.Succeeded(); err != nil { // banned while in flight
			res.bc.conn.Close()
			// Rare and telling (the attacker may hold the password): never summarised.
			s.logAuth(c, server, outcomeRefused, err.Error()+"; the backend accepted the login, closed unused", start)
			return false, s.refuse(tag, err)
		}
		return s.loggedIn(tag, c, res, start)
	case outcomeFailed:
		return false, s.loginFailed(tag, c, server, res, att, start)
	case outcomeRejected:
		s.logAuth(c, server, res.outcome, res.st.String(), start)
		s.writef("%s NO [%s] %s\r\n", tag, sanitize(res.st.Code, 40), sanitize(res.st.Text, 200))
	default:
		outcome, reason := outcomeUnavailable, "backend error"
		if res.outcome == outcomeTimeout {
			// Its own outcome: a backend too slow for login_timeout is not down,
			// and the operator must see it (issue 10). Not a failure for the policy.
			outcome = outcomeTimeout
		}
		if res.err != nil {
			reason = res.err.Error()
		}
		s.logAuth(c, server, outcome, reason, start)
		s.writef("%s NO [UNAVAILABLE] Mail server unavailable; try again later\r\n", tag)
	}
	return false, false
}

// serverName names the server in the auth line; empty when none was dialed.
func serverName(srv *backend.Server) string {
	if srv == nil {
		return ""
	}
	return srv.Name
}

func (s *session) loggedIn(tag string, c creds, res loginResult, start time.Time) (bool, bool) {
	caps := res.bc.postLoginCaps(&res)
	var out strings.Builder
	for _, u := range res.untagged {
		out.WriteString(u + "\r\n")
	}
	if caps != "" {
		out.WriteString(tag + " OK [CAPABILITY " + caps + "] Logged in\r\n")
	} else {
		out.WriteString(tag + " OK Logged in\r\n")
	}
	s.logAuth(c, res.server.Name, outcomeOK, "", start)
	// The pool learns of the session before the client hears OK, so that a
	// drain -kick, move or kick arriving meanwhile finds it and closes both
	// sockets (the write below or the relay then ends at once) instead of
	// missing a session that starts on a server being emptied.
	s.mu.Lock()
	s.peer = res.bc.conn
	s.mu.Unlock()
	s.poolEnd = s.srv.pool.SessionStarted(c.mailbox(), res.bc.server, s.closeBy)
	if err := s.write(out.String()); err != nil {
		res.bc.conn.Close()
		s.poolEnd()
		return false, true
	}
	s.startRelay(res.bc)
	return true, true
}

// loginFailed answers a failed login after the policy's delay. It reports
// whether the session is over (too many failures, or the source is now banned).
func (s *session) loginFailed(tag string, c creds, server string, res loginResult, att *limiter.Attempt, start time.Time) bool {
	v := att.Failed(c.password)
	reason := res.st.String()
	if v.Banned {
		reason += "; source banned: " + v.Reason
	}
	s.logAuth(c, server, outcomeFailed, reason, start)
	if !s.sleep(v.Delay) {
		s.bye("Server shutting down")
		return true
	}
	s.writef("%s NO [AUTHENTICATIONFAILED] Authentication failed\r\n", tag)
	s.failures++
	if v.Banned || s.failures >= s.cfg.Limits.MaxAuthFailuresPerConnection {
		s.bye("Too many failed logins")
		return true
	}
	return false
}

// refuse answers a login the policy refused, before it reached the backend or
// (banned while in flight) after: like a failure, after the policy's delay and
// counted toward max_auth_failures_per_connection, so pipelining refused
// logins costs the client time and ends the connection at the cap (issue 11,
// point 2). It reports whether the session is over.
func (s *session) refuse(tag string, err error) bool {
	var r *limiter.Refusal
	errors.As(err, &r)
	if r != nil && !s.sleep(r.Delay) {
		s.bye("Server shutting down")
		return true
	}
	// UNAVAILABLE (RFC 5530): mail apps retry later instead of asking their
	// user for a new password.
	s.writef("%s NO [UNAVAILABLE] Too many failed logins; try again later\r\n", tag)
	s.failures++
	if errors.Is(err, limiter.ErrBanned) || s.failures >= s.cfg.Limits.MaxAuthFailuresPerConnection {
		s.bye("Too many failed logins")
		return true
	}
	return false
}

// sleep waits d unless the server shuts down first.
func (s *session) sleep(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.srv.ctx.Done():
		return false
	}
}

// logAuth writes the one line per auth decision.
func (s *session) logAuth(c creds, backend, outcome, reason string, start time.Time) {
	s.countAuth(outcome, start)
	args := []any{"ip", s.client.Addr().String(), "user", sanitize(c.user, 256), "mech", c.mech, "outcome", outcome}
	if backend != "" {
		args = append(args, "backend", backend)
	}
	if reason != "" {
		args = append(args, "reason", sanitize(reason, 256))
	}
	args = append(args, "duration", time.Since(start).Round(time.Microsecond))
	s.logInfo("auth", args...)
}

// countAuth counts one auth decision in the metrics; logAuth calls it, and so
// do refusals that are logged only in summary.
func (s *session) countAuth(outcome string, start time.Time) {
	s.srv.m.login(outcome)
	s.srv.m.loginSeconds.Observe(time.Since(start).Seconds())
}

func (s *session) setUser(u string) {
	s.mu.Lock()
	s.user = u
	s.mu.Unlock()
}

func (s *session) setBackend(b string) {
	s.mu.Lock()
	s.backend = b
	s.mu.Unlock()
}
