package proxy

import (
	"runtime/debug"
	"time"
)

// Returning memory after a burst. Idle IMAP sessions allocate nothing, so no
// garbage collection runs once a burst of logins is over: the handshakes'
// garbage stays in the heap, and the relay goroutines keep the large stacks
// they started with (the runtime sizes new stacks by the average, which TLS
// handshakes inflate; stacks shrink only during a collection). One collection
// and release when the burst ends brings the resident size down to what the
// idle sessions really hold.
//
// The burst has ended when no session has started for trimQuiet. A trim is a
// forced collection and a release of every free page, and the next burst
// faults those pages back in: bursts of logins a second or two apart (a wave
// of reconnecting clients, pollers' rounds, make bench's proxies taking turns
// in 1 s slices) paid that every time. Ending a burst after one quiet second
// cost 2–21 % more CPU per login cycle at 2 clients and 1–9 % at 64 in the
// bench's turn-taking login measurement (2 runs of 3 rounds against this
// rule). Memory back five seconds after a burst is as good to an operator as
// one second after.
const (
	trimEvery = time.Second     // how often the trimmer looks
	trimQuiet = 5 * time.Second // no new session for this long ends a burst
	trimAfter = 256             // sessions started since the last trim that make one worth it
)

// trimLoop frees memory once a burst of at least trimAfter new sessions has been
// followed by trimQuiet with none.
func (s *Server) trimLoop() {
	defer s.wg.Done()
	t := time.NewTicker(trimEvery)
	defer t.Stop()
	var tr trimmer
	for {
		select {
		case <-s.ctx.Done():
			return
		case now := <-t.C:
			if !tr.due(now, s.started.Load()) {
				continue
			}
			start := time.Now()
			debug.FreeOSMemory()
			s.log.Debug("memory returned after a burst of sessions", "sessions", tr.trimmed, "took", time.Since(start))
		}
	}
}

// trimmer decides when a burst of sessions has ended.
type trimmer struct {
	seen    uint64    // sessions started at the last look
	moved   time.Time // when seen last changed
	trimmed uint64    // sessions started at the last trim
}

// due reports whether to trim now, given the sessions started so far; a true
// answer counts as the trim.
func (t *trimmer) due(now time.Time, started uint64) bool {
	if started != t.seen || t.moved.IsZero() {
		t.seen, t.moved = started, now
		return false
	}
	if now.Sub(t.moved) < trimQuiet || started-t.trimmed < trimAfter {
		return false
	}
	t.trimmed = started
	return true
}

// sessionStarted counts a session for the trimmer.
func (s *Server) sessionStarted() { s.started.Add(1) }
