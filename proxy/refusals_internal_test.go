package proxy

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// TestRefusalLog: the first refusal of an address in an interval is logged in
// full, the rest only counted; the count comes out once the interval ends,
// from the sweep or from the next refusal; the table stays bounded.
func TestRefusalLog(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	var r refusalLog
	ip := netip.MustParseAddr("192.0.2.7")
	if logIt, ended := r.note(t0, ip, "alice", "why"); !logIt || ended != nil {
		t.Fatalf("first refusal: log %v, summary %v; want logged, none", logIt, ended)
	}
	for i := range 49 {
		if logIt, _ := r.note(t0.Add(time.Duration(i)*time.Second), ip, "alice", "why"); logIt {
			t.Fatalf("refusal %d in the same interval logged in full", i+2)
		}
	}
	if got := r.sweep(t0.Add(refusalEvery - time.Second)); len(got) != 0 {
		t.Errorf("sweep before the interval ended = %v, want nothing", got)
	}
	got := r.sweep(t0.Add(refusalEvery))
	if len(got) != 1 || got[0].ip != ip || got[0].n != 49 || got[0].user != "alice" {
		t.Fatalf("sweep = %+v, want one summary of 49 for %v", got, ip)
	}
	if logIt, _ := r.note(t0.Add(refusalEvery), ip, "alice", "why"); !logIt {
		t.Errorf("first refusal of the next interval not logged in full")
	}

	// Without a sweep, the next refusal after the interval brings the summary.
	r.note(t0.Add(refusalEvery+time.Second), ip, "bob", "why")
	logIt, ended := r.note(t0.Add(3*refusalEvery), ip, "carol", "why")
	if !logIt || ended == nil || ended.n != 1 || ended.user != "bob" {
		t.Errorf("refusal after an unswept interval: log %v, summary %+v; want logged and a summary of 1 (bob)", logIt, ended)
	}

	// Bounded: addresses beyond refusalMax share one count.
	var s refusalLog
	lines := 0
	for i := range refusalMax + 100 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if logIt, _ := s.note(t0, a, "u", "why"); logIt {
			lines++
		}
	}
	if len(s.m) != refusalMax || lines != refusalMax || s.overflow.n != 100 {
		t.Errorf("%d addresses: table %d, logged %d, overflow %d; want %d, %d, 100",
			refusalMax+100, len(s.m), lines, s.overflow.n, refusalMax, refusalMax)
	}
	sums := s.sweep(t0.Add(refusalEvery))
	if len(sums) != 1 || sums[0].ip.IsValid() || sums[0].n != 100 || len(s.m) != 0 {
		t.Errorf("sweep of the full table = %d summaries (%s), table %d; want only the overflow's 100, table empty",
			len(sums), fmt.Sprint(sums[:min(len(sums), 2)]), len(s.m))
	}
}
