package limiter

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
)

// BenchmarkAdmitBanned is the flood path: a banned source reconnecting, from
// addresses all over its /64.
func BenchmarkAdmitBanned(b *testing.B) {
	l, _ := newTest(b, nil, Options{})
	l.AddBanAt(t0, addr("2001:db8::1"), time.Hour, "")
	srcs := make([]netip.Addr, 256)
	for i := range srcs {
		srcs[i] = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 8: byte(i), 15: byte(i)})
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := l.AdmitAt(t0, srcs[i%len(srcs)]); !errors.Is(err, ErrBanned) {
			b.Fatalf("AdmitAt = %v, want %v", err, ErrBanned)
		}
		i++
	}
}

// BenchmarkAdmitAllowed admits and releases: an ordinary source under its
// limits, and an allow-listed one.
func BenchmarkAdmitAllowed(b *testing.B) {
	for _, src := range []string{"192.0.2.1", "127.0.0.1"} {
		b.Run(src, func(b *testing.B) {
			l, _ := newTest(b, func(_ *conf.Bans, lim *conf.Limits) { lim.ConnectionRate = 1e9 }, Options{})
			a := addr(src)
			b.ReportAllocs()
			for b.Loop() {
				release, err := l.AdmitAt(t0, a)
				if err != nil {
					b.Fatalf("AdmitAt = %v, want nil", err)
				}
				release()
			}
		})
	}
}

// BenchmarkFailed reports failures from 4096 sources with new passwords, with
// the bans that follow, on the default policy.
func BenchmarkFailed(b *testing.B) {
	l, _ := newTest(b, nil, Options{})
	srcs := make([]netip.Addr, 4096)
	for i := range srcs {
		srcs[i] = netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
	}
	secrets := make([][]byte, 64)
	for i := range secrets {
		secrets[i] = fmt.Appendf(nil, "password-%d", i)
	}
	now := t0
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		l.FailedAt(now, srcs[i%len(srcs)], "alice", secrets[i%len(secrets)])
		now = now.Add(time.Millisecond)
		i++
	}
}
