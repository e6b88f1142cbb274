package main

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/admin"
	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
)

// wantSYNDropped fails unless a connect from from to addr times out: the
// kernel dropped the SYN. A refusal at accept would connect, then close.
func wantSYNDropped(t *testing.T, from, addr string) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 300 * time.Millisecond}
	c, err := d.Dial("tcp", addr)
	if err == nil {
		c.Close()
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("connect %s → %s = %v, want a timeout (SYN dropped by the kernel)", from, addr, err)
	}
}

// connects reports whether a connect from from to addr succeeds within d.
func connects(from, addr string, d time.Duration) bool {
	dl := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: d}
	c, err := dl.Dial("tcp", addr)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// TestFirewallBansThroughDovecot: a source that fails a login against a real
// Dovecot is banned, and the kernel drops its next SYN while other sources
// log in; the set holds its element with the ban's time as timeout; the
// admin API shows the ban in the kernel; a lift through the API lets the
// source connect within 100 ms.
func TestFirewallBansThroughDovecot(t *testing.T) {
	testbed.NeedNftables(t)
	d := testbed.StartDovecot(t, testbed.DovecotOptions{})
	cfg := adminTestConfig(t, d.Addr) // bans.allow: ::1 only
	cfg.Backend.ClientIP = conf.ClientIPID
	cfg.Bans.SourceFailures = 1
	cfg.Bans.Firewall = conf.FirewallNftables
	cfg.Bans.FirewallTable = testbed.NftTable(t)
	env := startAdminEnv(t, cfg, "")
	banned := netip.MustParsePrefix(attacker + "/32")

	if err := tryLoginFrom(attacker, env.imaps, "alice", "wrong password"); err == nil {
		t.Fatalf("a wrong password logged in")
	}
	eventually(t, "the ban in the kernel", func() bool { return env.g.fw.InKernel(banned) }, nil)
	wantSYNDropped(t, attacker, env.imaps)
	if err := tryLoginFrom("127.0.0.10", env.imaps, "alice", d.Users["alice"]); err != nil {
		t.Errorf("another source during the ban: %v, want logged in", err)
	}
	el, ok := testbed.NftElements(t, cfg.Bans.FirewallTable, "banned_v4")[attacker]
	if !ok || el.Timeout > cfg.Bans.Ban.Duration || el.Timeout < cfg.Bans.Ban.Duration-5*time.Second {
		t.Errorf("banned_v4[%s] = %+v (present %v), want a timeout close to bans.ban %s", attacker, el, ok, cfg.Bans.Ban)
	}

	code, body := env.call(t, "GET", "/api/v1/bans", true, "")
	var list []admin.BanView
	decode(t, body, &list)
	if code != 200 || len(list) != 1 || list[0].Prefix != banned || !list[0].InKernel {
		t.Errorf("GET /api/v1/bans = %d %s, want the ban with in_kernel true", code, body)
	}
	if v, ok := sample(env.scrape(t), "imapgw_firewall_elements"); !ok || v != 1 {
		t.Errorf("imapgw_firewall_elements = %v (%v), want 1", v, ok)
	}

	if code, body := env.call(t, "DELETE", "/api/v1/bans/"+attacker, true, ""); code != 200 {
		t.Fatalf("DELETE ban = %d %s", code, body)
	}
	lifted := time.Now()
	for !connects(attacker, env.imaps, 5*time.Millisecond) {
		if time.Since(lifted) > time.Second {
			t.Fatalf("the lifted source still cannot connect after 1 s")
		}
	}
	took := time.Since(lifted)
	t.Logf("admin lift to the source's first connect: %s", took)
	if took > 100*time.Millisecond {
		t.Errorf("the lifted source connected after %s, want within 100 ms", took)
	}
	if _, ok := testbed.NftElements(t, cfg.Bans.FirewallTable, "banned_v4")[attacker]; ok {
		t.Errorf("%s still in the set after the lift", attacker)
	}
}

// TestFirewallRestartRepairs: the table outlives the process (no cleanup), a
// hand-edited one (element deleted, chain removed) is rebuilt at the next
// start from bans.json with the new listener's port, and firewall_cleanup
// removes it on shutdown.
func TestFirewallRestartRepairs(t *testing.T) {
	testbed.NeedNftables(t)
	be := startDemoBackend(t)
	cfg := adminTestConfig(t, be.Addr)
	cfg.Bans.Firewall = conf.FirewallNftables
	table := testbed.NftTable(t)
	cfg.Bans.FirewallTable = table
	logs := &testbed.LogBuffer{}
	g, stop := startTestGateway(t, cfg, "", logs)
	b := g.lim.AddBan(netip.MustParseAddr(attacker), time.Hour, "test")
	eventually(t, "the ban in the kernel", func() bool { return g.fw.InKernel(b.Prefix) }, nil)
	stop()
	if _, ok := testbed.NftElements(t, table, "banned_v4")[attacker]; !ok {
		t.Fatalf("the element is gone after a shutdown without firewall_cleanup")
	}
	testbed.Nft(t, "delete", "element", "inet", table, "banned_v4", "{ "+attacker+" }")
	testbed.Nft(t, "flush", "chain", "inet", table, "input")
	testbed.Nft(t, "delete", "chain", "inet", table, "input")

	cfg.Bans.FirewallCleanup = true
	again, stopAgain := startTestGateway(t, cfg, "", logs)
	addr := again.srv.Addrs()[0].String()
	el, ok := testbed.NftElements(t, table, "banned_v4")[attacker]
	if !ok || el.Timeout > time.Hour || el.Timeout < time.Hour-time.Minute {
		t.Errorf("after the restart banned_v4[%s] = %+v (present %v), want the ban's remaining hour", attacker, el, ok)
	}
	_, port, _ := net.SplitHostPort(addr)
	if out := testbed.Nft(t, "list", "chain", "inet", table, "input"); !strings.Contains(out, "tcp dport "+port+" ip saddr @banned_v4") {
		t.Errorf("chain after the restart lacks the new port %s:\n%s", port, out)
	}
	wantSYNDropped(t, attacker, addr)
	if !connects("127.0.0.10", addr, time.Second) {
		t.Errorf("another source cannot connect after the restart")
	}
	stopAgain()
	if testbed.NftHasTable(table) {
		t.Errorf("table inet %s still there after a shutdown with firewall_cleanup", table)
	}
}

// TestCheckFirewallWarnings: `imapgw check` passes a config with the
// firewall and a PROXY-protocol listener but says, with the line, that the
// kernel rule cannot help there.
func TestCheckFirewallWarnings(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gw.toml")
	src := "[[listen]]\naddress = \":993\"\n[[listen]]\naddress = \":10993\"\nproxy_protocol = true\n" +
		"[tls]\ncertificate = \"self-signed\"\n[bans]\nfirewall = \"nftables\"\n"
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errs bytes.Buffer
	code := run([]string{"check", "-config", path}, &out, &errs)
	want := path + ":5: listen[2].proxy_protocol: warning:"
	if code != 0 || !strings.Contains(out.String(), path+": ok") || !strings.Contains(errs.String(), want) {
		t.Errorf("check = %d, stdout %q, stderr %q; want 0, ok, and %q", code, out.String(), errs.String(), want)
	}
	if hasNetAdmin() == strings.Contains(errs.String(), "CAP_NET_ADMIN") {
		t.Errorf("check as a process with CAP_NET_ADMIN = %v: stderr %q", hasNetAdmin(), errs.String())
	}
}

// TestFirewallReloadRefused: the table is made at start, so a reload that
// changes a bans.firewall setting is refused with the key's name.
func TestFirewallReloadRefused(t *testing.T) {
	base := conf.Default().Bans
	cases := []struct {
		mod  func(*conf.Bans)
		want string
	}{
		{func(b *conf.Bans) {}, ""},
		{func(b *conf.Bans) { b.Ban = conf.D(time.Hour) }, ""},
		{func(b *conf.Bans) { b.Firewall = conf.FirewallNftables }, "bans.firewall:"},
		{func(b *conf.Bans) { b.FirewallTable = "other" }, "bans.firewall_table:"},
		{func(b *conf.Bans) { b.FirewallCleanup = true }, "bans.firewall_cleanup:"},
	}
	for _, c := range cases {
		nw := base
		c.mod(&nw)
		err := firewallReload(base, nw)
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("firewallReload(%+v) = %v, want %q", nw, err, c.want)
		}
	}
}
