package limiter

import (
	"math"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Admit decides at accept, before any TLS, whether src may open a connection.
// On success the caller must call release once when the connection ends (later
// calls do nothing). On refusal err is ErrBanned, ErrRate, ErrSourceLimit or
// ErrGatewayFull, and release is a no-op so `defer release()` is always safe.
//
// bans.allow sources skip bans, the rate and the per-source cap, but count
// toward limits.max_connections like everyone else: the global cap protects the
// process, not the policy. With bans.enabled = false bans are not enforced but
// the connection limits are.
func (l *Limiter) Admit(src netip.Addr) (release func(), err error) {
	return l.AdmitAt(l.now(), src)
}

// AdmitAt is Admit at the given time.
func (l *Limiter) AdmitAt(now time.Time, src netip.Addr) (func(), error) {
	src = src.Unmap()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.allowed(src) {
		if l.total >= l.lim.MaxConnections {
			return noRelease, ErrGatewayFull
		}
		l.total++
		return (&ticket{l: l}).release, nil
	}
	if l.b.Enabled && l.bans.lookup(src, now) != nil {
		return noRelease, ErrBanned
	}
	key := l.key(src)
	if !l.rateAllows(now, key) {
		return noRelease, ErrRate
	}
	if err := l.reserve(key); err != nil {
		return noRelease, err
	}
	return (&ticket{l: l, key: key, counted: true}).release, nil
}

// rateAllows takes one token from key's bucket. A bucket missing from the table
// is full, so a source evicted by a flood of others loses nothing it had saved.
func (l *Limiter) rateAllows(now time.Time, key netip.Prefix) bool {
	lim, ok := l.rates.Get(key)
	if !ok {
		lim = rate.NewLimiter(rate.Limit(l.lim.ConnectionRate), burst(l.lim.ConnectionRate))
		l.rates.Add(key, lim)
	}
	return lim.AllowN(now, 1)
}

// burst is the bucket size for a connection rate: ceil(rate), at least 1, so a
// client may open one second's worth of connections at once (a mail client
// opening its folders in parallel) and a rate below 1/s still admits one.
func burst(r float64) int {
	return max(1, int(math.Ceil(r)))
}

// reserve counts one more connection for key, or says which cap refuses it.
// The per-source table never holds more than bans.max_tracked sources: past
// that, a new source is refused as if the gateway were full.
func (l *Limiter) reserve(key netip.Prefix) error {
	n, ok := l.conns[key]
	switch {
	case n >= l.lim.MaxConnectionsPerSource:
		return ErrSourceLimit
	case l.total >= l.lim.MaxConnections:
		return ErrGatewayFull
	case !ok && len(l.conns) >= tracked(l.b):
		return ErrGatewayFull
	}
	l.conns[key] = n + 1
	l.total++
	return nil
}

func noRelease() {}

// ticket is one admitted connection; release gives its slots back once.
type ticket struct {
	l       *Limiter
	key     netip.Prefix
	counted bool // counted in conns (false for allow-listed sources)
	done    atomic.Bool
}

func (t *ticket) release() {
	if t.done.Swap(true) {
		return
	}
	l := t.l
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if !t.counted {
		return
	}
	if n := l.conns[t.key] - 1; n > 0 {
		l.conns[t.key] = n
	} else {
		delete(l.conns, t.key)
	}
}
