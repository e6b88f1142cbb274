package admin

import (
	"sync"
	"time"
)

// ringMinutes is how many minutes of login outcomes the status page shows.
const ringMinutes = 30

// loginRing keeps per-minute counts of login outcomes, made from snapshots of
// the cumulative imapgw_logins_total: Prometheus keeps the long history, the
// page only shows what happened just now.
type loginRing struct {
	mu   sync.Mutex
	mins []minuteCount // oldest first, at most ringMinutes
}

type minuteCount struct {
	Minute     time.Time
	begin, end map[string]uint64 // totals at the end of the previous minute, at the last sample
}

// record takes a snapshot of the totals at now. Logins between the previous
// sample and now are counted in now's minute.
func (r *loginRing) record(now time.Time, totals map[string]uint64) {
	m := now.Truncate(time.Minute)
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := len(r.mins); n > 0 && r.mins[n-1].Minute.Equal(m) {
		r.mins[n-1].end = totals
		return
	}
	begin := totals // the first sample: nothing before it is known per minute
	if n := len(r.mins); n > 0 {
		begin = r.mins[n-1].end
	}
	r.mins = append(r.mins, minuteCount{Minute: m, begin: begin, end: totals})
	if len(r.mins) > ringMinutes {
		r.mins = r.mins[len(r.mins)-ringMinutes:]
	}
}

// perMinute returns the counts of the last ringMinutes minutes up to now's,
// oldest first; minutes with no sample count zero.
func (r *loginRing) perMinute(now time.Time) []loginMinute {
	last := now.Truncate(time.Minute)
	out := make([]loginMinute, ringMinutes)
	for i := range out {
		out[i] = loginMinute{Minute: last.Add(-time.Duration(ringMinutes-1-i) * time.Minute), Counts: map[string]uint64{}}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, mc := range r.mins {
		i := ringMinutes - 1 - int(last.Sub(mc.Minute)/time.Minute)
		if i < 0 || i >= ringMinutes {
			continue
		}
		for k, v := range mc.end {
			if b := mc.begin[k]; v > b { // a counter never goes back; guard anyway
				out[i].Counts[k] = v - b
			}
		}
	}
	return out
}

// loginMinute is one minute's logins by outcome.
type loginMinute struct {
	Minute time.Time
	Counts map[string]uint64
}
