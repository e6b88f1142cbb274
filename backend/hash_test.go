package backend

import (
	"math"
	"testing"
)

// TestDistribution: 100,000 users over weights 100/100/200 land within ±3%
// (relative) of 25/25/50%.
func TestDistribution(t *testing.T) {
	p, _ := newPool(t, backendConf(srv("a", 100), srv("b", 100), srv("c", 200)), nil)
	count := map[string]int{}
	us := users(100000)
	for _, u := range us {
		count[first(p, u)]++
	}
	want := map[string]float64{"a": 0.25, "b": 0.25, "c": 0.50}
	for name, w := range want {
		got := float64(count[name]) / float64(len(us))
		t.Logf("%s: %d users, %.2f%% (want %.0f%%)", name, count[name], 100*got, 100*w)
		if math.Abs(got-w) > 0.03*w {
			t.Errorf("share of %s = %.4f, want %.2f ±3%%", name, got, w)
		}
	}
}

// TestRemoveMovesOnlyItsUsers is the rendezvous property: removing a server
// moves its users and nobody else; adding one moves users only to it.
func TestRemoveMovesOnlyItsUsers(t *testing.T) {
	all := backendConf(srv("a", 100), srv("b", 100), srv("c", 200))
	p, _ := newPool(t, all, nil)
	us := users(20000)
	before := map[string]string{}
	for _, u := range us {
		before[u] = first(p, u)
	}
	if err := p.Reload(backendConf(srv("a", 100), srv("c", 200))); err != nil {
		t.Fatal(err)
	}
	moved := 0
	for _, u := range us {
		got := first(p, u)
		switch {
		case before[u] == "b" && got == "b":
			t.Fatalf("%s still routed to the removed server", u)
		case before[u] == "b":
			moved++
		case got != before[u]:
			t.Errorf("%s moved %s → %s though its server stayed", u, before[u], got)
		}
	}
	t.Logf("%d of %d users moved (those of b)", moved, len(us))
	if err := p.Reload(all); err != nil { // b back: only b's users move, back to b
		t.Fatal(err)
	}
	for _, u := range us {
		if got := first(p, u); got != before[u] {
			t.Errorf("after re-adding b, %s goes to %s, want %s", u, got, before[u])
		}
	}
}

// TestRouteCase: the hash is of the lower-cased user, on every path.
func TestRouteCase(t *testing.T) {
	p, _ := newPool(t, backendConf(srv("a", 100), srv("b", 100), srv("c", 100)), nil)
	for _, u := range users(200) {
		for _, v := range []string{"USER" + u[4:], "User" + u[4:], "ÜSER" + u[4:]} {
			want := first(p, lowerKey(v, new([maxKey]byte)))
			if got := first(p, v); got != want {
				t.Errorf("Route(%q) = %s, want %s (lower-cased)", v, got, want)
			}
		}
	}
	var buf [maxKey]byte
	if got := lowerKey("Alice@Example.COM", &buf); got != "alice@example.com" {
		t.Errorf("lowerKey = %q", got)
	}
	if got := lowerKey("ÄLICE", &buf); got != "älice" {
		t.Errorf("lowerKey = %q", got)
	}
}

// TestRouteNoAlloc holds the hash path at zero allocations per login, for
// lower-case and mixed-case names.
func TestRouteNoAlloc(t *testing.T) {
	p, _ := newPool(t, backendConf(srv("a", 100), srv("b", 100), srv("c", 200)), nil)
	buf := make([]*Server, 0, 8)
	for _, u := range []string{"alice@example.com", "Alice@Example.COM"} {
		n := testing.AllocsPerRun(1000, func() { p.RouteInto(buf[:0], u) })
		if n != 0 {
			t.Errorf("RouteInto(%q): %v allocations per call, want 0", u, n)
		}
	}
}

// BenchmarkRoute is the routing cost of one login on the hash path (three
// servers, a reused buffer). Target: ≤ 2 µs and 0 allocations.
func BenchmarkRoute(b *testing.B) {
	p, _ := newPool(b, backendConf(srv("a", 100), srv("b", 100), srv("c", 200)), nil)
	us := users(1024)
	buf := make([]*Server, 0, 8)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		order, _ := p.RouteInto(buf[:0], us[i&1023])
		if len(order) != 3 {
			b.Fatal(order)
		}
	}
}
