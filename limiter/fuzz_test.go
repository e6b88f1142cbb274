package limiter

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
)

// FuzzTables drives random sequences of Admit, release, Try, Failed,
// Succeeded, AddBan, LiftBan and clock steps over many addresses with
// max_tracked 16, and checks after every step that no table outgrew it and
// that the connection counts add up.
func FuzzTables(f *testing.F) {
	f.Add([]byte{0, 1, 0, 3, 1, 1, 3, 1, 2, 3, 1, 3, 0, 1, 0, 1, 0, 0})
	f.Add([]byte{3, 2, 0, 3, 4, 1, 3, 6, 2, 3, 8, 3, 6, 0, 200, 2, 2, 0, 4, 2, 0})
	f.Add([]byte{5, 7, 9, 5, 9, 200, 5, 11, 3, 7, 9, 0, 6, 0, 255})
	big := make([]byte, 0, maxFuzzOps*3)
	for i := range maxFuzzOps {
		big = append(big, byte(i%8), byte(i*7), byte(i*13))
	}
	f.Add(big)
	flood := make([]byte, 0, maxFuzzOps*3) // connections and failures from ever new sources
	for i := range maxFuzzOps {
		flood = append(flood, byte(i%2)*3, byte(i*5), byte(i))
	}
	f.Add(flood)
	f.Fuzz(func(t *testing.T, ops []byte) {
		ops = ops[:min(len(ops), maxFuzzOps*3)]
		l, _ := newTest(t, func(b *conf.Bans, lim *conf.Limits) {
			b.MaxTracked = 16
			b.SourceFailures = 3
			b.SprayAccounts = 2
			b.AccountFailures = 3
			b.Allow = append(b.Allow, netip.MustParsePrefix("198.51.100.0/30"))
			lim.MaxConnections = 40
			lim.MaxConnectionsPerSource = 3
			lim.ConnectionRate = 2
		}, Options{})
		now := t0
		var held []func()
		var flying []*Attempt
		// end takes the attempt arg picks out of flying; nil when none flies.
		end := func(arg byte) *Attempt {
			if len(flying) == 0 {
				return nil
			}
			j := int(arg) % len(flying)
			a := flying[j]
			flying = append(flying[:j], flying[j+1:]...)
			return a
		}
		for i := 0; i+2 < len(ops); i += 3 {
			op, a, arg := ops[i]%8, fuzzAddr(ops[i+1]), ops[i+2]
			user := fmt.Sprint("user", arg%5)
			switch op {
			case 0:
				if release, err := l.AdmitAt(now, a); err == nil {
					held = append(held, release)
				}
			case 1:
				if len(held) > 0 {
					j := int(arg) % len(held)
					held[j]()
					held[j]() // idempotent
					held = append(held[:j], held[j+1:]...)
				}
			case 2:
				if at, err := l.TryAt(now, a, user); err == nil {
					flying = append(flying, at)
				}
			case 3:
				if at := end(arg); at != nil {
					at.FailedAt(now, []byte{arg % 3})
				} else {
					l.FailedAt(now, a, user, []byte{arg % 3})
				}
			case 4:
				if at := end(arg); at != nil {
					at.SucceededAt(now)
					at.Done() // ended already: nothing
				} else {
					l.SucceededAt(now, a, user)
				}
			case 5:
				l.AddBanAt(now, a, time.Duration(arg)*time.Minute, "")
			case 6:
				now = now.Add(time.Duration(arg) * 37 * time.Second)
			case 7:
				l.LiftBanAt(now, a)
			}
			if err := l.checkBounds(); err != nil {
				t.Fatalf("after op %d (%d on %v): %v", i/3, op, a, err)
			}
			if got := l.inFlight(); got > len(flying) {
				t.Fatalf("after op %d: %d logins counted in flight, %d attempts unended", i/3, got, len(flying))
			}
			if got := l.total; got != len(held) {
				t.Fatalf("after op %d: %d connections counted, %d held", i/3, got, len(held))
			}
		}
		for _, release := range held {
			release()
		}
		for _, at := range flying {
			at.Done()
		}
		if n := l.inFlight(); n != 0 || len(l.flights) != 0 || len(l.acctFlights) != 0 {
			t.Fatalf("after ending all attempts: %d in flight, %d sources, %d accounts, want 0", n, len(l.flights), len(l.acctFlights))
		}
		if l.total != 0 || len(l.conns) != 0 {
			t.Fatalf("after releasing all: total %d, per-source entries %d, want 0 and 0", l.total, len(l.conns))
		}
	})
}

// maxFuzzOps bounds one run: 200 steps over 256 addresses overflow tables of 16
// many times, and keep each run (and the fuzzer's minimizing) fast.
const maxFuzzOps = 200

// fuzzAddr spreads a byte over IPv4, IPv4-mapped, IPv6 (pairs sharing a /64)
// and an allow-listed range.
func fuzzAddr(b byte) netip.Addr {
	switch b % 4 {
	case 0:
		return netip.AddrFrom4([4]byte{192, 0, 2, b})
	case 1:
		return netip.AddrFrom16(netip.AddrFrom4([4]byte{203, 0, 113, b}).As16())
	case 2:
		return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, b >> 3, 15: b})
	default:
		return netip.AddrFrom4([4]byte{198, 51, 100, b % 8})
	}
}
