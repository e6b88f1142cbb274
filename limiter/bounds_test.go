package limiter

import "fmt"

// checkBounds reports a table grown past bans.max_tracked, or a per-entry list
// grown past its threshold, or connection counts that do not add up.
func (l *Limiter) checkBounds() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := tracked(l.b)
	sizes := map[string]int{
		"rates":    l.rates.Len(),
		"conns":    len(l.conns),
		"sources":  l.sources.Len(),
		"accounts": l.accounts.Len(),
		"good":     l.good.Len(),
		"bans":     l.bans.len(),
		"strikes":  l.strikes.Len(),
	}
	for name, size := range sizes {
		if size > n {
			return fmt.Errorf("table %s has %d entries, want at most max_tracked %d", name, size, n)
		}
	}
	if len(l.bans.ends) != l.bans.len() {
		return fmt.Errorf("ban heap has %d entries, ban map %d", len(l.bans.ends), l.bans.len())
	}
	for _, k := range l.sources.Keys() {
		if s, _ := l.sources.Peek(k); len(s.list) >= l.b.SourceFailures {
			return fmt.Errorf("source %v keeps %d failures, want fewer than %d", k, len(s.list), l.b.SourceFailures)
		}
	}
	for _, k := range l.accounts.Keys() {
		if a, _ := l.accounts.Peek(k); len(a.fails) > l.b.AccountFailures {
			return fmt.Errorf("account keeps %d failures, want at most %d", len(a.fails), l.b.AccountFailures)
		}
	}
	sum := 0
	for _, c := range l.conns {
		sum += c
	}
	if sum > l.total {
		return fmt.Errorf("per-source connections add up to %d, more than the total %d", sum, l.total)
	}
	return nil
}

// inFlight is the number of logins the source table counts in flight.
func (l *Limiter) inFlight() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, f := range l.flights {
		n += f.n
		if f.n <= 0 || len(f.users) > f.n {
			return 1 << 30 // impossible entry: more than any caller holds
		}
	}
	return n
}
