//go:build !linux

package loadgen

import "syscall"

// bindNoPort does nothing outside Linux: bind then picks the port itself.
func bindNoPort(network, address string, c syscall.RawConn) error { return nil }
