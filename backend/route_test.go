package backend

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const alice = "alice@example.com"

// roles names servers by their place in alice's hash order on a fresh pool
// ("h" first, then "o1", "o2"), found by the test rather than assumed; other
// names ("a", "b", "c") are servers as configured.
type roles map[string]string

func (r roles) of(role string) string {
	if n, ok := r[role]; ok {
		return n
	}
	return role
}

type step func(t *testing.T, p *Pool, clk *clock, r roles)

func opened(on string) step { // a session of alice on `on`, still open
	return func(t *testing.T, p *Pool, clk *clock, r roles) {
		p.SessionStarted(alice, p.byName[r.of(on)], func(string) {})
	}
}

func ended(on string, ago time.Duration) step { // a session on `on` that ended `ago`
	return func(t *testing.T, p *Pool, clk *clock, r roles) {
		p.SessionStarted(alice, p.byName[r.of(on)], func(string) {})()
		clk.Add(ago)
	}
}

func down(name string) step {
	return func(t *testing.T, p *Pool, clk *clock, r roles) { markDown(p, r.of(name)) }
}

func drain(name string) step {
	return func(t *testing.T, p *Pool, clk *clock, r roles) {
		if err := p.Drain(r.of(name), false); err != nil {
			t.Fatal(err)
		}
	}
}

func moved(name string) step {
	return func(t *testing.T, p *Pool, clk *clock, r roles) {
		if err := p.Move(alice, r.of(name)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRouteOrder: affinity, then the map file, then the hash, each only while
// its server is up and not draining; affinity outlives the last session by
// backend.affinity (15m) on the injected clock.
func TestRouteOrder(t *testing.T) {
	tests := []struct {
		name       string
		mapFile    string // roles in braces, e.g. "alice@example.com {o2}"
		routeFirst bool
		steps      []step
		want       string // role or name; "" none
		reason     string
	}{
		{name: "hash", want: "h", reason: "hash"},
		{name: "hash skips down", steps: []step{down("h")}, want: "o1", reason: "hash"},
		{name: "hash skips draining", steps: []step{drain("h")}, want: "o1", reason: "hash"},
		{name: "map wins over hash", mapFile: "alice@example.com {o2}", want: "o2", reason: "map"},
		{name: "domain map", mapFile: "@EXAMPLE.com {o2}", want: "o2", reason: "map"},
		{name: "user entry wins over domain", mapFile: "@example.com {o2}\nAlice@example.com {o1}", want: "o1", reason: "map"},
		{name: "map to a down server: hash", mapFile: "alice@example.com {o2}", steps: []step{down("o2")}, want: "h", reason: "hash"},
		{name: "map to a draining server: hash", mapFile: "alice@example.com {o2}", steps: []step{drain("o2")}, want: "h", reason: "hash"},
		{name: "open session wins over map and hash", mapFile: "alice@example.com {o2}", steps: []step{opened("o1")}, want: "o1", reason: "affinity"},
		{name: "affinity lasts after the last session", steps: []step{ended("o1", 14*time.Minute)}, want: "o1", reason: "affinity"},
		{name: "affinity expires", steps: []step{ended("o1", 15*time.Minute)}, want: "h", reason: "hash"},
		{name: "expired affinity: map again", mapFile: "alice@example.com {o2}", steps: []step{ended("o1", time.Hour)}, want: "o2", reason: "map"},
		{name: "open session never expires", steps: []step{opened("o1"), ended("o2", 0), func(t *testing.T, p *Pool, clk *clock, r roles) { clk.Add(48 * time.Hour) }}, want: "o2", reason: "affinity"},
		{name: "affinity to a down server: hash", steps: []step{opened("o1"), down("o1")}, want: "h", reason: "hash"},
		{name: "affinity to a draining server: map", mapFile: "alice@example.com {o2}", steps: []step{opened("o1"), drain("o1")}, want: "o2", reason: "map"},
		{name: "never split: the latest session's server", steps: []step{opened("o1"), opened("o2")}, want: "o2", reason: "affinity"},
		{name: "server back up: affinity stays", steps: []step{down("h"), opened("o1"), func(t *testing.T, p *Pool, clk *clock, r roles) {
			for range p.cfg.Rise {
				p.recordCheck(p.byName[r.of("h")], []string{"IMAP4rev1"}, nil)
			}
		}}, want: "o1", reason: "affinity"},
		{name: "move pins", steps: []step{opened("o1"), moved("o2")}, want: "o2", reason: "affinity"},
		{name: "move expires", steps: []step{moved("o2"), func(t *testing.T, p *Pool, clk *clock, r roles) { clk.Add(15 * time.Minute) }}, want: "h", reason: "hash"},
		{name: "route first", routeFirst: true, want: "a", reason: "first"},
		{name: "route first skips down", routeFirst: true, steps: []step{down("a")}, want: "b", reason: "first"},
		{name: "route first skips draining", routeFirst: true, steps: []step{drain("a"), drain("b")}, want: "c", reason: "first"},
		{name: "route first keeps affinity", routeFirst: true, steps: []step{opened("c")}, want: "c", reason: "affinity"},
		{name: "none up", steps: []step{down("a"), down("b"), drain("c")}, want: "", reason: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			b := backendConf(srv("a", 100), srv("b", 100), srv("c", 100))
			p, _ := newPool(t, b, clk)
			order, reason := p.Route(alice)
			if reason != "hash" || len(order) != 3 {
				t.Fatalf("fresh pool: Route = %v, %q", names(order), reason)
			}
			r := roles{"h": order[0].Name, "o1": order[1].Name, "o2": order[2].Name}
			if tc.routeFirst {
				b.Route = "first"
			}
			if tc.mapFile != "" {
				b.MapFile = filepath.Join(t.TempDir(), "map")
				text := strings.NewReplacer("{o1}", r["o1"], "{o2}", r["o2"]).Replace(tc.mapFile)
				if err := os.WriteFile(b.MapFile, []byte(text+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := p.Reload(b); err != nil {
				t.Fatal(err)
			}
			for _, s := range tc.steps {
				s(t, p, clk, r)
			}
			want := r.of(tc.want)
			order, reason = p.Route("ALICE@Example.com")
			got := ""
			if len(order) > 0 {
				got = order[0].Name
			}
			if got != want || reason != tc.reason {
				t.Errorf("Route = %v, %q; want %s first, %q (roles %v)", names(order), reason, want, tc.reason, r)
			}
			if n := names(order); len(n) != len(slices.Compact(slices.Sorted(slices.Values(n)))) {
				t.Errorf("Route = %v: a server twice", n)
			}
			if w := p.Where(alice); w.Backend != got {
				t.Errorf("Where = %+v, want backend %s", w, got)
			}
		})
	}
}

// TestRouteFailoverOrder: after the first choice come the others in hash
// order, so a failover goes where the user goes once the first is down.
func TestRouteFailoverOrder(t *testing.T) {
	p, _ := newPool(t, backendConf(srv("a", 100), srv("b", 100), srv("c", 200), srv("d", 50)), nil)
	for _, u := range users(100) {
		order, _ := p.Route(u)
		if len(order) != 4 {
			t.Fatalf("Route(%s) = %v", u, names(order))
		}
		markDown(p, order[0].Name)
		if after, _ := p.Route(u); !slices.Equal(names(after), names(order[1:])) {
			t.Errorf("Route(%s) = %v; with %s down %v, want %v", u, names(order), order[0].Name, names(after), names(order[1:]))
		}
		for range p.cfg.Rise {
			p.recordCheck(order[0], nil, nil)
		}
	}
}

func names(order []*Server) []string {
	out := make([]string, len(order))
	for i, s := range order {
		out[i] = s.Name
	}
	return out
}
