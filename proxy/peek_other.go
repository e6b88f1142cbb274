//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package proxy

// Without MSG_PEEK the relay reads with a buffer held while it waits.
const canPeek = false

func peekReady(uintptr) (bool, error) { return true, nil }
