//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package sockpeek

// Supported: without MSG_PEEK, Ready cannot look and says ready.
const Supported = false

// Ready reports true: a caller that needs the answer checks Supported first.
func Ready(uintptr) bool { return true }
