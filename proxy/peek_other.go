//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package proxy

import "errors"

// Without MSG_PEEK the relay reads with a buffer held while it waits.
const canPeek = false

// readFD is never called without canPeek (rawConn returns no RawConn).
func readFD(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }
