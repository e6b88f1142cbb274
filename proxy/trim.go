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
const (
	trimEvery = time.Second // how often the trimmer looks
	trimAfter = 256         // sessions started since the last trim that make one worth it
)

// trimLoop frees memory once a burst of at least trimAfter new sessions has been
// followed by a quiet trimEvery with none.
func (s *Server) trimLoop() {
	defer s.wg.Done()
	t := time.NewTicker(trimEvery)
	defer t.Stop()
	var last, seen uint64
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		now := s.started.Load()
		quiet := now == seen
		seen = now
		if quiet && now-last >= trimAfter {
			last = now
			start := time.Now()
			debug.FreeOSMemory()
			s.log.Debug("memory returned after a burst of sessions", "sessions", now, "took", time.Since(start))
		}
	}
}

// sessionStarted counts a session for the trimmer.
func (s *Server) sessionStarted() { s.started.Add(1) }
