package limiter

import (
	"net/netip"
	"time"
)

// SourceInfo is what the policy knows about one source, for the admin API.
type SourceInfo struct {
	Prefix         netip.Prefix `json:"prefix"`                 // the source key the address falls in
	Allowed        bool         `json:"allowed"`                // in bans.allow: never limited or banned
	Ban            *Ban         `json:"ban,omitempty"`          // the active ban covering it
	Strikes        int          `json:"strikes"`                // automatic bans remembered
	StrikesUntil   time.Time    `json:"strikes_until,omitzero"` // when that memory lapses
	Connections    int          `json:"connections"`            // open now
	RateTokens     float64      `json:"rate_tokens"`            // connections it may open at once right now
	Failures       int          `json:"failures"`               // distinct failed logins in source_window
	FailedAccounts int          `json:"failed_accounts"`        // distinct accounts among them
	InFlight       int          `json:"in_flight"`              // logins reserved by Try and not answered yet
	BansEnabled    bool         `json:"bans_enabled"`           // bans.enabled
}

// Source reports what the policy knows about ip's source prefix. It only
// looks: no table's recency or content changes.
func (l *Limiter) Source(ip netip.Addr) SourceInfo { return l.SourceAt(l.now(), ip) }

// SourceAt is Source at the given time.
func (l *Limiter) SourceAt(now time.Time, ip netip.Addr) SourceInfo {
	ip = ip.Unmap()
	l.mu.Lock()
	defer l.mu.Unlock()
	key := l.key(ip)
	in := SourceInfo{
		Prefix:      key,
		Allowed:     l.allowed(ip),
		Connections: l.conns[key],
		InFlight:    l.flights[key].count(),
		RateTokens:  float64(burst(l.lim.ConnectionRate)),
		BansEnabled: l.b.Enabled,
	}
	if e := l.bans.lookup(ip, now); e != nil {
		b := e.Ban
		in.Ban = &b
	}
	if s := l.strikesAt(key, now); s.n > 0 {
		in.Strikes, in.StrikesUntil = s.n, s.until.Add(l.b.MaxBan.Duration)
	}
	if r, ok := l.rates.Peek(key); ok {
		in.RateTokens = r.TokensAt(now)
	}
	if s, ok := l.sources.Peek(key); ok {
		cutoff := now.Add(-l.b.SourceWindow.Duration).UnixNano()
		live := sourceFailures{}
		for _, f := range s.list {
			if f.at >= cutoff {
				live.list = append(live.list, f)
			}
		}
		in.Failures, in.FailedAccounts = len(live.list), live.accounts()
	}
	return in
}
