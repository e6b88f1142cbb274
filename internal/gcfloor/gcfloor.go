// Package gcfloor keeps Go's garbage collector from running on a tiny heap.
//
// At the runtime's default (GOGC=100) a collection starts each time the heap
// has grown by its live size since the last one. A gateway's live heap is
// small — a few MB, plus about 8 KB per open session — while every TLS
// handshake leaves tens of KB of garbage behind: under a stream of logins a
// small gateway collected many times a second, and paid for it far beyond the
// mark work itself (assists, stacks shrunk and regrown, caches refilled). The
// bench's login cycle, imapgw alone, cost 25 % more CPU at 64 clients (784 µs
// at GOGC=100, 585 µs with a 16 MB floor, 580 µs with 64 MB; the same at 2
// and 8 clients).
//
// Start lets the heap grow by at least a floor between collections: after each
// collection it sets the GC percentage to floor/live while the live heap is
// below the floor, and back to 100 above it, where memory grows in proportion
// to the sessions as before. The cost is at most the floor in extra heap; the
// gateway's trim after a burst of sessions (proxy/trim.go) still returns what
// is free to the system. An operator who sets GOGC has decided: Start then
// does nothing.
package gcfloor

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// DefaultFloor is the heap growth allowed between collections when the live
// heap is small: 16 MB did as well as 64 MB at 64 clients and better at 8,
// with a quarter of the memory.
const DefaultFloor = 16 << 20

// Start tunes the collector until stop is called, which restores the
// percentage the process started with. It does nothing when GOGC is set.
func Start(floor uint64) (stop func()) {
	if _, set := os.LookupEnv("GOGC"); set || floor == 0 {
		return func() {}
	}
	t := &tuner{floor: floor, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
	t.base = debug.SetGCPercent(100)
	t.percent.Store(100)
	t.adjust()
	t.arm()
	return func() {
		t.stopped.Store(true)
		debug.SetGCPercent(t.base)
	}
}

type tuner struct {
	floor   uint64
	base    int
	sample  []metrics.Sample // used only by the finalizer goroutine (one at a time) and Start
	percent atomic.Int64
	stopped atomic.Bool
}

// sentinel is garbage on purpose: its finalizer runs after the collection
// that found it unreachable, which is how the tuner hears of each collection.
type sentinel struct{ t *tuner }

func (t *tuner) arm() {
	s := &sentinel{t: t}
	runtime.SetFinalizer(s, func(s *sentinel) {
		if s.t.stopped.Load() {
			return
		}
		s.t.adjust()
		s.t.arm()
	})
}

// adjust sets the percentage for the live heap the last collection left.
func (t *tuner) adjust() {
	metrics.Read(t.sample)
	if t.sample[0].Value.Kind() != metrics.KindUint64 {
		return
	}
	p := Percent(t.sample[0].Value.Uint64(), t.floor)
	// Changing it has a cost (the heap goal is recomputed under the heap
	// lock): only when it moves by more than a tenth.
	if old := t.percent.Load(); p*10 < old*9 || p*10 > old*11 {
		t.percent.Store(p)
		debug.SetGCPercent(int(p))
	}
}

// minLive is the smallest live heap the percentage is computed for: the
// runtime's own minimum heap (4 MB). Before the first collection the live heap
// reads 0, and a percentage for a nearly empty heap would let the first cycle
// grow to hundreds of MB of freshly faulted pages.
const minLive = 4 << 20

// Percent is the GC percentage that lets a heap of live bytes grow by at
// least floor before the next collection, and never less than the default.
func Percent(live, floor uint64) int64 {
	p := int64(floor * 100 / max(live, minLive))
	return max(p, 100)
}
