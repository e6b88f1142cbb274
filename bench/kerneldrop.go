package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"time"

	"github.com/imapgw/imapgw/bench/loadgen"
)

// benchTable is the nftables table imapgw owns during the kernel-drop round;
// firewall_cleanup removes it when imapgw stops.
const benchTable = "imapgw_bench"

// kernelDrop measures the banned source's flood once more with bans.firewall
// = "nftables" (issue 15): the kernel drops its SYNs, so imapgw should spend
// next to nothing on it. It needs root (CAP_NET_ADMIN); without it the report
// says it was not measured.
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
	if err := b.banDropped(g); err != nil {
		return err
	}
	var base loadgen.Stats
	baseCPU := b.withCPU(g, "kernel-base", func() { base = loadgen.Loop(8, b.opt.dur, t.LoginCycle) })
	b.recordLogins(g.name(), "flood.kernel.base", base, baseCPU, 1)

	// The attacker sends at the rate imapgw refused it in user space, so both
	// floods cost the attacker (on this same machine) about the same.
	rate, _ := b.res.median(nameImapgw, "flood.refusals")
	to := netip.MustParseAddrPort(g.addr())
	before := droppedPackets()
	var alone loadgen.FloodStats
	aloneCPU := b.withCPU(g, "kernel-drops", func() {
		alone = loadgen.SYNFlood(to, bannedSource, floodWorkers, rate, b.opt.dur)
	})
	dropped := droppedPackets() - before
	b.recordRate("flood.kernel", alone.Rate(), aloneCPU, alone.Refused)
	if aloneCPU == 0 && alone.Refused > 0 {
		// Below the resolution of /proc's CPU times (one 10 ms clock tick).
		b.res.add(nameImapgw, "flood.kernel.cpu_bound", 1e4/float64(alone.Refused))
	}
	b.floodErrors("SYN flood alone", alone)
	b.res.note("kernel drop: %d connection attempts sent, the imapgw table's rule dropped %d packets", alone.Refused, dropped)

	done := make(chan loadgen.FloodStats)
	go func() { done <- loadgen.SYNFlood(to, bannedSource, floodWorkers, rate, b.opt.dur) }()
	during := loadgen.Loop(8, b.opt.dur, t.LoginCycle)
	mixed := <-done
	b.recordLogins(g.name(), "flood.kernel.during", during, 0, 1)
	b.res.add(g.name(), "flood.kernel_during", mixed.Rate())
	b.floodErrors("SYN flood with legitimate load", mixed)
	return nil
}

// banDropped bans bannedSource with failed logins, as ban does, then checks
// that its next connect times out: the kernel dropped the SYN.
func (b *bench) banDropped(g peer) error {
	at := b.target(g, bannedSource)
	for i := range sourceFailures {
		s, err := at.Open()
		if err != nil {
			return fmt.Errorf("banning %v: connection %d: %w", bannedSource, i+1, err)
		}
		err = s.Login(attackerUser, "wrong-"+strconv.Itoa(i))
		s.Close()
		if err == nil {
			return errors.New("banning: a wrong password was accepted")
		}
	}
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
