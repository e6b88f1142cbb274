//go:build linux

package proxy

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Parking idle relay directions (issue 16). A logged-in IMAP session spends
// nearly all its life quiet (IDLE, or a client between commands), and each of
// its two relay goroutines (one of them the session's own, see startRelay)
// would sit in Go's netpoller with a stack of a few kilobytes or more: half of
// an idle session's memory. A direction quiet for a second
// gives its goroutine up instead: its socket goes into the parker's own epoll
// set, and when it becomes readable (data, EOF, a reset) a new goroutine
// continues the same relay. One goroutine in epoll_wait serves every parked
// direction of the process, and it also sweeps twice a second: it asks quiet
// directions to park, ends parked ones whose idle deadline passed, and starts
// parked ones whose socket was closed under them.
//
// How a direction parks: the sweep sets src's read deadline in the past,
// which wakes the relay's RawConn.Read; the relay sees that its own deadline
// has not passed (relay.wait), reads once more, and finding nothing adds the
// socket to the epoll set (level-triggered, so data that came after the read
// is reported at once) and returns without ending. Adding and removing run
// inside RawConn.Control: the descriptor cannot be closed and reused during
// the call. The event carries a token, not the descriptor: a closed
// descriptor's number is soon another socket's. Whoever takes the token out
// of the table (an event, the sweep, a close of the session) starts the
// relay again, so it runs on exactly one goroutine.
//
// The ended goroutines' stacks are freed by the next garbage collection, as
// any goroutine's: the logins before an idle period run it, and trimLoop
// returns the memory after a burst of them. A trim of its own after a wave of
// parks made no difference in make bench (8.5 KB per idle session without,
// 8.4 and 9.1 with) and would cost a full collection on a busy server.
//
// The sweep runs twice a second rather than once so that a direction parks
// between one and one and a half seconds after its last byte (well before the
// trim, 5 s after the last login, frees the ended goroutines' stacks), and a
// parked direction's idle timeout fires at most half a second late.
const (
	sweepEvery = 500 * time.Millisecond
	parkQuiet  = 2 // sweeps in a row without a byte (at least a second) before a direction parks
)

// parker holds the epoll set and the relays that may park. Its goroutine
// runs while any relay is watched, so a process without sessions has none.
type parker struct {
	mu      sync.Mutex
	epfd    int                 // the epoll set; -1 when no loop runs
	watched map[*relay]struct{} // relays that may park, parked or not
	parked  map[uint64]*relay   // by token
	next    uint64              // the last token given
}

var parks = parker{epfd: -1, watched: map[*relay]struct{}{}, parked: map[uint64]*relay{}}

// watchRelay lets the parker park r; false if it cannot (no epoll set).
func watchRelay(r *relay) bool {
	p := &parks
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.epfd < 0 {
		fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return false
		}
		p.epfd = fd
		go p.loop(fd)
	}
	p.watched[r] = struct{}{}
	return true
}

// unwatchRelay forgets r, which has ended (it is not parked).
func unwatchRelay(r *relay) {
	p := &parks
	p.mu.Lock()
	delete(p.watched, r)
	p.mu.Unlock()
}

// parkRelay adds r's socket to the epoll set and returns errParked: the
// caller's goroutine must then end without touching r. It returns nil when
// the socket could not be added (r waits on its goroutine as before), or the
// error of a socket closed meanwhile (r's read fails, as it would have).
func parkRelay(r *relay) error {
	if r.keepAlive {
		// The session outlived its login by a quiet second: from now on
		// keep-alive watches the backend (see relay.keepAlive). A failure
		// leaves the socket as it was; the idle timeout still ends it.
		r.keepAlive = false
		backendKeepAlive(r.src)
	}
	p := &parks
	p.mu.Lock()
	p.next++
	tok := p.next
	r.parkTok, r.quiet = tok, 0
	p.parked[tok] = r
	epfd := p.epfd
	p.mu.Unlock()
	var aerr error
	cerr := r.raw.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT}
		setToken(&ev, tok)
		aerr = unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if cerr == nil && aerr == nil {
		return errParked
	}
	if _, ok := p.claim(r); !ok {
		return errParked // a close took the token: it starts r again
	}
	return cerr
}

// wakeRelay starts r again if it is parked.
func wakeRelay(r *relay) {
	if epfd, ok := parks.claim(r); ok {
		resume(r, epfd)
	}
}

// claim takes r's token out of the table: true for exactly one caller per
// park, which must then resume r.
func (p *parker) claim(r *relay) (epfd int, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if r.parkTok == 0 {
		return 0, false
	}
	delete(p.parked, r.parkTok)
	r.parkTok = 0
	return p.epfd, true
}

// resume takes r's socket out of the epoll set (a closed one has left it
// already, and Control fails) and runs r on a new goroutine.
func resume(r *relay, epfd int) {
	r.raw.Control(func(fd uintptr) {
		unix.EpollCtl(epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
	r.start()
}

// loop waits for parked sockets to become readable, and sweeps. It ends, and
// closes the epoll set, once no relay is watched.
func (p *parker) loop(epfd int) {
	events := make([]unix.EpollEvent, 128)
	next := time.Now().Add(sweepEvery)
	for {
		n, err := unix.EpollWait(epfd, events, max(0, int(time.Until(next)/time.Millisecond)+1))
		if err != nil {
			n = 0 // EINTR; EBADF and the like cannot happen while the loop owns epfd
		}
		for _, ev := range events[:n] {
			if r := p.take(token(&ev)); r != nil {
				resume(r, epfd)
			}
		}
		now := time.Now()
		if now.Before(next) {
			continue
		}
		next = now.Add(sweepEvery)
		if p.sweep(epfd) {
			return
		}
	}
}

// take claims the relay parked under tok, if any.
func (p *parker) take(tok uint64) *relay {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.parked[tok]
	if r != nil {
		delete(p.parked, tok)
		r.parkTok = 0
	}
	return r
}

// sweep asks the directions quiet for parkQuiet sweeps to park, and resumes
// parked ones whose idle deadline passed or whose socket was closed (a close
// wakes its session's relays; this is the backstop). With no relay left to
// watch it closes the set and reports done.
func (p *parker) sweep(epfd int) (done bool) {
	now := monoNanos(time.Now()) + int64(deadlineSlack)
	var ask, wake []*relay
	p.mu.Lock()
	if len(p.watched) == 0 {
		unix.Close(epfd)
		p.epfd = -1
		p.mu.Unlock()
		return true
	}
	for r := range p.watched {
		switch {
		case r.parkTok != 0:
			if d := r.deadline.Load(); d != 0 && now >= d || r.raw.Control(func(uintptr) {}) != nil {
				delete(p.parked, r.parkTok)
				r.parkTok = 0
				wake = append(wake, r)
			}
		case r.active.Swap(false):
			r.quiet = 0
		default:
			if r.quiet++; r.quiet >= parkQuiet {
				ask = append(ask, r)
			}
		}
	}
	p.mu.Unlock()
	for _, r := range wake {
		resume(r, epfd) // copy sees the deadline passed, or the read fails
	}
	for _, r := range ask {
		// Wakes the relay's wait; a relay busy elsewhere (a write to a slow
		// peer) parks at its next wait, or moves the deadline first and is
		// asked again at the next sweep.
		r.src.SetReadDeadline(pastDeadline)
	}
	return false
}

// The token is the event's 64-bit data (epoll_data_t), which x/sys/unix
// spells as the two 32-bit fields Fd and Pad.
func setToken(ev *unix.EpollEvent, tok uint64) {
	ev.Fd, ev.Pad = int32(uint32(tok)), int32(uint32(tok>>32))
}

func token(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// parkedRelays counts the parked directions, for tests.
func parkedRelays() int {
	parks.mu.Lock()
	defer parks.mu.Unlock()
	return len(parks.parked)
}
