package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/imapgw/imapgw/internal/sockpeek"
	"github.com/prometheus/client_golang/prometheus"
)

// relayBuffer is the size of a relay read, bulkBuffer that of a plain read
// after one that filled its buffer, and jumboBuffer that of one after a full
// bulk read: a session moving bulk data (a big FETCH) reads and writes in
// larger and larger chunks, fewer syscalls and fewer wake-ups per byte on
// both sides of the gateway, and goes back to small ones after a short read.
// An idle session holds no buffer at all: one is taken only once its socket
// has data (see readPlain and waitReadable).
//
// A jumbo chunk holds two buffers of about 1 MB (the bytes read and the TLS
// records they become), so at most jumboMax are in flight in the process;
// a direction that finds none free goes on in bulk chunks. Measured on the
// bench's 16 MB FETCH through 2 sessions (bench/doc.go): 1 MB chunks instead
// of 256 KB ones moved 13% more per second with 17% less gateway CPU per MB
// (8 alternated runs, all 8 better); 2 MB chunks did no better than 1 MB.
const (
	relayBuffer = 32 << 10
	bulkBuffer  = 256 << 10
	jumboBuffer = 1 << 20
	jumboMax    = 16 // about 33 MB of buffers at most
)

// jumbos counts the directions holding a jumbo chunk's two buffers
// (readPlain), jumboTaken all chunks ever read (for the tests). A direction
// keeps its buffers from one full jumbo read to the next, and gives them back
// with its place when a read comes short, when it must wait for data, and when
// it ends: a direction waiting for its backend holds none; a client that stops
// reading holds one until idle_timeout ends its session, and the others then
// move bulk chunks, as before jumbo chunks existed. Keeping them, rather than
// taking both from sync.Pool for each chunk, is what bounds their number: a
// goroutine that moved to another P found the pooled ones out of reach and
// allocated more (TestHugePipelineBoundedMemory saw 8 MB of heap for one session).
var (
	jumbos     atomic.Int32
	jumboTaken atomic.Int64
)

// takeJumbo reserves one of the jumboMax places.
func takeJumbo() bool {
	if jumbos.Add(1) > jumboMax {
		jumbos.Add(-1)
		return false
	}
	return true
}

func releaseJumbo() { jumbos.Add(-1) }

// jumboRead returns the direction's jumbo read buffer, taking a place (and
// the buffers) first if it holds none; nil when all places are taken.
func (r *relay) jumboRead() *[]byte {
	if r.jread == nil {
		if !takeJumbo() {
			return nil
		}
		r.jread, r.jgather = getBuf(jumboBuffer), getBuf(jumboCap)
	}
	jumboTaken.Add(1)
	return r.jread
}

// dropJumbo gives the direction's jumbo buffers and place back, if it holds them.
func (r *relay) dropJumbo() {
	if r.jread == nil {
		return
	}
	putBuf(r.jread)
	putBuf(r.jgather)
	r.jread, r.jgather = nil, nil
	releaseJumbo()
}

// nextSize is the size of the read after one that filled a buffer of size.
func nextSize(size int) int {
	switch size {
	case relayBuffer:
		return bulkBuffer
	default:
		return jumboBuffer
	}
}

// errParked ends a relay goroutine whose direction parked: the parker starts
// a new one when src becomes readable (park_linux.go).
var errParked = errors.New("relay parked")

// halfCloseGrace is how long the other direction may go on after one side
// ended cleanly.
const halfCloseGrace = 5 * time.Second

// The pools hold read buffers and gathered TLS records (coalesceConn) of the
// two sizes, with room for the records' overhead.
var (
	smallCap  = relayBuffer + recordSlack(relayBuffer)
	bulkCap   = bulkBuffer + recordSlack(bulkBuffer)
	jumboCap  = jumboBuffer + recordSlack(jumboBuffer)
	smallPool = sync.Pool{New: func() any { b := make([]byte, 0, smallCap); return &b }}
	bulkPool  = sync.Pool{New: func() any { b := make([]byte, 0, bulkCap); return &b }}
	jumboPool = sync.Pool{New: func() any { b := make([]byte, 0, jumboCap); return &b }}
)

// getBuf returns an empty pooled buffer of at least size bytes' capacity.
func getBuf(size int) *[]byte {
	switch {
	case size <= smallCap:
		return smallPool.Get().(*[]byte)
	case size <= bulkCap:
		return bulkPool.Get().(*[]byte)
	case size <= jumboCap:
		return jumboPool.Get().(*[]byte)
	}
	b := make([]byte, 0, size)
	return &b
}

// putBuf gives a buffer back to its pool; one that append grew is dropped.
func putBuf(bp *[]byte) {
	*bp = (*bp)[:0]
	switch cap(*bp) {
	case smallCap:
		smallPool.Put(bp)
	case bulkCap:
		bulkPool.Put(bp)
	case jumboCap:
		jumboPool.Put(bp)
	}
}

// refreshEvery is how often a busy direction moves its deadlines: once a
// second (less for short idle timeouts) rather than per chunk. The deadline is
// set that much further out, so it never fires before idle_timeout of silence.
func refreshEvery(idle time.Duration) time.Duration { return min(time.Second, idle/8) }

// relay is one direction of a logged-in session.
type relay struct {
	s       *session
	src     net.Conn
	dst     net.Conn
	raw     syscall.RawConn // src's socket, for waiting without a buffer; nil: plain blocking reads
	pending func() int      // bytes src holds above its socket
	tls     bool            // src is a *tls.Conn: drain its records before waiting
	direct  *coalesceConn   // under src, the client's *tls.Conn, when readTLS reads it
	gather  *coalesceConn   // under dst when dst is the client's *tls.Conn: one write per chunk
	count   *atomic.Int64
	metric  prometheus.Counter
	left    *atomic.Int32 // directions still running
	side    string        // who ends the session when this direction ends first: "client" or "backend"
	finish  func(side string)

	size         int       // the next read's size: relayBuffer, bulkBuffer or jumboBuffer (readPlain)
	jread        *[]byte   // while reading jumbo chunks: the read buffer (jumboRead)
	jgather      *[]byte   // and the buffer their TLS records are gathered in
	readRefresh  time.Time // when src's read deadline is next moved (plain src only)
	writeRefresh time.Time // when dst's write deadline is next moved

	// Parking (park_linux.go): a quiet direction gives up its goroutine.
	parkable bool         // watched by the parker: reads run in readTLS or readPlain
	active   atomic.Bool  // bytes moved since the parker last looked
	deadline atomic.Int64 // src's read deadline as the relay set it, in monoNanos; 0: none yet
	parkTok  uint64       // the epoll token while parked, 0 otherwise (parker.mu)
	quiet    int          // the parker's sweeps in a row that found the relay quiet (parker.mu)

	// keepAlive: src is the backend's socket, dialed without TCP keep-alive
	// (backend.Dial), which the direction sets when it first parks. A
	// session over within a second (a quick check for new mail, a LOGOUT
	// right after the login) then makes none of its four setsockopt calls
	// (issue 16, about 1 % of the gateway's CPU per login); a session that
	// stays gets keep-alive once it goes quiet, which is when it matters.
	// HAProxy and nginx set none on their server side by default.
	keepAlive bool
}

// startRelay forwards what either side sent ahead, then starts the two copy
// directions. The client's direction gets a fresh goroutine; the backend's,
// when it can park, is left in s.inline for the session's own goroutine to run
// once run returns (runSession): one goroutine fewer to start and schedule per
// login, and no stack to grow again for the TLS writes it makes (issue 16:
// about 2 % more login cycles at 2 and 64 clients, bench A/B). An idle
// session's memory does not depend on that goroutine's grown stack: on Linux a
// direction quiet for a second parks (park_linux.go), the goroutine goes back
// to the workers, and a fresh one takes the direction up when src is readable.
// A direction that cannot park gets a fresh goroutine, as before, so that it
// never holds a handshake's stack for the session's life.
// The pool already knows of the session (loggedIn); relayEnded tells it the end.
func (s *session) startRelay(bc *backendConn) {
	ahead := s.rd.BufferedBytes()
	backAhead, _ := bc.br.Peek(bc.br.Buffered())
	s.rd = nil
	backend := bc.conn // the closures below must not keep bc, and with it its 4 KB reader
	s.mu.Lock()
	s.state, s.peer = stateRelaying, backend
	s.mu.Unlock()
	s.sendAhead(backend, ahead, &s.bytesIn, s.srv.m.toBackend)
	s.sendAhead(s.conn, backAhead, &s.bytesOut, s.srv.m.toClient)
	backend.SetDeadline(time.Time{})
	s.conn.SetDeadline(time.Time{})
	s.srv.m.preauth.Dec()
	s.srv.m.relaying.Inc()
	s.srv.sessionStarted()

	var left atomic.Int32
	left.Store(2)
	up := s.newRelay(s.conn, backend, &s.bytesIn, s.srv.m.toBackend)
	down := s.newRelay(backend, s.conn, &s.bytesOut, s.srv.m.toClient)
	up.left, down.left = &left, &left
	up.side, down.side = "client", "backend"
	// The direction that ends first names who closed the session (unless the
	// gateway did, for the pool): "backend" after a LOGOUT (the server closes
	// first), "client" when the app drops the connection.
	finish := func(side string) {
		s.noteEndedBy(side)
		if left.Add(-1) == 0 {
			s.relayEnded(backend)
		}
	}
	up.finish, down.finish = finish, finish
	up.parkable = up.canPark() && watchRelay(up)
	down.parkable = down.canPark() && watchRelay(down)
	if down.parkable {
		down.keepAlive = true
	} else {
		backendKeepAlive(backend)
	}
	s.mu.Lock()
	s.relays = [2]*relay{up, down}
	s.mu.Unlock()
	up.start()
	if down.parkable {
		s.inline = down
	} else {
		down.start()
	}
}

// backendKeepAlive sets keepAlive on the backend connection c (TCP, maybe
// under TLS): when its relay direction first parks, or at once for one that
// cannot park.
func backendKeepAlive(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetKeepAliveConfig(keepAlive)
	}
}

// noteEndedBy names side as the one that ended the session, unless one was
// named already.
func (s *session) noteEndedBy(side string) {
	s.mu.Lock()
	if s.endedBy == "" {
		s.endedBy = side
	}
	s.mu.Unlock()
}

// canPark reports whether the relay's waits all run in readTLS or readPlain,
// which can park. The others (a TLS backend, read through drainTLS and
// waitReadable; a STARTTLS client behind a PROXY header with bytes read
// ahead) keep their goroutine while idle, as before.
func (r *relay) canPark() bool {
	return r.direct != nil || (!r.tls && r.raw != nil)
}

// sendAhead writes bytes read ahead during the login to dst. A failure closes
// both sides; the relay then starts and ends at once.
func (s *session) sendAhead(dst net.Conn, b []byte, count *atomic.Int64, metric prometheus.Counter) {
	if len(b) == 0 {
		return
	}
	dst.SetWriteDeadline(time.Now().Add(s.cfg.Limits.IdleTimeout.Duration))
	if _, err := dst.Write(b); err != nil {
		s.closeNow()
		return
	}
	count.Add(int64(len(b)))
	metric.Add(float64(len(b)))
}

func (s *session) newRelay(src, dst net.Conn, count *atomic.Int64, metric prometheus.Counter) *relay {
	r := &relay{s: s, src: src, dst: dst, count: count, metric: metric, size: relayBuffer}
	r.raw, r.pending = rawConn(src)
	if tc, ok := src.(*tls.Conn); ok {
		r.tls = true
		if cc, ok := tc.NetConn().(*coalesceConn); ok && r.raw != nil && cc.canReadDirect() {
			r.direct = cc
		}
	}
	if tc, ok := dst.(*tls.Conn); ok {
		r.gather, _ = tc.NetConn().(*coalesceConn)
	}
	return r
}

func (s *session) relayEnded(backend net.Conn) {
	backend.Close()
	s.conn.Close()
	// Both directions are over: a pending grace timer would only wake up a
	// thread in 5 s to close what is closed (the bench saw it as CPU spent
	// long after a burst of logins).
	s.mu.Lock()
	if s.grace != nil {
		s.grace.Stop()
	}
	s.mu.Unlock()
	s.srv.m.relaying.Dec()
	args := []any{"user", sanitize(s.user, 256), "backend", s.backend, "bytes_in", s.bytesIn.Load(), "bytes_out", s.bytesOut.Load(),
		"duration", time.Since(s.since).Round(time.Millisecond)}
	s.mu.Lock()
	reason, endedBy := s.closedBy, s.endedBy
	s.mu.Unlock()
	if reason != "" {
		args = append(args, "closed_by", "gateway", "reason", reason)
	} else {
		args = append(args, "closed_by", endedBy)
	}
	s.logInfo("session ended", args...)
	s.poolEnd()
	s.end()
}

// start runs the direction on another goroutine: at the start of the relay
// (but see s.inline), and again when a parked direction's socket becomes
// readable. A parkable direction gives its goroutine back after a quiet
// second, so it runs on a worker (spawn), whose stack a handshake grew
// already: on a new goroutine, reading its first TLS record grew the stack in
// copies (1.4 % of the gateway's CPU at 64 clients, issue 16). One that
// cannot park would hold a worker's grown stack for the session's life, and
// gets a goroutine of its own.
func (r *relay) start() {
	f := r.backendToClient
	if r.side == "client" {
		f = r.clientToBackend
	}
	if r.parkable {
		r.s.srv.spawn(f)
		return
	}
	go f()
}

// clientToBackend and backendToClient are named so they show in stack dumps.
func (r *relay) clientToBackend() { r.run() }
func (r *relay) backendToClient() { r.run() }

// run copies until the direction ends, then counts it as ended; a direction
// that parked has not ended: the parker starts it again.
func (r *relay) run() {
	if r.copy() {
		return
	}
	if r.parkable {
		unwatchRelay(r)
	}
	r.finish(r.side)
}

// copy moves bytes until src ends. On a clean end it half-closes dst so the
// other side sees EOF; on an error it closes both, ending the other direction.
// It returns true when the direction parked instead (errParked).
func (r *relay) copy() (parked bool) {
	defer r.s.srv.recoverPanic(r.s.id)
	defer func() {
		// A read that failed before looking at the socket kept them. A parked
		// direction gave them back before parking (its last read found
		// nothing), and may run again on another goroutine already.
		if !parked {
			r.dropJumbo()
		}
	}()
	idle := r.s.cfg.Limits.IdleTimeout.Duration
	if r.expired() {
		// Resumed after its idle deadline (the parker's sweep, or data that
		// came too late): the end a read that hit the deadline has.
		r.closeBoth()
		return false
	}
	for {
		n, err := r.once(idle)
		if n > 0 {
			r.count.Add(int64(n))
			r.metric.Add(float64(n))
			if !r.active.Load() {
				r.active.Store(true)
			}
		}
		if err == nil {
			continue
		}
		if err == errParked {
			return true
		}
		if errors.Is(err, io.EOF) {
			// This side's peer closed: name it before passing the close
			// on, or the other direction, woken by that, may finish first
			// and be named instead (seen under load). Other errors may be
			// the other side's (a failed write), so finish names those.
			r.s.noteEndedBy(r.side)
			// Pass the half-close on, and give the other direction a moment to
			// deliver what is in flight: then both sides close, so a peer that
			// never closes its end cannot hold the session for idle_timeout.
			if r.left.Load() == 1 {
				return // the other direction is over: relayEnded closes both now
			}
			closeWrite(r.dst)
			t := time.AfterFunc(halfCloseGrace, r.closeBoth)
			r.s.mu.Lock()
			r.s.grace = t
			r.s.mu.Unlock()
			return false
		}
		r.closeBoth()
		return false
	}
}

// closeBoth closes both sides, which ends the other direction: a parked one
// is started again, to find its socket closed.
func (r *relay) closeBoth() {
	r.src.Close()
	r.dst.Close()
	r.s.wakeRelays()
}

// once waits until src has data, then reads and writes one buffer's worth.
func (r *relay) once(idle time.Duration) (int, error) {
	if r.direct != nil {
		return r.readTLS(idle)
	}
	if r.tls {
		if n, err := r.drainTLS(); n > 0 || err != nil {
			return n, err
		}
	}
	if !r.tls && r.raw != nil && r.pending() == 0 {
		return r.readPlain(idle)
	}
	r.src.SetReadDeadline(time.Now().Add(idle))
	if err := r.waitReadable(); err != nil {
		return 0, err
	}
	bp := getBuf(relayBuffer)
	defer putBuf(bp)
	n, rerr := r.src.Read((*bp)[:relayBuffer])
	return r.forward((*bp)[:n], idle, rerr)
}

// readTLS reads the client's TLS connection as readPlain reads a plain
// socket: inside the socket's readiness loop, crypto/tls reads the socket
// without waiting (coalesceConn.Read); when the socket has nothing more, the
// buffer goes back to the pool and the loop waits for readiness. The read and
// the wait are one RawConn.Read, so no readiness that arrives in between is
// lost. No MSG_PEEK probe, no buffer held while the client is quiet.
func (r *relay) readTLS(idle time.Duration) (int, error) {
	r.refreshRead(idle)
	var (
		bp   *[]byte
		n    int
		rerr error
	)
	err := r.wait(func(fd uintptr) bool {
		bp = getBuf(relayBuffer)
		r.direct.fd, r.direct.direct = fd, true
		n, rerr = r.src.Read((*bp)[:relayBuffer])
		r.direct.direct = false
		if n == 0 && errors.Is(rerr, os.ErrDeadlineExceeded) {
			putBuf(bp) // wait without it
			bp = nil
			return false
		}
		return true
	})
	if bp != nil {
		defer putBuf(bp)
	}
	if err != nil || bp == nil { // bp nil: asked to park, but could not
		return 0, err
	}
	if errors.Is(rerr, os.ErrDeadlineExceeded) {
		rerr = nil // data came with it: the next read finds out
	}
	return r.forward((*bp)[:n], idle, rerr)
}

// refreshRead moves src's read deadline, at most once per refreshEvery, and
// keeps it for the parker, which ends a parked relay at that deadline.
func (r *relay) refreshRead(idle time.Duration) {
	if now := time.Now(); !now.Before(r.readRefresh) {
		every := refreshEvery(idle)
		d := now.Add(idle + every)
		r.src.SetReadDeadline(d)
		r.deadline.Store(monoNanos(d))
		r.readRefresh = now.Add(every)
	}
}

// wait runs read in src's readiness loop, as RawConn.Read does. Asked to park
// (the parker set a read deadline in the past, before the relay's own), it
// reads once more and, finding nothing, parks: errParked. A nil error with
// read never true means the relay could not park and waits again (src's
// deadline is in the past, so the next refreshRead moves it).
func (r *relay) wait(read func(fd uintptr) bool) error {
	err := r.raw.Read(read)
	if err == nil || !r.parkable || !errors.Is(err, os.ErrDeadlineExceeded) || r.expired() {
		return err
	}
	r.readRefresh = time.Time{}
	// The read under the past deadline returned without reading: records
	// crypto/tls already holds, or data that came meanwhile, are read now.
	got := false
	if err := r.raw.Control(func(fd uintptr) { got = read(fd) }); err != nil || got {
		return err
	}
	return parkRelay(r)
}

// monoBase makes monoNanos monotonic: a wall clock step moves no deadline.
var monoBase = time.Now()

func monoNanos(t time.Time) int64 { return int64(t.Sub(monoBase)) }

// deadlineSlack: a deadline this close counts as passed, so that a read
// that hit the relay's own deadline is not taken for a request to park.
const deadlineSlack = 10 * time.Millisecond

// expired reports whether src's read deadline, as the relay set it, has passed.
func (r *relay) expired() bool {
	d := r.deadline.Load()
	return d != 0 && monoNanos(time.Now())+int64(deadlineSlack) >= d
}

// readPlain reads a plain socket (the backend's, mostly) straight into a pooled
// buffer taken only when the socket has data: one read syscall per chunk, no
// readiness probe, and no buffer held while the session waits.
func (r *relay) readPlain(idle time.Duration) (int, error) {
	r.refreshRead(idle)
	var (
		bp   *[]byte
		n    int
		rerr error
	)
	// The jumbo buffers are taken only once the socket has data, and given
	// back when it has none: a direction waiting for its backend holds none.
	var size int
	err := r.wait(func(fd uintptr) bool {
		size = r.size
		bp = nil
		if size == jumboBuffer {
			if bp = r.jumboRead(); bp == nil {
				size = bulkBuffer
			}
		}
		if bp == nil {
			bp = getBuf(size)
		}
		n, rerr = readFD(fd, (*bp)[:size])
		if rerr == syscall.EAGAIN {
			if size != jumboBuffer {
				putBuf(bp) // park without it
			}
			bp = nil
			r.dropJumbo()
			return false
		}
		return true
	})
	if bp != nil && size != jumboBuffer {
		defer putBuf(bp)
	}
	switch {
	case err != nil: // deadline, closed, parked
		return 0, err
	case bp == nil: // asked to park, but could not
		return 0, nil
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n == 0:
		return 0, io.EOF
	}
	if n == size {
		r.size = nextSize(size)
	} else {
		r.size = relayBuffer
	}
	m, err := r.forward((*bp)[:n], idle, nil)
	if r.size != jumboBuffer || err != nil {
		r.dropJumbo()
	}
	return m, err
}

func (r *relay) forward(b []byte, idle time.Duration, rerr error) (int, error) {
	if len(b) == 0 {
		return 0, rerr
	}
	if now := time.Now(); !now.Before(r.writeRefresh) {
		every := refreshEvery(idle)
		r.dst.SetWriteDeadline(now.Add(idle + every))
		r.writeRefresh = now.Add(every)
	}
	if r.gather == nil {
		if _, err := r.dst.Write(b); err != nil {
			return len(b), err
		}
		return len(b), rerr
	}
	if r.jgather != nil && len(b) <= jumboBuffer {
		r.gather.gatherInto(r.jgather)
	} else {
		r.gather.gather(len(b) + recordSlack(len(b)))
	}
	_, err := r.dst.Write(b)
	if ferr := r.gather.flush(); err == nil {
		err = ferr
	}
	if err != nil {
		return len(b), err
	}
	return len(b), rerr
}

// drainTLS forwards what the TLS layer already holds: records read from the
// socket together with earlier ones, which the poller will not announce again.
// A Read under a deadline in the past returns them without touching the
// socket, or a timeout that crypto/tls does not make sticky.
func (r *relay) drainTLS() (int, error) {
	bp := getBuf(relayBuffer)
	defer putBuf(bp)
	r.src.SetReadDeadline(pastDeadline)
	n, err := r.src.Read((*bp)[:relayBuffer])
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = nil
	}
	return r.forward((*bp)[:n], r.s.cfg.Limits.IdleTimeout.Duration, err)
}

// pastDeadline makes a Read return at once.
var pastDeadline = time.Unix(1, 0)

// waitReadable blocks, holding no buffer, until a Read on src will not block.
func (r *relay) waitReadable() error {
	if r.raw == nil || r.pending() > 0 {
		return nil
	}
	return r.raw.Read(sockpeek.Ready)
}

func closeWrite(c net.Conn) {
	type closeWriter interface{ CloseWrite() error }
	if tc, ok := c.(*tls.Conn); ok {
		tc.CloseWrite() // close_notify
		c = tc.NetConn()
	}
	if cw, ok := c.(closeWriter); ok {
		cw.CloseWrite()
	}
}

// rawConn finds the socket under c, and what is buffered above it.
func rawConn(c net.Conn) (syscall.RawConn, func() int) {
	none := func() int { return 0 }
	for {
		switch t := c.(type) {
		case *tls.Conn:
			c = t.NetConn()
		case *coalesceConn:
			c = t.Conn
		case *prefixConn:
			rc, _ := rawConn(t.Conn)
			return rc, t.pending
		case syscall.Conn:
			rc, err := t.SyscallConn()
			if err != nil || !canPeek {
				return nil, none
			}
			return rc, none
		default:
			return nil, none
		}
	}
}
