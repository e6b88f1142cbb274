package proxy

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// coalesceConn sits between a client's *tls.Conn and its socket. crypto/tls
// writes each record (at most 16 KB of payload) with its own Write; while the
// relay forwards one buffer the conn gathers them, and the relay flushes them
// with one write syscall: a 256 KB chunk costs one write, not sixteen (issue 16).
// Outside a gather (the handshake, pre-auth replies, close_notify) writes go
// straight to the socket.
//
// Records must reach the peer in the order crypto/tls sealed them, and
// crypto/tls may write from the reading goroutine too (an alert, a KeyUpdate
// reply), so one write syscall runs at a time (busy). A record written while
// one runs is queued behind it and sent by the writer in flight, never waited
// for: tls.Conn.Close sends close_notify before closing the socket, and must
// not wait behind a flush that a client not reading holds up for idle_timeout
// (crypto/tls's own Close skips the alert when a Write is in flight; a flush
// runs outside tls.Conn.Write, so this is the same rule). A failed write is
// sticky, as crypto/tls's own are: part of a record may have left.
type coalesceConn struct {
	net.Conn
	mu    sync.Mutex
	idle  *sync.Cond // signalled when busy clears
	buf   *[]byte    // gathering while non-nil
	lent  bool       // buf belongs to the relay (gatherInto), not to the pool
	queue []byte     // records written during another write, sent after it
	busy  bool       // a write syscall is in flight
	err   error

	// While the relay reads inside its readiness loop (relay.readTLS), reads
	// go straight to the socket fd and never wait.
	direct bool
	fd     uintptr
}

// canReadDirect reports whether the relay can read the socket under the TLS
// layer itself (relay.readTLS): a plain TCP socket with nothing read ahead of
// it, on a system with the primitives.
func (c *coalesceConn) canReadDirect() bool {
	_, ok := c.Conn.(*net.TCPConn)
	return ok && canPeek
}

// Read, inside the relay's readiness loop, is one non-blocking read of the
// socket: no data returns os.ErrDeadlineExceeded at once, a timeout crypto/tls
// does not make sticky (it keeps what it has of a record), and the relay's
// loop waits for readiness, holding no buffer and with no MSG_PEEK probe.
// Only the relay's goroutine reads once the session is relayed.
func (c *coalesceConn) Read(b []byte) (int, error) {
	if !c.direct {
		return c.Conn.Read(b)
	}
	n, err := readFD(c.fd, b)
	switch {
	case err == syscall.EAGAIN:
		return 0, os.ErrDeadlineExceeded
	case err != nil:
		return 0, os.NewSyscallError("read", err)
	case n == 0 && len(b) > 0:
		return 0, io.EOF
	}
	return n, nil
}

func (c *coalesceConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	switch {
	case c.err != nil:
		c.mu.Unlock()
		return 0, c.err
	case c.buf != nil:
		*c.buf = append(*c.buf, b...)
		c.mu.Unlock()
		return len(b), nil
	case c.busy:
		c.queue = append(c.queue, b...)
		c.mu.Unlock()
		return len(b), nil
	}
	c.busy = true
	c.mu.Unlock()
	if err := c.send(b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// send writes b, then whatever was queued meanwhile, and clears busy.
func (c *coalesceConn) send(b []byte) error {
	for {
		_, err := c.Conn.Write(b)
		c.mu.Lock()
		if err != nil {
			c.err = err
			c.queue = nil
		}
		if err != nil || len(c.queue) == 0 {
			c.busy = false
			if c.idle != nil {
				c.idle.Broadcast()
			}
			c.mu.Unlock()
			return err
		}
		b, c.queue = c.queue, nil
		c.mu.Unlock()
	}
}

// gather collects the following writes, for about size bytes of records.
func (c *coalesceConn) gather(size int) {
	c.mu.Lock()
	c.buf, c.lent = getBuf(size), false
	c.mu.Unlock()
}

// gatherInto is gather into the caller's buffer, which flush leaves to it
// (emptied) instead of giving it to the pool: the relay keeps its jumbo
// buffers from one chunk to the next.
func (c *coalesceConn) gatherInto(bp *[]byte) {
	c.mu.Lock()
	*bp = (*bp)[:0]
	c.buf, c.lent = bp, true
	c.mu.Unlock()
}

// flush writes what was gathered in one call and ends the gather. It waits
// for a write in flight from another goroutine, whose records came first.
func (c *coalesceConn) flush() error {
	c.mu.Lock()
	bp, lent := c.buf, c.lent
	c.buf, c.lent = nil, false
	if bp == nil {
		c.mu.Unlock()
		return c.err
	}
	if !lent {
		defer putBuf(bp)
	}
	for c.busy && c.err == nil {
		if c.idle == nil {
			c.idle = sync.NewCond(&c.mu)
		}
		c.idle.Wait()
	}
	if c.err != nil || len(*bp) == 0 {
		c.mu.Unlock()
		return c.err
	}
	c.busy = true
	c.mu.Unlock()
	return c.send(*bp)
}

// CloseWrite half-closes the socket after close_notify (see closeWrite).
func (c *coalesceConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// recordSlack is room for the TLS 1.3 record overhead (5 header, 1 type and
// 16 tag bytes per record) of a gather: records are 16 KB, or smaller at the
// start of a connection (crypto/tls sizes the first ones to one TCP segment).
func recordSlack(n int) int { return n/32 + 512 }
