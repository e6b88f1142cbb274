//go:build !linux

package loadgen

import (
	"errors"
	"net/netip"
	"syscall"
	"time"
)

// bindNoPort does nothing outside Linux: bind then picks the port itself.
func bindNoPort(network, address string, c syscall.RawConn) error { return nil }

// SYNFlood is Linux only.
func SYNFlood(addr netip.AddrPort, src netip.Addr, workers int, rate float64, d time.Duration) FloodStats {
	return FloodStats{Errors: 1, FirstErr: errors.New("SYNFlood: Linux only")}
}
