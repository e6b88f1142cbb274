//go:build linux || darwin || freebsd || netbsd || openbsd

package sockpeek

import "golang.org/x/sys/unix"

// Supported: Ready looks at the socket on this system.
const Supported = true

// Ready reports whether the non-blocking socket fd has data, an EOF or an
// error to read, without taking any of it (MSG_PEEK) and without waiting.
func Ready(fd uintptr) bool {
	var b [1]byte
	for {
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err == unix.EINTR {
			continue
		}
		return err != unix.EAGAIN // data, EOF, or an error the read will report
	}
}
