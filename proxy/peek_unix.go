//go:build linux || darwin || freebsd || netbsd || openbsd

package proxy

import (
	"github.com/imapgw/imapgw/internal/sockpeek"
	"golang.org/x/sys/unix"
)

const canPeek = sockpeek.Supported

// readFD reads from a non-blocking socket; EAGAIN means no data yet.
func readFD(fd uintptr, b []byte) (int, error) {
	for {
		n, err := unix.Read(int(fd), b)
		if err == unix.EINTR {
			continue
		}
		if n < 0 {
			n = 0
		}
		return n, err
	}
}
