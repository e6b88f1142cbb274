package limiter

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Ban is one banned source prefix, as the admin API shows it.
type Ban struct {
	Prefix  netip.Prefix `json:"prefix"`
	Since   time.Time    `json:"since"`
	Until   time.Time    `json:"until"`
	Reason  string       `json:"reason"`         // ReasonFailures, ReasonSpray, or the operator's text
	Source  string       `json:"source"`         // SourceAuto or SourceManual
	Strikes int          `json:"strikes"`        // automatic bans remembered for this prefix, this one included
	Node    string       `json:"node,omitempty"` // with [cluster]: the gateway that made it
}

// Ban reasons and origins.
const (
	ReasonFailures = "failures" // bans.source_failures distinct failures in source_window
	ReasonSpray    = "spray"    // failures on bans.spray_accounts accounts in source_window
	ReasonManual   = "manual"   // AddBan without a reason

	SourceAuto   = "auto"
	SourceManual = "manual"
)

// strike is the memory of a prefix's automatic bans: n of them, the last ending
// at until. It is forgotten max_ban after until, so a source that comes back
// within max_ban of its last release gets the next step of the ladder.
type strike struct {
	n     int
	until time.Time
}

// banLength is the ladder: bans.ban for the first strike, ×4 for each next one,
// capped at bans.max_ban (15m, 1h, 4h, 16h, 64h, 168h with the defaults).
func banLength(strikes int, first, most time.Duration) time.Duration {
	d := first
	for i := 1; i < strikes && d < most; i++ {
		d *= 4
	}
	return min(d, most)
}

// strikesAt returns key's strike memory, or the zero strike when it has lapsed.
func (l *Limiter) strikesAt(key netip.Prefix, now time.Time) strike {
	s, ok := l.strikes.Peek(key)
	if !ok || !now.Before(s.until.Add(l.b.MaxBan.Duration)) {
		return strike{}
	}
	return s
}

// autoBan bans key for the next step of its ladder and resets its counters.
// It returns the ban and any ban given up to make room; callers hold mu.
func (l *Limiter) autoBan(now time.Time, key netip.Prefix, reason string) (Ban, []Ban) {
	n := l.strikesAt(key, now).n + 1
	b := Ban{
		Prefix:  key,
		Since:   now,
		Until:   now.Add(banLength(n, l.b.Ban.Duration, l.b.MaxBan.Duration)),
		Reason:  reason,
		Source:  SourceAuto,
		Strikes: n,
		Node:    l.node,
	}
	l.strikes.Add(key, strike{n: n, until: b.Until})
	l.sources.Remove(key)
	l.metrics.banned(reason)
	evicted := l.putBan(now, b)
	if l.shared != nil {
		l.shared.BanMade(b)
	}
	return b, evicted
}

// putBan stores b, making room first when the table is full; callers hold mu.
func (l *Limiter) putBan(now time.Time, b Ban) (evicted []Ban) {
	l.bans.expire(now)
	if _, ok := l.bans.byPrefix[b.Prefix]; !ok {
		evicted = l.bans.trim(tracked(l.b) - 1)
	}
	l.bans.put(b)
	l.gen++
	l.notifyLifted(evicted...)
	l.notifySet(b)
	return evicted
}

// Why CheckBan refuses an operator's ban.
var (
	ErrNotEnforced = errors.New("the ban would not be enforced")
	ErrBanTooLong  = errors.New("longer than bans.max_ban")
)

// CheckBan reports whether AddBan(ip, d, …) would make a ban that works as
// asked: an error wrapping ErrNotEnforced when ip is in bans.allow or
// bans.enabled is false (Admit would let it in anyway), ErrBanTooLong when d
// exceeds bans.max_ban, the longest ban the policy itself gives. d ≤ 0 means
// bans.ban, as in AddBan. The admin API asks before AddBan (issue 11, point 6).
func (l *Limiter) CheckBan(ip netip.Addr, d time.Duration) error {
	ip = ip.Unmap()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.b.Allow {
		if p.Contains(ip) {
			return fmt.Errorf("%w: %s is in bans.allow (%s)", ErrNotEnforced, ip, p)
		}
	}
	if !l.b.Enabled {
		return fmt.Errorf("%w: bans.enabled is false", ErrNotEnforced)
	}
	if most := l.b.MaxBan.Duration; d > most {
		return fmt.Errorf("%s is %w (%s)", d, ErrBanTooLong, most)
	}
	return nil
}

// AddBan bans ip's source prefix for d (bans.ban when d ≤ 0) on an operator's
// word. It keeps the prefix's strikes as they are: the ladder measures what
// the policy saw, not what an operator decided. bans.allow still wins at Admit.
func (l *Limiter) AddBan(ip netip.Addr, d time.Duration, reason string) Ban {
	return l.AddBanAt(l.now(), ip, d, reason)
}

// AddBanAt is AddBan at the given time.
func (l *Limiter) AddBanAt(now time.Time, ip netip.Addr, d time.Duration, reason string) Ban {
	if reason == "" {
		reason = ReasonManual
	}
	ip = ip.Unmap()
	l.mu.Lock()
	if d <= 0 {
		d = l.b.Ban.Duration
	}
	key := l.key(ip)
	b := Ban{
		Prefix:  key,
		Since:   now,
		Until:   now.Add(d),
		Reason:  reason,
		Source:  SourceManual,
		Strikes: l.strikesAt(key, now).n,
		Node:    l.node,
	}
	evicted := l.putBan(now, b)
	if l.shared != nil {
		l.shared.BanMade(b)
	}
	allowed := l.allowed(ip)
	l.metrics.banned(ReasonManual)
	l.mu.Unlock()
	l.logBan(b)
	l.logEvicted(evicted)
	if allowed {
		l.log.Warn("banned source is in bans.allow: the ban is not enforced", "prefix", key)
	}
	return b
}

// LiftBan ends the active ban covering ip and forgets that prefix's strikes and
// failures, so an operator's pardon is not followed by a longer ban at the next
// typo. It reports false when no ban covers ip.
func (l *Limiter) LiftBan(ip netip.Addr) bool {
	return l.LiftBanAt(l.now(), ip)
}

// LiftBanAt is LiftBan at the given time.
func (l *Limiter) LiftBanAt(now time.Time, ip netip.Addr) bool {
	l.mu.Lock()
	e := l.bans.lookup(ip.Unmap(), now)
	if e == nil {
		l.mu.Unlock()
		return false
	}
	b := e.Ban
	l.bans.remove(b.Prefix)
	l.strikes.Remove(b.Prefix)
	l.sources.Remove(b.Prefix)
	l.gen++
	l.notifyLifted(b)
	if l.shared != nil {
		l.shared.BanLifted(b.Prefix)
	}
	l.mu.Unlock()
	l.log.Info("ban lifted", "prefix", b.Prefix, "reason", b.Reason, "until", b.Until, "strikes", b.Strikes)
	return true
}

// Bans returns the active bans sorted by prefix.
func (l *Limiter) Bans() []Ban { return l.BansAt(l.now()) }

// BansAt is Bans at the given time.
func (l *Limiter) BansAt(now time.Time) []Ban {
	l.mu.Lock()
	l.bans.expire(now)
	out := make([]Ban, 0, l.bans.len())
	for _, e := range l.bans.byPrefix {
		out = append(out, e.Ban)
	}
	l.mu.Unlock()
	slices.SortFunc(out, func(a, b Ban) int { return a.Prefix.Compare(b.Prefix) })
	return out
}

func (l *Limiter) logBan(b Ban) {
	l.log.Info("source banned", "prefix", b.Prefix, "reason", b.Reason, "source", b.Source,
		"until", b.Until, "strikes", b.Strikes)
}

func (l *Limiter) logEvicted(bans []Ban) {
	for _, b := range bans {
		l.log.Warn("ban table at bans.max_tracked: dropped the ban ending soonest",
			"prefix", b.Prefix, "reason", b.Reason, "until", b.Until, "strikes", b.Strikes)
	}
}
