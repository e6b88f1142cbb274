package proxy

import "time"

// workerIdle is how long a goroutine that ran a session's pre-auth phase
// waits for the next one before it ends.
const workerIdle = 500 * time.Millisecond

// spawn runs a session's pre-auth phase (handshake, login) on a goroutine that
// already ran one, if one is waiting, else on a new goroutine. A new goroutine
// starts with a small stack, and the TLS handshake grows it in several copies:
// about 5% of a login cycle's CPU (issue 16). A reused one has its grown stack
// already. Waiting workers are few (those that finished within workerIdle and
// found no new session) and end after workerIdle or at shutdown, so idle
// sessions pay nothing for them: a logged-in session keeps its worker only
// while its backend's direction runs (see startRelay), and a second one while
// its client's does (relay.start), until it ends or parks after a quiet
// second.
func (s *Server) spawn(f func()) {
	select {
	case s.work <- f:
	default:
		go s.worker(f)
	}
}

func (s *Server) worker(f func()) {
	t := time.NewTimer(workerIdle)
	defer t.Stop()
	for {
		f()
		t.Reset(workerIdle)
		select {
		case f = <-s.work:
		case <-t.C:
			return
		case <-s.ctx.Done():
			return
		}
	}
}
