package proxy

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// inheritsKeepAlive: on Linux an accepted socket inherits the listening
// socket's keep-alive settings, so they are set once on the listener instead
// of with four setsockopt calls per session (issue 16: a login cycle makes
// about 60 syscalls, in a VM each a measurable cost). Refused connections
// still cost no setsockopt at all.
const inheritsKeepAlive = true

// listenKeepAlive sets keepAlive on a listening socket.
func listenKeepAlive(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		for _, o := range []struct{ level, opt, v int }{
			{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
			{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(keepAlive.Idle.Seconds())},
			{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(keepAlive.Interval.Seconds())},
			{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAlive.Count},
		} {
			if serr = unix.SetsockoptInt(int(fd), o.level, o.opt, o.v); serr != nil {
				return
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}
