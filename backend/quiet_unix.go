//go:build linux || darwin || freebsd || netbsd || openbsd

package backend

import (
	"crypto/tls"
	"syscall"

	"golang.org/x/sys/unix"
)

// quiet reports whether the connection is open with nothing to read: the
// server has neither closed it nor said anything (a BYE before its timeout)
// since the greeting. A warm connection that is not quiet is not used.
func (c *Conn) quiet() bool {
	if c.R.Buffered() > 0 {
		return false
	}
	nc := c.Conn
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	quiet := false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		for {
			_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if err == unix.EINTR {
				continue
			}
			quiet = err == unix.EAGAIN
			return true // never wait: a quiet socket is the answer, not a reason to block
		}
	})
	return err == nil && quiet
}
