package conf

import (
	"os"
	"regexp"
)

// tableName is what imapgw accepts as bans.firewall_table: an nft identifier
// (nft's own grammar: a letter or '_', then letters, digits, '_'), short enough
// for the kernel's 256-byte names and for log lines.
var tableName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

func (v *validator) firewall(b *Bans) {
	v.oneOf("bans.firewall", b.Firewall, FirewallNone, FirewallNftables)
	if !tableName.MatchString(b.FirewallTable) {
		v.fail("bans.firewall_table", "%q is not an nftables table name (a letter or _, then letters, digits or _, at most 64)", b.FirewallTable)
	}
}

// Warnings are settings that load but do not do all an operator may expect;
// `imapgw check` prints them. Today: listeners behind a PROXY-protocol
// balancer with bans.firewall = "nftables", whose packets come from the
// balancer, so the kernel rule cannot drop a banned client there (the
// refusal at accept, on the PROXY address, still works).
func Warnings(c *Config) Errors {
	if c.Bans.Firewall != FirewallNftables {
		return nil
	}
	var lines lineIndex
	if data, err := os.ReadFile(c.Path); err == nil {
		lines = indexLines(data)
	}
	v := validator{file: c.Path, lines: lines}
	for i, l := range c.Listen {
		if l.ProxyProtocol {
			v.fail(listenKey(i, "proxy_protocol"), "warning: with bans.firewall = %q the kernel sees the balancer's address on %s, not the client's: banned clients there are refused at accept only", FirewallNftables, l.Address)
		}
	}
	return v.errs
}
