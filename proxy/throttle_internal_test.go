package proxy

import (
	"net/netip"
	"testing"
	"time"
)

// TestLogThrottle: the first event of a peer is logged, then at most one line
// per interval carrying the events since the last line; peers are apart, and
// the table stays bounded.
func TestLogThrottle(t *testing.T) {
	lt := newLogThrottle(time.Minute)
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	t0 := time.Unix(1_700_000_000, 0)
	steps := []struct {
		peer   netip.Addr
		at     time.Duration
		log    bool
		events int
	}{
		{a, 0, true, 1},
		{a, time.Second, false, 0},
		{b, time.Second, true, 1},
		{a, 30 * time.Second, false, 0},
		{a, 59 * time.Second, false, 0},
		{a, 61 * time.Second, true, 4}, // three held back, and this one
		{a, 62 * time.Second, false, 0},
		{b, 62 * time.Second, true, 1},
	}
	for i, s := range steps {
		log, n := lt.note(s.peer, t0.Add(s.at))
		if log != s.log || n != s.events {
			t.Errorf("step %d: note(%v, +%v) = %v, %d, want %v, %d", i, s.peer, s.at, log, n, s.log, s.events)
		}
	}
	for i := range 2 * throttleTable {
		lt.note(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), t0)
	}
	if n := lt.peers.Len(); n != throttleTable {
		t.Errorf("%d peers remembered, want the bound %d", n, throttleTable)
	}
}
