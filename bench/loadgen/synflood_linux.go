package loadgen

import (
	"errors"
	"net/netip"
	"syscall"
	"time"
)

// SYNFlood sends connection attempts (one SYN each) from src to addr, an IPv4
// host:port, with workers goroutines for d, at rate attempts per second in all
// (0: as fast as they can): a non-blocking connect, then close without
// waiting. It is what a banned source's flood looks like when the
// kernel drops its SYNs (bans.firewall): nothing ever answers, so waiting for
// a connect would measure the SYN retry timer, not the server. Refused counts
// the attempts sent.
func SYNFlood(addr netip.AddrPort, src netip.Addr, workers int, rate float64, d time.Duration) FloodStats {
	to := &syscall.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	from := &syscall.SockaddrInet4{Addr: src.As4()}
	return floodLoop(workers, rate, d, func() error { return synOnce(from, to) })
}

// synOnce sends one SYN: connect on a non-blocking socket returns EINPROGRESS
// once the SYN is out; closing a socket in SYN-SENT sends nothing more.
func synOnce(from, to *syscall.SockaddrInet4) error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	if err := syscall.SetsockoptInt(fd, syscall.IPPROTO_IP, ipBindAddressNoPort, 1); err != nil {
		return err
	}
	if err := syscall.Bind(fd, from); err != nil {
		return err
	}
	if err := syscall.Connect(fd, to); !errors.Is(err, syscall.EINPROGRESS) {
		if err == nil {
			return errors.New("connected: the SYN was not dropped")
		}
		return err
	}
	return nil
}
