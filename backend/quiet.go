package backend

import (
	"crypto/tls"
	"syscall"

	"github.com/imapgw/imapgw/internal/sockpeek"
)

// quiet reports whether the connection is open with nothing to read: the
// server has neither closed it nor said anything (a BYE before its timeout)
// since the greeting. A warm connection that is not quiet is not used. Where
// the socket cannot be looked at, only the reader's buffer counts, and the
// proxy dials afresh when the login finds the connection closed.
func (c *Conn) quiet() bool {
	if c.R.Buffered() > 0 {
		return false
	}
	nc := c.Conn
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok || !sockpeek.Supported {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ready := true
	err = rc.Read(func(fd uintptr) bool {
		ready = sockpeek.Ready(fd)
		return true // never wait: a quiet socket is the answer, not a reason to block
	})
	return err == nil && !ready
}
