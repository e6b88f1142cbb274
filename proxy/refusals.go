package proxy

import (
	"net/netip"
	"sync"
	"time"
)

// Refused logins are logged in summary (issue 11, point 2): a client
// pipelining LOGIN against a protected account, or fifty connections doing so,
// must not drown the auth lines operators and fail2ban-style tools read. The
// first refusal of an address in an interval is logged at once as its auth
// line; the others in that interval are counted and logged as one line when
// the interval ends. The table is bounded: addresses beyond it share one
// overflow count. Its lock is its own, never the policy's.
const (
	refusalEvery = time.Minute      // one auth line per address per this, plus one summary
	refusalSweep = 10 * time.Second // how often ended intervals are summarised
	refusalMax   = 4096             // addresses tracked; beyond, one shared count
)

// refusalLog is the table of addresses refused in the current interval.
type refusalLog struct {
	mu       sync.Mutex
	m        map[netip.Addr]*refusalCount
	overflow refusalCount // refusals of addresses the full table could not take
}

// refusalCount is one address's refusals not logged yet, since its interval began.
type refusalCount struct {
	since  time.Time
	n      int
	user   string // the latest, for the summary line
	reason string
}

// refusalSummary is one summary line to write.
type refusalSummary struct {
	ip netip.Addr // invalid for the overflow count
	refusalCount
}

// note records a refusal of ip at now. It reports whether to log it in full
// (the first of its interval), and the summary of an interval that has ended
// and was not swept yet.
func (r *refusalLog) note(now time.Time, ip netip.Addr, user, reason string) (logIt bool, ended *refusalSummary) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[netip.Addr]*refusalCount{}
	}
	e := r.m[ip]
	switch {
	case e == nil && len(r.m) >= refusalMax:
		r.overflow.add(now, user, reason)
		return false, nil
	case e == nil:
		r.m[ip] = &refusalCount{since: now}
		return true, nil
	case now.Sub(e.since) >= refusalEvery:
		if e.n > 0 {
			ended = &refusalSummary{ip: ip, refusalCount: *e}
		}
		*e = refusalCount{since: now}
		return true, ended
	}
	e.add(now, user, reason)
	return false, nil
}

func (c *refusalCount) add(now time.Time, user, reason string) {
	if c.n == 0 && c.since.IsZero() {
		c.since = now
	}
	c.n++
	c.user, c.reason = user, reason
}

// sweep removes the intervals ended by now and returns the summaries of those
// with refusals not logged.
func (r *refusalLog) sweep(now time.Time) []refusalSummary {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []refusalSummary
	for ip, e := range r.m {
		if now.Sub(e.since) < refusalEvery {
			continue
		}
		if e.n > 0 {
			out = append(out, refusalSummary{ip: ip, refusalCount: *e})
		}
		delete(r.m, ip)
	}
	if r.overflow.n > 0 && now.Sub(r.overflow.since) >= refusalEvery {
		out = append(out, refusalSummary{refusalCount: r.overflow})
		r.overflow = refusalCount{}
	}
	return out
}

// auth counts a refused login and logs it in full or in summary.
func (r *refusalLog) auth(s *session, c creds, err error, start time.Time) {
	logIt, ended := r.note(time.Now(), s.client.Addr(), c.user, err.Error())
	if ended != nil {
		s.srv.logRefusals(*ended)
	}
	if logIt {
		s.logAuth(c, "", outcomeRefused, err.Error(), start)
		return
	}
	s.countAuth(outcomeRefused, start)
}

// logRefusals writes one summary line: count refusals not logged one by one.
func (s *Server) logRefusals(sum refusalSummary) {
	ip := "other addresses" // the overflow count
	if sum.ip.IsValid() {
		ip = sum.ip.String()
	}
	s.log.Info("auth refusals", "ip", ip, "user", sanitize(sum.user, 256), "outcome", outcomeRefused,
		"count", sum.n, "since", sum.since.UTC().Format(time.RFC3339), "reason", sanitize(sum.reason, 256))
}

// refusalLoop writes the summaries of ended intervals until shutdown, then
// those still pending.
func (s *Server) refusalLoop() {
	defer s.wg.Done()
	t := time.NewTicker(refusalSweep)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			for _, sum := range s.refusals.sweep(time.Now().Add(refusalEvery)) {
				s.logRefusals(sum)
			}
			return
		case now := <-t.C:
			for _, sum := range s.refusals.sweep(now) {
				s.logRefusals(sum)
			}
		}
	}
}
