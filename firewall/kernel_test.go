package firewall

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imapgw/imapgw/internal/testbed"
	"github.com/imapgw/imapgw/limiter"
)

// listen accepts and closes TCP connections on addr (port 0) until the test ends.
func listen(t *testing.T, addr string) (string, uint16) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln.Addr().String(), uint16(ln.Addr().(*net.TCPAddr).Port)
}

// dialFrom connects from local address from to addr within d.
func dialFrom(from, addr string, d time.Duration) error {
	dl := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: d}
	c, err := dl.Dial("tcp", addr)
	if err == nil {
		c.Close()
	}
	return err
}

// wantDropped fails unless a connect from from to addr times out: the kernel
// dropped the SYN (a refusal in user space would be a reset or a close).
func wantDropped(t *testing.T, from, addr string) {
	t.Helper()
	err := dialFrom(from, addr, 300*time.Millisecond)
	var ne net.Error
	if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("connect %s → %s = %v, want a timeout (SYN dropped)", from, addr, err)
	}
}

// startFirewall starts a Firewall on table for ports with bans and runs it
// until the test ends.
func startFirewall(t *testing.T, o Options, bans []limiter.Ban) *Firewall {
	t.Helper()
	f, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Start(bans); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

// waitFor polls cond every millisecond for up to d and returns how long it took.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(start)
}

func near(got, want, slack time.Duration) bool { return got <= want && got >= want-slack }

// TestKernelBanDropLift: a banned IPv4 address and IPv6 /64 (holding ::1) are
// dropped by the kernel on the protected port only, other sources connect; a
// new ladder step updates the element's timeout; a lift lets the source in
// within 100 ms.
func TestKernelBanDropLift(t *testing.T) {
	testbed.NeedNftables(t)
	table := testbed.NftTable(t)
	addr4, port4 := listen(t, "127.0.0.1:0")
	addr6, port6 := listen(t, "[::1]:0")
	other, _ := listen(t, "127.0.0.1:0") // not protected
	reg := prometheus.NewRegistry()
	f := startFirewall(t, Options{Table: table, Ports: []uint16{port4, port6}, Registerer: reg}, nil)

	banned, v6 := netip.MustParsePrefix("127.0.0.77/32"), netip.MustParsePrefix("::/64")
	now := time.Now()
	f.BanSet(banned, now.Add(10*time.Minute))
	f.BanSet(v6, now.Add(time.Hour))
	waitFor(t, 2*time.Second, "bans in the kernel", func() bool { return f.InKernel(banned) && f.InKernel(v6) })

	wantDropped(t, "127.0.0.77", addr4)
	wantDropped(t, "::1", addr6)
	if err := dialFrom("127.0.0.78", addr4, time.Second); err != nil {
		t.Errorf("another source: %v, want connected", err)
	}
	if err := dialFrom("127.0.0.77", other, time.Second); err != nil {
		t.Errorf("the banned source to a port the gateway does not listen on: %v, want connected", err)
	}
	e4 := testbed.NftElements(t, table, setV4)
	if e, ok := e4["127.0.0.77"]; !ok || !near(e.Timeout, 10*time.Minute, 2*time.Second) {
		t.Errorf("banned_v4 = %v, want 127.0.0.77 with a timeout of about 10m", e4)
	}
	if e, ok := testbed.NftElements(t, table, setV6)["::/64"]; !ok || !near(e.Timeout, time.Hour, 2*time.Second) {
		t.Errorf("banned_v6 = %v, want ::/64 with a timeout of about 1h", testbed.NftElements(t, table, setV6))
	}
	if got := metric(t, reg, "imapgw_firewall_elements"); got != 2 {
		t.Errorf("imapgw_firewall_elements = %v, want 2", got)
	}

	// The next step of the ladder: the same prefix, a longer ban.
	f.BanSet(banned, now.Add(40*time.Minute))
	waitFor(t, 2*time.Second, "the new timeout", func() bool {
		e, ok := testbed.NftElements(t, table, setV4)["127.0.0.77"]
		return ok && near(e.Timeout, 40*time.Minute, 2*time.Second)
	})
	wantDropped(t, "127.0.0.77", addr4)

	f.BanLifted(banned)
	took := waitFor(t, time.Second, "the lifted source connects", func() bool {
		return dialFrom("127.0.0.77", addr4, 5*time.Millisecond) == nil
	})
	t.Logf("lift to first successful connect: %s", took)
	if took > 100*time.Millisecond {
		t.Errorf("the lifted source connected after %s, want within 100 ms", took)
	}
	if _, ok := testbed.NftElements(t, table, setV4)["127.0.0.77"]; ok {
		t.Errorf("127.0.0.77 still in banned_v4 after the lift")
	}
	wantDropped(t, "::1", addr6)
}

// metric is the value of the unlabelled gauge or counter name in reg.
func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		m := f.GetMetric()[0]
		if m.Gauge != nil {
			return m.Gauge.GetValue()
		}
		return m.Counter.GetValue()
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestKernelRepairAtStart: the table left by a previous run, edited by hand
// (an element deleted, a stranger's element added, the chain removed), is
// made whole at start: the bans given, the chain, nothing else.
func TestKernelRepairAtStart(t *testing.T) {
	testbed.NeedNftables(t)
	table := testbed.NftTable(t)
	addr, port := listen(t, "127.0.0.1:0")
	until := time.Now().Add(time.Hour)
	bans := []limiter.Ban{
		{Prefix: netip.MustParsePrefix("127.0.0.81/32"), Until: until},
		{Prefix: netip.MustParsePrefix("127.0.0.82/32"), Until: until},
		{Prefix: netip.MustParsePrefix("2001:db8:5:6::/64"), Until: until},
	}
	first, err := New(Options{Table: table, Ports: []uint16{port}})
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Start(bans); err != nil {
		t.Fatal(err)
	}
	testbed.Nft(t, "delete", "element", "inet", table, setV4, "{ 127.0.0.81 }")
	testbed.Nft(t, "add", "element", "inet", table, setV4, "{ 127.0.0.99 timeout 1h }")
	testbed.Nft(t, "flush", "chain", "inet", table, chainName)
	testbed.Nft(t, "delete", "chain", "inet", table, chainName)
	if err := dialFrom("127.0.0.82", addr, time.Second); err != nil {
		t.Fatalf("with the chain removed by hand the banned source should connect: %v", err)
	}

	startFirewall(t, Options{Table: table, Ports: []uint16{port}}, bans)
	e4 := testbed.NftElements(t, table, setV4)
	if _, ok := e4["127.0.0.81"]; !ok || len(e4) != 2 {
		t.Errorf("banned_v4 after the repair = %v, want 127.0.0.81 and 127.0.0.82 only", e4)
	}
	if _, ok := testbed.NftElements(t, table, setV6)["2001:db8:5:6::/64"]; !ok {
		t.Errorf("banned_v6 after the repair lacks 2001:db8:5:6::/64")
	}
	if out := testbed.Nft(t, "list", "chain", "inet", table, chainName); !strings.Contains(out, fmt.Sprintf("tcp dport %d ip saddr @%s", port, setV4)) {
		t.Errorf("chain after the repair:\n%s", out)
	}
	wantDropped(t, "127.0.0.81", addr)
	wantDropped(t, "127.0.0.82", addr)
}

// TestKernelBatchFailureRebuilds: a change the kernel refuses (the element
// to delete was removed by hand) is counted and followed by a rebuild, after
// which the table holds exactly the bans.
func TestKernelBatchFailureRebuilds(t *testing.T) {
	testbed.NeedNftables(t)
	table := testbed.NftTable(t)
	_, port := listen(t, "127.0.0.1:0")
	until := time.Now().Add(time.Hour)
	a, b := netip.MustParsePrefix("127.0.0.91/32"), netip.MustParsePrefix("127.0.0.92/32")
	reg := prometheus.NewRegistry()
	f, err := New(Options{Table: table, Ports: []uint16{port}, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Start([]limiter.Ban{{Prefix: a, Until: until}, {Prefix: b, Until: until}}); err != nil {
		t.Fatal(err)
	}
	testbed.Nft(t, "delete", "element", "inet", table, setV4, "{ 127.0.0.91 }")
	f.BanLifted(a)
	c := netip.MustParsePrefix("127.0.0.93/32")
	f.BanSet(c, until)
	if err := f.apply(); err == nil {
		t.Fatalf("apply after a hand-deleted element = nil, want the kernel's refusal")
	}
	if got := metric(t, reg, "imapgw_firewall_errors_total"); got != 1 {
		t.Errorf("imapgw_firewall_errors_total = %v, want 1", got)
	}
	if err := f.apply(); err != nil {
		t.Fatalf("the rebuild after the error: %v", err)
	}
	e4 := testbed.NftElements(t, table, setV4)
	if _, ok := e4["127.0.0.92"]; !ok || len(e4) != 2 {
		t.Errorf("banned_v4 after the rebuild = %v, want 127.0.0.92 and 127.0.0.93", e4)
	}
	if !f.InKernel(c) || f.InKernel(a) {
		t.Errorf("InKernel after the rebuild: %s %v, %s %v", c, f.InKernel(c), a, f.InKernel(a))
	}
}

// TestKernelCleanup: on shutdown the table stays (its timeouts keep it
// honest) unless bans.firewall_cleanup.
func TestKernelCleanup(t *testing.T) {
	testbed.NeedNftables(t)
	for _, cleanup := range []bool{false, true} {
		table := testbed.NftTable(t)
		f, err := New(Options{Table: table, Ports: []uint16{993}, Cleanup: cleanup})
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Start([]limiter.Ban{{Prefix: netip.MustParsePrefix("192.0.2.1/32"), Until: time.Now().Add(time.Hour)}}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		f.Run(ctx)
		if got := testbed.NftHasTable(table); got == cleanup {
			t.Errorf("firewall_cleanup = %v: table there after shutdown = %v", cleanup, got)
		}
	}
}

// TestKernel10000Bans installs 10,000 bans (9,000 IPv4 addresses, 1,000 IPv6
// /64s) in one batch at start, then 10,000 changes through the listener
// path, and reports the times.
func TestKernel10000Bans(t *testing.T) {
	testbed.NeedNftables(t)
	table := testbed.NftTable(t)
	until := time.Now().Add(time.Hour)
	var bans []limiter.Ban
	for i := range 9000 {
		bans = append(bans, limiter.Ban{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 20, byte(i >> 8), byte(i)}), 32)})
	}
	for i := range 1000 {
		bans = append(bans, limiter.Ban{Prefix: netip.MustParsePrefix(fmt.Sprintf("2001:db8:%x::/64", i))})
	}
	for i := range bans {
		bans[i].Until = until
	}
	f, err := New(Options{Table: table, Ports: []uint16{993}})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := f.Start(bans); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if n4, n6 := len(testbed.NftElements(t, table, setV4)), len(testbed.NftElements(t, table, setV6)); n4 != 9000 || n6 != 1000 {
		t.Fatalf("after Start: %d IPv4 and %d IPv6 elements, want 9000 and 1000", n4, n6)
	}
	t.Logf("10,000 bans installed at start in one batch: %s", took)

	for i := range 10000 {
		f.BanSet(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 30, byte(i >> 8), byte(i)}), 32), until)
	}
	start = time.Now()
	if err := f.apply(); err != nil {
		t.Fatal(err)
	}
	took = time.Since(start)
	if n := len(testbed.NftElements(t, table, setV4)); n != 19000 {
		t.Fatalf("after 10,000 more: %d IPv4 elements, want 19000", n)
	}
	t.Logf("10,000 more bans added in one incremental batch: %s", took)
	if took > 5*time.Second {
		t.Errorf("10,000 bans took %s, want well under 5 s", took)
	}
}

// TestKernelNoCapability runs Start in a child whose bounding set lacks
// CAP_NET_ADMIN (setpriv, as root): the error names the capability and the
// setting, and no table is left behind.
func TestKernelNoCapability(t *testing.T) {
	if table := os.Getenv("IMAPGW_FIREWALL_CHILD"); table != "" {
		f, err := New(Options{Table: table, Ports: []uint16{993}})
		if err == nil {
			err = f.Start([]limiter.Ban{{Prefix: netip.MustParsePrefix("192.0.2.1/32"), Until: time.Now().Add(time.Hour)}})
		}
		fmt.Printf("start error: %v\n", err)
		if !errors.Is(err, ErrPermission) {
			os.Exit(3)
		}
		os.Exit(0)
	}
	testbed.NeedNftables(t)
	testbed.Need(t, "setpriv")
	table := testbed.NftTable(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(testbed.Path("setpriv"), "--bounding-set=-net_admin", "--inh-caps=-net_admin", "--",
		exe, "-test.run=^TestKernelNoCapability$", "-test.count=1")
	cmd.Env = append(os.Environ(), "IMAPGW_FIREWALL_CHILD="+table)
	out, err := cmd.CombinedOutput()
	t.Logf("child: %s", out)
	if err != nil {
		t.Fatalf("child without CAP_NET_ADMIN: %v, want a start error wrapping ErrPermission", err)
	}
	if !strings.Contains(string(out), "CAP_NET_ADMIN") || !strings.Contains(string(out), "bans.firewall") {
		t.Errorf("the error does not name CAP_NET_ADMIN and bans.firewall: %s", out)
	}
	if testbed.NftHasTable(table) {
		t.Errorf("table inet %s exists after the refused start: half-made", table)
	}
}
