package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/imapgw/imapgw/bench/backend"
	"github.com/imapgw/imapgw/bench/loadgen"
)

// poolUsers is how many distinct users log in during the pool measurement:
// enough that the rendezvous hash spreads them over three servers.
const poolUsers = 48

// poolClients is the number of concurrent clients of the pool measurement.
const poolClients = 8

// poolConfig is the [backend] lines that replace the one server and its
// client_ip: the long form, one table per server, routed by user.
func poolConfig(addrs []string) string {
	var b strings.Builder
	b.WriteString("route = \"user\"\nclient_ip = \"id\"\n")
	for i, a := range addrs {
		fmt.Fprintf(&b, "\n[[backend.server]]\nname = \"imap%d\"\naddress = %q\n", i+1, a)
	}
	b.WriteString("\n")
	return b.String()
}

// poolUserNames are the distinct users of the pool measurement.
func poolUserNames() []string {
	out := make([]string, poolUsers)
	for i := range out {
		out[i] = fmt.Sprintf("user%02d@bench.localhost", i+1)
	}
	return out
}

// pool measures imapgw's login cycles through three backend servers against
// the same through one, in the same run: two imapgw instances, both with the
// long form and route = "user", one listing three backends, the other one;
// the order alternates per round. Each backend is an instance of the same
// in-process backend, so the backends' CPU is the same in both.
func (b *bench) pool(gw *imapgwPeer) error {
	e := gw.env
	users := poolUserNames()
	var servers []*backend.Server
	for range 4 {
		s := backend.New(benchUser, benchPassword, message(1024))
		s.AddUsers(users...)
		if err := s.Listen("127.0.0.1:0"); err != nil {
			return err
		}
		defer s.Close()
		servers = append(servers, s)
	}
	three := &imapgwPeer{listenPeer: listenPeer{env: e, bin: gw.bin}, tag: "-pool3",
		pool: []string{servers[0].Addr(), servers[1].Addr(), servers[2].Addr()}}
	one := &imapgwPeer{listenPeer: listenPeer{env: e, bin: gw.bin}, tag: "-pool1",
		pool: []string{servers[3].Addr()}}
	keys := map[*imapgwPeer]string{three: "pool3", one: "pool1"}
	for round := range b.opt.rounds {
		order := []*imapgwPeer{three, one}
		if round%2 == 1 {
			order = []*imapgwPeer{one, three}
		}
		if err := b.poolRound(order, keys, users, servers[:3], round+1); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) poolRound(order []*imapgwPeer, keys map[*imapgwPeer]string, users []string, three []*backend.Server, round int) error {
	targets := map[*imapgwPeer]*loadgen.Target{}
	for _, g := range order {
		if err := g.start(); err != nil {
			return fmt.Errorf("starting imapgw (%s): %w", keys[g], err)
		}
		defer g.stop()
		t := b.target(g)
		t.Users = users
		targets[g] = t
		loadgen.Loop(poolClients, b.opt.warmup, t.LoginCycle)
	}
	// In slices, like the login comparison: the ratio is the measurement,
	// and runs seconds apart saw different machines (rounds of 0.89 to 1.13).
	st := make([]loadgen.Stats, len(order))
	cpu := make([]cpuSpent, len(order))
	served := make([]int64, len(three)) // pool3's logins per server
	var stops []func()
	for _, g := range order {
		stops = append(stops, b.perf(g, fmt.Sprintf("r%d-%s", round, keys[g])))
	}
	b.alternate(len(order), func(k int, d time.Duration) {
		g := order[k]
		before := make([]int64, len(three))
		for i, s := range three {
			before[i] = s.Logins()
		}
		r0 := readCPU(g)
		s := loadgen.Loop(poolClients, d, targets[g].LoginCycle)
		cpu[k].add(r0, readCPU(g))
		st[k].Add(s)
		if keys[g] == "pool3" {
			for i, s := range three {
				served[i] += s.Logins() - before[i]
			}
		}
	})
	for _, stop := range stops {
		stop()
	}
	for k, g := range order {
		b.logCPU(g, keys[g], cpu[k])
		b.recordLogins(nameImapgw, keys[g], st[k], cpu[k].proxy, round)
		if keys[g] == "pool3" {
			var spread []string
			for i, n := range served {
				b.res.add(nameImapgw, fmt.Sprintf("pool3.share%d", i+1), 100*float64(n)/float64(max(st[k].Ops, 1)))
				spread = append(spread, fmt.Sprint(n))
			}
			b.logf("imapgw   round %d pool3    logins per server: %s", round, strings.Join(spread, " / "))
		}
	}
	return nil
}

// poolTable is the three-servers-versus-one comparison.
func poolTable(r *results, opt options) string {
	v := func(key, format string) string {
		x, ok := r.median(nameImapgw, key)
		if !ok {
			return "–"
		}
		return fmt.Sprintf(format, x)
	}
	if _, ok := r.median(nameImapgw, "pool3"); !ok {
		return "Not measured.\n"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Two imapgw instances side by side, started afresh each round, taking turns in %d slices\n", max(opt.slices, 1))
	fmt.Fprintf(&b, "of %v (who goes first alternates; %d round(s) of %v each, %d clients, login cycle as above:\n", opt.dur/time.Duration(max(opt.slices, 1)), opt.rounds, opt.dur, poolClients)
	fmt.Fprintf(&b, "connect, TLS handshake, greeting, LOGIN, LOGOUT). Both use the `[[backend.server]]` long\n")
	fmt.Fprintf(&b, "form with `route = \"user\"`; one lists three servers, the other one. Each server is an\n")
	fmt.Fprintf(&b, "instance of the bench's in-process backend. The clients log in as %d distinct users in\n", poolUsers)
	b.WriteString("turn, so the rendezvous hash spreads them over the three. Settings that differ from the\n")
	b.WriteString("defaults: those of the comparison above (`client_ip = \"id\"`, `bans.allow = []`,\n")
	b.WriteString("`bans.source_failures = 16`, `bans.failure_delay = \"0s\"`, `limits.*` raised,\n")
	b.WriteString("`server.drain_timeout = \"1s\"`, admin off; `log.level` is the default, info), plus\n")
	b.WriteString("`route = \"user\"` (the default, written out) and the server tables; `affinity`,\n")
	b.WriteString("`check_interval`, `check_timeout`, `fall`, `rise` are the defaults.\n\n")
	b.WriteString("| measurement | three servers | one server | three / one | target |\n|---|--:|--:|--:|---|\n")
	ratioS, verdict := "–", "≥ 0.95×: not measured"
	if p3, ok1 := r.median(nameImapgw, "pool3"); ok1 {
		if p1, ok2 := r.median(nameImapgw, "pool1"); ok2 && p1 > 0 {
			ratioS = fmt.Sprintf("%.2f×", p3/p1)
			verdict = "≥ 0.95×: met"
			if p3/p1 < 0.95 {
				verdict = "≥ 0.95×: **missed**"
			}
		}
	}
	fmt.Fprintf(&b, "| login cycles/s, %d clients | %s | %s | %s | %s |\n", poolClients, v("pool3", "%.0f"), v("pool1", "%.0f"), ratioS, verdict)
	fmt.Fprintf(&b, "| p50 latency, ms | %s | %s | | |\n", v("pool3.p50", "%.2f"), v("pool1.p50", "%.2f"))
	fmt.Fprintf(&b, "| p99 latency, ms | %s | %s | | |\n", v("pool3.p99", "%.2f"), v("pool1.p99", "%.2f"))
	fmt.Fprintf(&b, "| imapgw CPU per cycle, µs | %s | %s | | |\n", v("pool3.cpu", "%.0f"), v("pool1.cpu", "%.0f"))
	fmt.Fprintf(&b, "\nShare of the three-server logins per server (median): %s%% / %s%% / %s%%.\n",
		v("pool3.share1", "%.0f"), v("pool3.share2", "%.0f"), v("pool3.share3", "%.0f"))
	b.WriteString("\n| round | three servers | one server |\n|---|--:|--:|\n")
	p3, p1 := r.all(nameImapgw, "pool3"), r.all(nameImapgw, "pool1")
	for i := range max(len(p3), len(p1)) {
		cellAt := func(v []float64) string {
			if i < len(v) {
				return fmt.Sprintf("%.0f", v[i])
			}
			return "–"
		}
		fmt.Fprintf(&b, "| %d | %s | %s |\n", i+1, cellAt(p3), cellAt(p1))
	}
	return b.String()
}
