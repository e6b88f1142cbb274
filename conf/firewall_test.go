package conf

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFirewallSettings(t *testing.T) {
	c, err := Parse("t.toml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if b := c.Bans; b.Firewall != FirewallNone || b.FirewallTable != "imapgw" || b.FirewallCleanup {
		t.Errorf("defaults: firewall %q table %q cleanup %v, want none, imapgw, false", b.Firewall, b.FirewallTable, b.FirewallCleanup)
	}
	c, err = Parse("t.toml", []byte(minimal+"\n[bans]\nfirewall = \"nftables\"\nfirewall_table = \"gw_1\"\nfirewall_cleanup = true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if b := c.Bans; b.Firewall != FirewallNftables || b.FirewallTable != "gw_1" || !b.FirewallCleanup {
		t.Errorf("set: %+v", b)
	}
	bad := minimal + "\n[bans]\nfirewall = \"iptables\"\nfirewall_table = \"my table\"\n"
	_, err = Parse("t.toml", []byte(bad))
	for _, want := range []string{`t.toml:12: bans.firewall: "iptables" is not one of none, nftables`, `t.toml:13: bans.firewall_table: "my table" is not an nftables table name`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(bad firewall) = %v, want %q", err, want)
		}
	}
}

// TestWarningsProxyProtocol: with the firewall on, a PROXY-protocol listener
// is named with its line, since the kernel sees the balancer's address there.
func TestWarningsProxyProtocol(t *testing.T) {
	src := minimal + `
[[listen]]
address = ":10993"
proxy_protocol = true
`
	path := filepath.Join(t.TempDir(), "gw.toml")
	for _, fw := range []string{"none", "nftables"} {
		if err := os.WriteFile(path, []byte(src+"\n[bans]\nfirewall = \""+fw+"\"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		ws := Warnings(c)
		if fw == "none" {
			if len(ws) != 0 {
				t.Errorf("firewall none: warnings %v, want none", ws)
			}
			continue
		}
		if len(ws) != 1 || !strings.Contains(ws[0].Error(), path+":13: listen[2].proxy_protocol: warning:") ||
			!strings.Contains(ws[0].Error(), "balancer's address") {
			t.Errorf("firewall nftables: warnings %v, want one for listen[2].proxy_protocol at line 13", ws)
		}
	}
}
