//go:build linux || darwin || freebsd || netbsd || openbsd

package proxy

import "golang.org/x/sys/unix"

const canPeek = true

// peekReady reports whether the socket has data (or an EOF or error) to read,
// without taking it: the caller reads afterwards into a pooled buffer.
func peekReady(fd uintptr) (bool, error) {
	var b [1]byte
	for {
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false, nil
		}
		return true, nil // data, EOF, or an error the Read will report
	}
}

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
