//go:build !unix

package acme

// fdLimit is unknown here: the challenge listeners use the fixed cap.
func fdLimit() uint64 { return 0 }
