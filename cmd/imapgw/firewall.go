package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/firewall"
)

// startFirewall mirrors the bans into the kernel when bans.firewall =
// "nftables" (issue 15): the firewall hears every change from the limiter
// from now on and starts from the bans in force. Called once the listeners
// are bound, since the chain names their ports. It returns nil, nil for "none".
func (g *gateway) startFirewall() (*firewall.Firewall, error) {
	b := g.cfg.Bans
	if b.Firewall != conf.FirewallNftables {
		return nil, nil
	}
	fw, err := firewall.New(firewall.Options{
		Table:      b.FirewallTable,
		Ports:      listenPorts(g.srv.Addrs()),
		Cleanup:    b.FirewallCleanup,
		Logger:     g.log.With("part", "firewall"),
		Registerer: g.reg,
	})
	if err != nil {
		return nil, err
	}
	if err := fw.Start(g.lim.SetBanListener(fw)); err != nil {
		g.lim.SetBanListener(nil)
		return nil, err
	}
	// Its own context: the elements must follow lifts made while sessions
	// drain, so it stops after the proxy, with the other background loops.
	g.bg.Add(1)
	go func() { defer g.bg.Done(); fw.Run(g.ctx) }()
	return fw, nil
}

// listenPorts are the TCP ports of the bound listeners.
func listenPorts(addrs []net.Addr) []uint16 {
	var out []uint16
	for _, a := range addrs {
		if t, ok := a.(*net.TCPAddr); ok {
			out = append(out, uint16(t.Port))
		}
	}
	return out
}

// firewallInKernel is admin's view of the firewall: nil when there is none.
func (g *gateway) firewallInKernel() func(netip.Prefix) bool {
	if g.fw == nil {
		return nil
	}
	return g.fw.InKernel
}

// checkWarnings are what `imapgw check` says about settings that load but may
// not do what the operator expects: conf.Warnings, and bans.firewall =
// "nftables" checked by a process without CAP_NET_ADMIN (the daemon may run
// with more rights than the checker, so it is a warning, not an error).
func checkWarnings(cfg *conf.Config) []string {
	var out []string
	for _, w := range conf.Warnings(cfg) {
		out = append(out, w.Error())
	}
	if cfg.Bans.Firewall == conf.FirewallNftables && !hasNetAdmin() {
		out = append(out, fmt.Sprintf("%s: bans.firewall: warning: %q needs CAP_NET_ADMIN, which this process lacks: `imapgw run` fails unless it has it",
			cfg.Path, conf.FirewallNftables))
	}
	return out
}

// hasNetAdmin reads the effective capabilities from /proc/self/status.
func hasNetAdmin() bool {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return true // cannot tell: say nothing
	}
	for line := range strings.Lines(string(data)) {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			return err != nil || caps&(1<<unix.CAP_NET_ADMIN) != 0
		}
	}
	return true
}

// firewallReload refuses a reload that changes the bans.firewall settings:
// the table is made at start, so those take a restart.
func firewallReload(old, nw conf.Bans) error {
	switch {
	case old.Firewall != nw.Firewall:
		return fmt.Errorf("bans.firewall: changed from %q to %q: takes a restart", old.Firewall, nw.Firewall)
	case old.FirewallTable != nw.FirewallTable:
		return fmt.Errorf("bans.firewall_table: changed from %q to %q: takes a restart", old.FirewallTable, nw.FirewallTable)
	case old.FirewallCleanup != nw.FirewallCleanup:
		return fmt.Errorf("bans.firewall_cleanup: changed: takes a restart")
	}
	return nil
}
