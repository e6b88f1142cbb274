package limiter

import (
	"net/netip"
	"time"
)

// BanListener hears of every change to the bans the limiter enforces, so that
// another layer can enforce them too (the firewall package puts them in the
// kernel; issue 15). BanSet is called when a prefix is banned or its ban
// changes (a new ladder step, an operator's new duration); BanLifted when a
// ban ends early: lifted by an operator, or given up to make room in a full
// table. A ban that simply runs out is not reported: until says when.
// Prefixes that overlap bans.allow are never reported.
//
// Both are called with the limiter's lock held, in the order the changes
// happen: they must not block or call back into the Limiter (queue the
// change and apply it elsewhere).
type BanListener interface {
	BanSet(prefix netip.Prefix, until time.Time)
	BanLifted(prefix netip.Prefix)
}

// SetBanListener makes bl hear of every later change (nil: nobody) and returns
// the bans in force now that it would have heard of, in the same critical
// section: nothing happens between the two, so a listener that starts from
// this list and then applies its queue misses nothing.
func (l *Limiter) SetBanListener(bl BanListener) []Ban {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.listener = bl
	l.bans.expire(now)
	var out []Ban
	for _, e := range l.bans.byPrefix {
		if l.enforceable(e.Prefix) {
			out = append(out, e.Ban)
		}
	}
	return out
}

// enforceable reports whether a ban on p may be enforced outside the limiter:
// not when any part of p is in bans.allow (a /24 ban must not drop an
// allow-listed /32 in it). Callers hold mu.
func (l *Limiter) enforceable(p netip.Prefix) bool {
	for _, a := range l.b.Allow {
		if a.Overlaps(p) {
			return false
		}
	}
	return true
}

// notifySet and notifyLifted tell the listener, if any; callers hold mu.
func (l *Limiter) notifySet(b Ban) {
	if l.listener != nil && l.enforceable(b.Prefix) {
		l.listener.BanSet(b.Prefix, b.Until)
	}
}

func (l *Limiter) notifyLifted(bans ...Ban) {
	if l.listener == nil {
		return
	}
	for _, b := range bans {
		if l.enforceable(b.Prefix) {
			l.listener.BanLifted(b.Prefix)
		}
	}
}
