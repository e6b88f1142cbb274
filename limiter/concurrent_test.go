package limiter

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
)

// TestConcurrentUse runs every entry point from many goroutines at once; with
// -race it checks the locking, and at the end that every slot came back.
func TestConcurrentUse(t *testing.T) {
	l, _ := newTest(t, func(b *conf.Bans, _ *conf.Limits) { b.MaxTracked = 64 }, Options{})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 300 {
				now := t0.Add(time.Duration(i) * time.Second)
				src := netip.AddrFrom4([4]byte{192, 0, byte(g), byte(i % 40)})
				user := fmt.Sprint("user", i%7)
				if release, err := l.AdmitAt(now, src); err == nil {
					defer release()
				}
				if a, err := l.TryAt(now, src, user); err == nil {
					switch i % 3 {
					case 0:
						a.FailedAt(now, []byte{byte(i % 3)})
					case 1:
						a.SucceededAt(now)
					}
					a.Done() // after Failed or Succeeded: nothing
				}
				l.FailedAt(now, src, user, []byte{byte(i % 3)})
				if i%11 == 0 {
					l.SucceededAt(now, src, user)
				}
				if i%50 == 0 {
					l.AddBanAt(now, src, time.Minute, "")
					l.BansAt(now)
					l.SourceAt(now, src)
					l.LiftBanAt(now, src)
				}
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			b, lim := defaults()
			b.MaxTracked = 64
			l.Update(b, lim)
			l.activeBans()
		}
	})
	wg.Wait()
	if err := l.checkBounds(); err != nil {
		t.Error(err)
	}
	if len(l.flights) != 0 || len(l.acctFlights) != 0 {
		t.Errorf("after all attempts ended: %d sources and %d accounts in flight, want 0", len(l.flights), len(l.acctFlights))
	}
	if l.total != 0 || len(l.conns) != 0 {
		t.Errorf("after all releases: total %d, per-source entries %d, want 0 and 0", l.total, len(l.conns))
	}
}
