package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/imapgw/imapgw/bench/loadgen"
)

// benchTable is the nftables table imapgw owns during the kernel-drop round;
// firewall_cleanup removes it when imapgw stops.
const benchTable = "imapgw_bench"

// Settling before a measured window. imapgw keeps working after a burst of
// logins: its memory trimmer forces a collection and returns memory to the OS
// five to six seconds after the last session started (proxy/trim.go), and
// every relay that ended cleanly has a timer close its sockets once more
// halfCloseGrace (5 s) later, each a goroutine and a thread wake-up
// (proxy/relay.go). Measured right after the legitimate load, that work (about
// 0.1 core for 5 s) landed in the flood's window and made a kernel-dropped SYN
// look like 5–8 µs of imapgw CPU. The quiet stretch is longer than
// halfCloseGrace because the timers fire that long after a load ends: a
// shorter one could end in the gap between a short load and its timers.
const (
	settleStep  = time.Second // long enough that a few ms of periodic timers stay under settleIdle
	settleQuiet = 6 * time.Second
	settleIdle  = 0.01 // cores: below this imapgw counts as idle
	settleMax   = 40 * time.Second
)

// kernelDrop measures the banned source's flood once more with bans.firewall
// = "nftables" (issue 15): the kernel drops its SYNs, so imapgw should spend
// next to nothing on it. The flood's cost is the CPU it adds: imapgw's CPU
// over the flood window less its CPU over equally long windows without the
// flood just before and after, all taken once imapgw has settled. It needs
// root (CAP_NET_ADMIN); without it the report says it was not measured.
func (b *bench) kernelDrop(g *imapgwPeer) error {
	if os.Geteuid() != 0 {
		b.res.note("kernel drop (bans.firewall = \"nftables\") not measured: needs root")
		return nil
	}
	g.firewall = benchTable
	defer func() { g.firewall = "" }()
	if err := g.start(); err != nil {
		return fmt.Errorf("starting %s with the firewall: %w", g.name(), err)
	}
	defer g.stop()
	t := b.target(g)
	loadgen.Loop(8, b.opt.warmup, t.LoginCycle)
	if err := b.failLogins(g); err != nil {
		return err
	}
	if err := dropsSYN(g); err != nil {
		return err
	}
	// The attacker sends at the rate imapgw refused it in user space, so both
	// floods cost the attacker (on this same machine) about the same.
	rate, _ := b.res.median(nameImapgw, "flood.refusals")
	to := netip.MustParseAddrPort(g.addr())
	synFlood := func() loadgen.FloodStats { return loadgen.SYNFlood(to, bannedSource, floodWorkers, rate, b.opt.dur) }

	b.settle(g, "kernel drop")
	idle1 := b.cpuWindow(g, "kernel-idle-before", func() { time.Sleep(b.opt.dur) })
	before := droppedPackets()
	var alone loadgen.FloodStats
	flood := b.cpuWindow(g, "kernel-drops", func() { alone = synFlood() })
	dropped := droppedPackets() - before
	idle2 := b.cpuWindow(g, "kernel-idle-after", func() { time.Sleep(b.opt.dur) })
	b.recordKernelDrop(alone, flood, idle1, idle2, dropped)
	b.floodErrors("SYN flood alone", alone)
	b.logf("nftables after the flood:\n%s", nftTable())

	// The legitimate user's logins without and with the flood, alternating
	// (twice each) so that the machine's drift hits both alike. Every measured
	// window follows one of the same load, unmeasured for the first: each then
	// gets the previous one's delayed work (see settle) in the same measure.
	loadgen.Loop(8, b.opt.dur, t.LoginCycle)
	var sent, droppedDuring int
	for range 2 {
		var base loadgen.Stats
		baseCPU := b.withCPU(g, "kernel-base", func() { base = loadgen.Loop(8, b.opt.dur, t.LoginCycle) })
		b.recordLogins(g.name(), "flood.kernel.base", base, baseCPU, 1)
		before := droppedPackets()
		mixed := b.underFlood(g, t, "flood.kernel.during", synFlood)
		droppedDuring += droppedPackets() - before
		sent += mixed.Refused
		b.res.add(g.name(), "flood.kernel_during", mixed.Rate())
		b.floodErrors("SYN flood with legitimate load", mixed)
	}
	b.res.note("kernel drop with legitimate load: %d connection attempts sent, the rule dropped %d packets", sent, droppedDuring)
	return nil
}

// window is imapgw's CPU over one measured stretch of time.
type window struct {
	cpu, wall time.Duration
}

// cores is the window's CPU rate.
func (w window) cores() float64 { return w.cpu.Seconds() / w.wall.Seconds() }

// cpuWindow runs f and returns imapgw's CPU meanwhile, to the nanosecond
// (threadsCPU), inside withCPU for its log line and -perf.
func (b *bench) cpuWindow(g peer, key string, f func()) window {
	var w window
	b.withCPU(g, key, func() {
		c0, _ := threadsCPU(g.pid())
		t0 := time.Now()
		f()
		w.wall = time.Since(t0)
		c1, _ := threadsCPU(g.pid())
		w.cpu = c1 - c0
	})
	b.logf("%-8s %-20s %.3f ms of imapgw CPU over %v", g.name(), key, ms(w.cpu), w.wall.Round(time.Millisecond))
	return w
}

// recordKernelDrop keeps the flood's rate, the packets the rule dropped, and
// imapgw's CPU per attempt, added by the flood (the idle windows' rate
// subtracted) and gross. The two idle windows' difference, over the same
// attempts, is the measurement's noise.
func (b *bench) recordKernelDrop(f loadgen.FloodStats, flood, idle1, idle2 window, dropped int) {
	idleRate := (idle1.cpu + idle2.cpu).Seconds() / (idle1.wall + idle2.wall).Seconds()
	idle := time.Duration(idleRate * float64(flood.wall))
	added := flood.cpu - idle
	b.res.add(nameImapgw, "flood.kernel", f.Rate())
	b.res.add(nameImapgw, "flood.kernel.sent", float64(f.Refused))
	b.res.add(nameImapgw, "flood.kernel.dropped", float64(dropped))
	b.res.add(nameImapgw, "flood.kernel.window_ms", ms(flood.cpu))
	b.res.add(nameImapgw, "flood.kernel.idle_ms", ms(idle))
	if f.Refused > 0 {
		per := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 / float64(f.Refused) }
		noise := time.Duration(abs(idle1.cores()-idle2.cores()) * float64(flood.wall))
		b.res.add(nameImapgw, "flood.kernel.cpu", per(added))
		b.res.add(nameImapgw, "flood.kernel.gross", per(flood.cpu))
		b.res.add(nameImapgw, "flood.kernel.noise", per(noise))
		b.logf("%-8s %-20s %9.0f/s  %8.4f µs CPU added each (gross %.4f, idle windows differ by %.4f); %d sent, %d dropped by the rule",
			nameImapgw, "flood.kernel", f.Rate(), per(added), per(flood.cpu), per(noise), f.Refused, dropped)
	}
	b.res.note("kernel drop: %d connection attempts sent, the imapgw table's rule dropped %d packets", f.Refused, dropped)
}

func abs(x float64) float64 { return max(x, -x) }

// settle waits until imapgw's CPU has stayed under settleIdle for
// settleQuiet, so that a window does not pay for the work before it. It logs
// what imapgw spent meanwhile, and notes in the report when it never settled.
func (b *bench) settle(g peer, what string) {
	start := time.Now()
	quietSince := start
	prev, _ := threadsCPU(g.pid())
	first := prev
	var busy []string // the steps above settleIdle: when, and how much CPU
	for time.Since(start) < settleMax {
		time.Sleep(settleStep)
		cur, err := threadsCPU(g.pid())
		if err != nil {
			b.res.note("%s: settling: %v", what, err)
			return
		}
		step := cur - prev
		prev = cur
		if step.Seconds()/settleStep.Seconds() > settleIdle {
			quietSince = time.Now()
			busy = append(busy, fmt.Sprintf("%.2fs:%.1fms", time.Since(start).Seconds(), ms(step)))
		}
		if time.Since(quietSince) >= settleQuiet {
			b.logf("%-8s %-20s settled in %v: %.1f ms of CPU meanwhile; busy %v steps: %s",
				g.name(), what, time.Since(start).Round(time.Millisecond), ms(cur-first), settleStep, strings.Join(busy, " "))
			return
		}
	}
	b.res.note("%s: imapgw did not settle (CPU under %.0f%% of a core for %v) within %v", what, settleIdle*100, settleQuiet, settleMax)
}

// threadsCPU is the CPU time pid's threads have run, from the nanosecond
// counter of each /proc/PID/task/TID/schedstat rather than /proc/PID/stat's
// 10 ms clock ticks, which are as coarse as the whole flood's cost.
func threadsCPU(pid int) (time.Duration, error) {
	dirs, err := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/schedstat")
	if err != nil || len(dirs) == 0 {
		return 0, fmt.Errorf("no threads of process %d: %v", pid, err)
	}
	var sum time.Duration
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue // the thread ended between the listing and now
		}
		f := bytes.Fields(b)
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", d, err)
		}
		sum += time.Duration(ns)
	}
	return sum, nil
}

// dropsSYN checks that bannedSource's connect now times out: the kernel
// dropped its SYN.
func dropsSYN(g peer) error {
	var last error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(bannedSource, 0)), Timeout: 300 * time.Millisecond}
		c, err := d.Dial("tcp", g.addr())
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		if c != nil {
			c.Close()
		}
		last = err
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("%v after %d failed logins with bans.firewall: connect not dropped (%v)", bannedSource, sourceFailures, last)
}

var counterRE = regexp.MustCompile(`counter packets (\d+)`)

// droppedPackets sums the counters of the imapgw table's drop rules (nft is
// only read here; -1 when it cannot be run).
func droppedPackets() int {
	out, err := exec.Command("nft", "list", "chain", "inet", benchTable, "input").Output()
	if err != nil {
		return -1
	}
	n := 0
	for _, m := range counterRE.FindAllSubmatch(out, -1) {
		v, _ := strconv.Atoi(string(m[1]))
		n += v
	}
	return n
}

// nftTable is the bench table as nft shows it, without the set's elements
// (one line per ban), or why it could not be listed.
func nftTable() string {
	out, err := exec.Command("nft", "-t", "list", "table", "inet", benchTable).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("nft list table: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// kernelDropTable is the flood again with bans.firewall = "nftables".
func kernelDropTable(r *results, v func(key, format string) string) string {
	if _, ok := r.median(nameImapgw, "flood.kernel"); !ok {
		return ""
	}
	var b strings.Builder
	b.WriteString("\nWith `bans.firewall = \"nftables\"` the ban is also an element of imapgw's nftables set\n")
	b.WriteString("and the kernel drops the banned source's SYNs at the input hook (priority filter − 10), before\n")
	b.WriteString("TCP sees them: no SYN-ACK, nothing queued for accept. The source sends connection attempts\n")
	fmt.Fprintf(&b, "(non-blocking connect, close) from %d workers, at the rate imapgw refused it above.\n", floodWorkers)
	b.WriteString("imapgw's CPU is read to the nanosecond here (its threads' run time from\n")
	b.WriteString("`/proc/PID/task/*/schedstat`). Before each window imapgw is left to settle until it has used\n")
	fmt.Fprintf(&b, "under %.0f%% of a core for %v: after a burst of logins its memory trimmer forces a collection\n", settleIdle*100, settleQuiet)
	b.WriteString("and each ended relay's half-close timer fires 5 s later, work that earlier runs charged\n")
	b.WriteString("to the flood (5–8 µs per attempt). The flood's cost is the CPU it\n")
	b.WriteString("**adds**: imapgw's CPU over the flood window less its CPU over two equally long windows\n")
	b.WriteString("without the flood, just before and after it, divided by the attempts sent.\n\n")
	b.WriteString("| banned source alone, dropped by the kernel | |\n|---|--:|\n")
	fmt.Fprintf(&b, "| attempts/s | %s |\n", v("flood.kernel", "%.0f"))
	fmt.Fprintf(&b, "| attempts sent / packets dropped by the table's rule | %s / %s |\n", v("flood.kernel.sent", "%.0f"), v("flood.kernel.dropped", "%.0f"))
	fmt.Fprintf(&b, "| imapgw CPU over the flood window, ms | %s |\n", v("flood.kernel.window_ms", "%.2f"))
	fmt.Fprintf(&b, "| imapgw CPU over as long without the flood, ms | %s |\n", v("flood.kernel.idle_ms", "%.2f"))
	fmt.Fprintf(&b, "| imapgw CPU per attempt, gross (nothing subtracted), µs | %s |\n", v("flood.kernel.gross", "%.4f"))
	fmt.Fprintf(&b, "| imapgw CPU per attempt, added by the flood, µs | **%s** (the idle windows differ by %s) |\n",
		v("flood.kernel.cpu", "%.4f"), v("flood.kernel.noise", "%.4f"))
	b.WriteString("\nThe legitimate user's logins were measured without and with the flood in turn, twice each\n")
	b.WriteString("(medians of the two), each window right after another of logins.\n\n")
	b.WriteString("| legitimate user, 8 clients | without flood | during flood |\n|---|--:|--:|\n")
	fmt.Fprintf(&b, "| login cycles/s | %s | %s |\n", v("flood.kernel.base", "%.0f"), v("flood.kernel.during", "%.0f"))
	fmt.Fprintf(&b, "| p50 login latency, ms | %s | %s |\n", v("flood.kernel.base.p50", "%.2f"), v("flood.kernel.during.p50", "%.2f"))
	fmt.Fprintf(&b, "| p99 login latency, ms | %s | %s |\n", v("flood.kernel.base.p99", "%.2f"), v("flood.kernel.during.p99", "%.2f"))
	fmt.Fprintf(&b, "| imapgw CPU per login cycle, µs | %s | %s |\n", v("flood.kernel.base.cpu", "%.0f"), v("flood.kernel.during.cpu", "%.0f"))
	fmt.Fprintf(&b, "| banned source: attempts/s dropped by the kernel | – | %s |\n", v("flood.kernel_during", "%.0f"))
	b.WriteString("\nDuring the flood the attacker's sockets run in the load generator's process, on the same\n")
	b.WriteString("two cores as imapgw and the legitimate clients.\n")
	k, ok1 := r.median(nameImapgw, "flood.kernel.cpu")
	gross, _ := r.median(nameImapgw, "flood.kernel.gross")
	noise, _ := r.median(nameImapgw, "flood.kernel.noise")
	hs, ok2 := r.median(nameImapgw, "flood.handshake.cpu")
	if !ok1 || !ok2 || gross <= 0 {
		return b.String()
	}
	verdict := "met"
	if k >= 1 || (k > 0 && hs/k < 400) {
		verdict = "**missed**"
	}
	if k <= 0 {
		fmt.Fprintf(&b, "\nThe flood added no measurable imapgw CPU: %.4f µs per attempt, its window using no more than\n", k)
		fmt.Fprintf(&b, "the windows without it (which differ from each other by %.4f µs per attempt).", noise)
	} else {
		fmt.Fprintf(&b, "\nA kernel-dropped attempt adds %.4f µs of imapgw CPU, %.0f× less than a handshake.", k, hs/k)
	}
	fmt.Fprintf(&b, " Even counting all of\nimapgw's CPU in the flood window, an attempt cost at most %.4f µs, %.0f× less than a handshake.\n", gross, hs/gross)
	fmt.Fprintf(&b, "Target: under 1 µs, ≥ 400× less than a handshake: %s.\n", verdict)
	return b.String()
}
