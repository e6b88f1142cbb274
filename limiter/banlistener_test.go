package limiter

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
)

// recorder is a BanListener that writes down what it hears.
type recorder struct{ events []string }

func (r *recorder) BanSet(p netip.Prefix, until time.Time) {
	r.events = append(r.events, fmt.Sprintf("set %s %s", p, until.Sub(t0)))
}

func (r *recorder) BanLifted(p netip.Prefix) { r.events = append(r.events, "lift "+p.String()) }

// TestBanListener: the listener starts from the bans in force and hears of
// automatic bans, a new ladder step, operator bans, lifts and bans given up
// for room, in order, and never of a prefix that touches bans.allow.
func TestBanListener(t *testing.T) {
	l, _ := newTest(t, func(b *conf.Bans, _ *conf.Limits) {
		b.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.200/32")}
		b.SourcePrefixV4 = 24
		b.MaxTracked = 16
	}, Options{})
	l.AddBanAt(t0, addr("198.51.100.1"), time.Hour, "before")
	r := &recorder{}
	live := l.SetBanListener(r)
	if len(live) != 1 || live[0].Prefix != netip.MustParsePrefix("198.51.100.0/24") {
		t.Fatalf("SetBanListener = %+v, want the ban made before it", live)
	}

	src := addr("203.0.113.7")
	v := failN(l, t0, src, "alice", 10)                                // first strike: 15m
	failN(l, v.Until.Add(time.Minute), src, "alice", 10)               // second: 1h
	l.AddBanAt(t0, addr("192.0.2.9"), time.Hour, "touches bans.allow") // 192.0.2.0/24 holds .200
	l.LiftBanAt(t0, addr("192.0.2.9"))
	l.LiftBanAt(v.Until.Add(time.Minute), src)
	for i := range 16 { // 16 more bans in a table of 16: the soonest ending goes
		l.AddBanAt(t0, netip.AddrFrom4([4]byte{10, byte(i), 0, 1}), time.Duration(i+2)*time.Hour, "")
	}
	want := []string{
		"set 203.0.113.0/24 15m0s",
		"set 203.0.113.0/24 1h16m0s", // 15m + 1m + the second step, 1h
		"lift 203.0.113.0/24",
	}
	for i := range 15 {
		want = append(want, fmt.Sprintf("set 10.%d.0.0/24 %dh0m0s", i, i+2))
	}
	want = append(want, "lift 198.51.100.0/24", "set 10.15.0.0/24 17h0m0s")
	if !slices.Equal(r.events, want) {
		t.Errorf("listener heard\n%q\nwant\n%q", r.events, want)
	}

	if l.SetBanListener(nil); len(l.Bans()) == 0 {
		t.Fatal("no bans left")
	}
	l.AddBanAt(t0, addr("198.51.100.1"), time.Hour, "after")
	if len(r.events) != len(want) {
		t.Errorf("a removed listener still hears: %q", r.events[len(want):])
	}
}
