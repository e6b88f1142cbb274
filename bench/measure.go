package main

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/imapgw/imapgw/bench/backend"
	"github.com/imapgw/imapgw/bench/loadgen"
)

// Credentials of the one account; the flood test's attacker uses another.
const (
	benchUser     = "bench"
	benchPassword = "bench-secret-1"
	attackerUser  = "attacker"
)

// bannedSource floods in the ban test. It is outside legitSources, so its ban
// touches no legitimate client.
var bannedSource = netip.MustParseAddr("127.0.0.99")

// legitSources spread the legitimate load over 8 addresses, as 8 different
// clients would come from; none of them is in imapgw's bans.allow.
func legitSources() []netip.Addr {
	var out []netip.Addr
	for i := range 8 {
		out = append(out, netip.AddrFrom4([4]byte{127, 0, 0, byte(1 + i)}))
	}
	return out
}

// clientTLS is every load-generator connection's TLS: TLS 1.3 by default, no
// session cache (every cycle pays a full handshake), and X25519 then P-256 only,
// because Go would otherwise offer the hybrid X25519MLKEM768 first, which the
// Go gateway accepts and Debian's OpenSSL 3.0 does not: the key exchange must be
// the same for all. The certificate is not verified: it is ours, and checking
// it would only add load-generator CPU on the same two cores.
func clientTLS() *tls.Config {
	return &tls.Config{
		ServerName:         benchHost,
		InsecureSkipVerify: true,
		CurvePreferences:   []tls.CurveID{tls.X25519, tls.CurveP256},
	}
}

// bench runs the measurements and collects their results.
type bench struct {
	opt     options
	res     *results
	backend *backend.Server
}

func (b *bench) target(p peer, sources ...netip.Addr) *loadgen.Target {
	if len(sources) == 0 {
		sources = legitSources()
	}
	return &loadgen.Target{
		Addr: p.addr(), TLS: clientTLS(), Sources: sources,
		User: benchUser, Password: benchPassword, Timeout: 15 * time.Second,
	}
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// round starts every peer afresh and measures them in the given order, one
// measurement kind at a time: the peers' runs of one kind are seconds apart
// (the logins' take turns within a second, see logins), so a change in the
// machine's other load hits them alike. Idle memory comes first (its "before"
// is a warmed-up process that has not yet served a big relay).
func (b *bench) round(order []peer, round int) error {
	for _, p := range order {
		if err := p.start(); err != nil {
			return fmt.Errorf("starting %s: %w", p.name(), err)
		}
		defer p.stop()
	}
	targets := map[peer]*loadgen.Target{}
	for _, p := range order {
		targets[p] = b.target(p)
		if err := b.probe(p, targets[p]); err != nil {
			return err
		}
		loadgen.Loop(8, b.opt.warmup, targets[p].LoginCycle)
	}
	if b.opt.measures("idle") {
		for _, p := range order {
			if err := b.idleMemory(p, targets[p], round); err != nil {
				b.res.note("%s round %d: idle sessions: %v", p.name(), round, err)
			}
		}
	}
	for _, c := range concurrencies {
		if b.opt.measures("login") {
			b.logins(order, targets, c, round)
		}
	}
	for _, n := range concurrencies {
		for _, p := range order {
			if b.opt.measures("relay") {
				b.relay(p, targets[p], n, round)
			}
		}
	}
	return nil
}

// concurrencies are the clients of the login measurement and the sessions of
// the relay measurement (issue 16: 2, 8 and 64 for both).
var concurrencies = []int{2, 8, 64}

// probe records the negotiated TLS parameters, which must be the same for all.
func (b *bench) probe(p peer, t *loadgen.Target) error {
	s, err := t.Open()
	if err != nil {
		return fmt.Errorf("%s: first connection: %w", p.name(), err)
	}
	defer s.Close()
	st := s.TLSState()
	b.res.setTLS(p.name(), fmt.Sprintf("%s, %s, %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), st.CurveID))
	return nil
}

// logins measures every peer at one concurrency, taking turns in -slices
// slices of -duration/slices each (who goes first rotates from slice to
// slice). The machine's other load moves rates by 10-20 % within seconds here;
// runs seconds apart made the ratio of one round as much noise as measurement,
// while slices of a second see the same machine.
func (b *bench) logins(order []peer, targets map[peer]*loadgen.Target, clients, round int) {
	key := fmt.Sprintf("login%d", clients)
	st := make([]loadgen.Stats, len(order))
	cpu := make([]cpuSpent, len(order))
	var stops []func()
	for _, p := range order {
		stops = append(stops, b.perf(p, fmt.Sprintf("r%d-%s", round, key)))
	}
	b.alternate(len(order), func(k int, d time.Duration) {
		r0 := readCPU(order[k])
		s := loadgen.Loop(clients, d, targets[order[k]].LoginCycle)
		cpu[k].add(r0, readCPU(order[k]))
		st[k].Add(s)
	})
	for _, stop := range stops {
		stop()
	}
	for k, p := range order {
		b.logCPU(p, key, cpu[k])
		b.recordLogins(p.name(), key, st[k], cpu[k].proxy, round)
		if st[k].Ops > 0 {
			b.res.add(p.name(), key+".ctx", float64(cpu[k].ctx)/float64(st[k].Ops))
		}
	}
}

// alternate splits -duration into -slices slices and runs measure for each of
// count contenders in every slice, for duration/slices; who goes first
// rotates from slice to slice.
func (b *bench) alternate(count int, measure func(k int, d time.Duration)) {
	n := max(b.opt.slices, 1)
	for i := range n {
		for j := range count {
			measure((i+j)%count, b.opt.dur/time.Duration(n))
		}
	}
}

func (b *bench) recordLogins(name, key string, st loadgen.Stats, cpu time.Duration, round int) {
	b.res.add(name, key, st.Rate())
	b.res.add(name, key+".p50", ms(st.Percentile(0.50)))
	b.res.add(name, key+".p99", ms(st.Percentile(0.99)))
	if st.Ops > 0 {
		b.res.add(name, key+".cpu", float64(cpu.Microseconds())/float64(st.Ops))
	}
	if st.Errors > 0 {
		b.res.note("%s round %d %s: %d failed cycles, first: %v", name, round, key, st.Errors, st.FirstErr)
	}
	b.logf("%-8s round %d %-8s %7.0f cycles/s  p50 %6.2f ms  p99 %6.2f ms  CPU %4.0f µs/cycle  errors %d", name, round, key,
		st.Rate(), ms(st.Percentile(0.5)), ms(st.Percentile(0.99)), float64(cpu.Microseconds())/float64(max(st.Ops, 1)), st.Errors)
}

// withCPU runs f and returns the CPU time the peer's processes spent meanwhile,
// recording imapgw with perf when -perf is set. It logs the load generator's
// own share, which shows when it is the bottleneck.
func (b *bench) withCPU(p peer, key string, f func()) time.Duration {
	stopPerf := b.perf(p, key)
	var c cpuSpent
	r0 := readCPU(p)
	f()
	c.add(r0, readCPU(p))
	stopPerf()
	b.logCPU(p, key, c)
	return c.proxy
}

// cpuReading is the CPU time used so far by a peer's processes, by this one
// (the load generator and the backend) and by the whole machine.
type cpuReading struct {
	proxy, gen, machine time.Duration
	at                  time.Time
	ctx                 int64 // the peer's context switches
}

func readCPU(p peer) cpuReading {
	u, _ := treeUsage(p.pid())
	s, _ := readStat(os.Getpid())
	m, _ := machineBusy()
	return cpuReading{proxy: u.cpu, gen: s.cpu, machine: m, at: time.Now(), ctx: u.ctx}
}

// cpuSpent adds up the CPU time of one or more intervals.
type cpuSpent struct {
	proxy, gen, machine, wall time.Duration
	ctx                       int64
}

func (c *cpuSpent) add(from, to cpuReading) {
	c.proxy += to.proxy - from.proxy
	c.gen += to.gen - from.gen
	c.machine += to.machine - from.machine
	c.wall += to.at.Sub(from.at)
	c.ctx += to.ctx - from.ctx
}

// logCPU logs the cores each side used and records the other processes' share.
func (b *bench) logCPU(p peer, key string, c cpuSpent) {
	cores := func(d time.Duration) float64 { return d.Seconds() / c.wall.Seconds() }
	proxy, gen := cores(c.proxy), cores(c.gen)
	others := max(0, cores(c.machine)-proxy-gen)
	b.res.add("machine", "others", others)
	b.logf("%-8s %-20s CPU over %v: proxy %.2f cores, load generator and backend %.2f, other processes %.2f",
		p.name(), key, c.wall.Round(time.Millisecond), proxy, gen, others)
}

// perf starts `perf record` on every process of the peer when -perf is set
// (imapgw's profile beside HAProxy's shows where their CPU per cycle
// differs); the returned func stops it and writes a flat profile next to the data.
func (b *bench) perf(p peer, key string) (stop func()) {
	if b.opt.perfDir == "" {
		return func() {}
	}
	pids, err := tree(p.pid())
	if err != nil {
		b.res.note("perf: %v", err)
		return func() {}
	}
	list := make([]string, len(pids))
	for i, pid := range pids {
		list[i] = strconv.Itoa(pid)
	}
	data := filepath.Join(b.opt.perfDir, strings.ReplaceAll(p.name(), ":", "-")+"-"+key+".perf.data")
	rec, err := startProc(data+".log", "perf", "record", "-F", "999", "-g", "-p", strings.Join(list, ","), "-o", data)
	if err != nil {
		b.res.note("perf: %v", err)
		return func() {}
	}
	return func() {
		rec.stop(syscall.SIGINT)
		out, err := exec.Command("perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,symbol",
			"--percent-limit", "0.7", "-g", "none").Output()
		if err != nil {
			b.res.note("perf report %s: %v", data, err)
		}
		os.WriteFile(strings.TrimSuffix(data, ".perf.data")+".txt", out, 0o644)
	}
}

func (b *bench) relay(p peer, t *loadgen.Target, sessions, round int) {
	key := fmt.Sprintf("relay%d", sessions)
	var (
		st  loadgen.RelayStats
		err error
	)
	cpu := b.withCPU(p, fmt.Sprintf("r%d-%s", round, key), func() { st, err = loadgen.Relay(t, sessions, b.opt.dur) })
	if err != nil {
		b.res.note("%s round %d %s: %v", p.name(), round, key, err)
		return
	}
	b.res.add(p.name(), key, st.MBps())
	if st.Bytes > 0 {
		b.res.add(p.name(), key+".cpu", float64(cpu.Microseconds())/(float64(st.Bytes)/1e6))
	}
	b.logf("%-8s round %d %-8s %7.0f MB/s (%d fetches)", p.name(), round, key, st.MBps(), st.Fetches)
}

// idleMemory opens the idle sessions and charges the growth of the peer's
// resident memory to them. The settle pause lets every process finish the work
// of the last logins (and a Go runtime its background scavenging), equally for all.
func (b *bench) idleMemory(p peer, t *loadgen.Target, round int) error {
	// The first reading waits as long after the warm-up as the second after
	// the sessions open: memory a proxy frees a moment after a burst (imapgw's
	// trim, a collection) is then freed for both, and the warm-up's garbage
	// counts neither for nor against the sessions.
	time.Sleep(b.opt.settle)
	before, err := treeUsage(p.pid())
	if err != nil {
		return err
	}
	t0 := time.Now()
	set, err := loadgen.OpenIdle(t, b.opt.idle, 32)
	if err != nil {
		return err
	}
	opened := time.Since(t0)
	time.Sleep(b.opt.settle)
	after, err := treeUsage(p.pid())
	set.Close()
	if err != nil {
		return err
	}
	perKB := float64(after.rssKB-before.rssKB) / float64(b.opt.idle)
	b.res.add(p.name(), "idle", perKB)
	b.logf("%-8s round %d idle     %7.1f KB/session (RSS %d → %d kB; %d sessions opened in %v)",
		p.name(), round, perKB, before.rssKB, after.rssKB, b.opt.idle, opened.Round(time.Millisecond))
	b.waitBackendIdle()
	return nil
}

// waitBackendIdle waits for the proxy to have closed its backend connections,
// so the next measurement does not pay for this one's teardown.
func (b *bench) waitBackendIdle() {
	deadline := time.Now().Add(15 * time.Second)
	for b.backend.Sessions() > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
