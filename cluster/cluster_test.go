package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
	"github.com/imapgw/imapgw/limiter"
)

const password = "pw-Zq8vY2"

// node is one gateway's policy and cluster link, on a real Redis.
type node struct {
	lim  *limiter.Limiter
	c    *Cluster
	logs *testbed.LogBuffer
}

func testBans() conf.Bans {
	b := conf.Default().Bans
	b.Allow = nil
	b.FailureDelay = conf.D(0)
	b.SourceFailures = 6
	b.SprayAccounts = 100
	b.AccountFailures = 8
	return b
}

func startNode(t *testing.T, url, name string) *node {
	t.Helper()
	return startNodeBans(t, url, name, testBans())
}

func startNodeBans(t *testing.T, url, name string, bans conf.Bans) *node {
	t.Helper()
	cc := conf.Default().Cluster
	cc.Redis, cc.Node = url, name
	logs := &testbed.LogBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	lim, err := limiter.New(bans, conf.Default().Limits, limiter.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(cc, Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	c.Attach(lim)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	testbed.WaitFor(t, 5*time.Second, name+" up", c.Up)
	return &node{lim: lim, c: c, logs: logs}
}

func banned(l *limiter.Limiter, ip string) bool {
	at, err := l.Try(netip.MustParseAddr(ip), "probe")
	at.Done()
	var r *limiter.Refusal
	if e, ok := err.(*limiter.Refusal); ok {
		r = e
	}
	return r != nil && r.Banned
}

// TestBanPropagation: a manual ban on A is enforced on B within 1 s, with the
// node that made it; a lift on B admits on A again.
func TestBanPropagation(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{Password: password})
	a, b := startNode(t, r.URL(), "a"), startNode(t, r.URL(), "b")
	a.lim.AddBan(netip.MustParseAddr("192.0.2.7"), time.Hour, "test")
	d := testbed.WaitFor(t, time.Second, "ban on b", func() bool { return banned(b.lim, "192.0.2.7") })
	t.Logf("ban propagation: %s", d)
	bs := b.lim.Bans()
	if len(bs) != 1 || bs[0].Node != "a" || bs[0].Reason != "test" {
		t.Errorf("b's bans = %+v, want one made by a", bs)
	}
	if !banned(a.lim, "192.0.2.7") {
		t.Fatal("a does not enforce its own ban")
	}
	if !b.lim.LiftBan(netip.MustParseAddr("192.0.2.7")) {
		t.Fatal("lift on b found no ban")
	}
	d = testbed.WaitFor(t, time.Second, "lift on a", func() bool { return !banned(a.lim, "192.0.2.7") })
	t.Logf("lift propagation: %s", d)
}

// TestSharedFailures: failures spread over two nodes ban at source_failures in
// total, and the ban reaches the other node.
func TestSharedFailures(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{})
	a, b := startNode(t, r.URL(), "a"), startNode(t, r.URL(), "b")
	src := netip.MustParseAddr("198.51.100.9")
	nodes := []*node{a, b}
	for i := range testBans().SourceFailures {
		n := nodes[i%2]
		at, err := n.lim.Try(src, "victim")
		if err != nil {
			t.Fatalf("try %d refused before source_failures: %v", i+1, err)
		}
		v := at.Failed([]byte{byte(i)})
		if last := i == testBans().SourceFailures-1; v.Banned != last {
			t.Fatalf("failure %d: banned %v, want %v", i+1, v.Banned, last)
		}
	}
	testbed.WaitFor(t, time.Second, "ban on both", func() bool { return banned(a.lim, src.String()) && banned(b.lim, src.String()) })
}

// TestSharedProtection: failures on one account from many sources through two
// nodes protect it on both; its owner's network, known-good through a, still
// logs in through b.
func TestSharedProtection(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{})
	a, b := startNode(t, r.URL(), "a"), startNode(t, r.URL(), "b")
	owner := netip.MustParseAddr("203.0.113.5")
	at, err := a.lim.Try(owner, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if err := at.Succeeded(); err != nil {
		t.Fatal(err)
	}
	nodes := []*node{a, b}
	for i := range testBans().AccountFailures {
		src := netip.AddrFrom4([4]byte{10, 1, byte(i), 1})
		at, err := nodes[i%2].lim.Try(src, "alice")
		if err != nil {
			t.Fatalf("attack try %d: %v", i+1, err)
		}
		at.Failed([]byte("guess"))
	}
	for _, n := range nodes {
		stranger := netip.MustParseAddr("10.9.9.9")
		testbed.WaitFor(t, time.Second, "protection", func() bool {
			at, err := n.lim.Try(stranger, "alice")
			at.Done()
			return err != nil
		})
	}
	at, err = b.lim.Try(owner.Next(), "alice") // same /24: known-good through a
	if err != nil {
		t.Fatalf("owner through b refused: %v", err)
	}
	at.Done()
	a.lim.AddBan(netip.MustParseAddr("192.0.2.1"), time.Hour, "")
	a.lim.LiftBan(netip.MustParseAddr("192.0.2.1"))
	a.lim.AddBan(netip.MustParseAddr("192.0.2.2"), time.Hour, "")
	testbed.WaitFor(t, time.Second, "ban on b", func() bool { return banned(b.lim, "192.0.2.2") })
	checkTTLs(t, a.c)
}

// checkTTLs: every key carries the prefix and expires on its own.
func checkTTLs(t *testing.T, c *Cluster) {
	t.Helper()
	ctx := context.Background()
	keys, err := c.Client().Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, k := range keys {
		if !strings.HasPrefix(k, c.Prefix()) {
			t.Errorf("key %q lacks the prefix %q", k, c.Prefix())
		}
		kind, _, _ := strings.Cut(strings.TrimPrefix(k, c.Prefix()), ":")
		kinds[kind] = true
		if ttl, err := c.Client().PTTL(ctx, k).Result(); err != nil || ttl <= 0 {
			t.Errorf("key %q: TTL %v, %v; want one", k, ttl, err)
		}
	}
	for _, kind := range []string{"src", "acct", "prot", "good", "ban", "lifted", "bans", "node", "nodes"} {
		if !kinds[kind] {
			t.Errorf("no %s key among %v", kind, keys)
		}
	}
}

// TestOutage: with Redis stopped, failures are answered within timeout and
// counted locally, a ban made meanwhile reaches the other node when Redis
// returns; the password is never in a log line or the status.
func TestOutage(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{Password: password, AppendOnly: true})
	a, b := startNode(t, r.URL(), "a"), startNode(t, r.URL(), "b")
	r.Pause()
	src := netip.MustParseAddr("198.51.100.77")
	var slowest time.Duration
	for i := range testBans().SourceFailures {
		start := time.Now()
		at, err := a.lim.Try(src, "u")
		if err != nil {
			t.Fatalf("try %d: %v", i+1, err)
		}
		at.Failed([]byte{byte(i)})
		slowest = max(slowest, time.Since(start))
	}
	if lim := a.c.Timeout() + 50*time.Millisecond; slowest > lim {
		t.Errorf("slowest failure with Redis stopped: %s, want ≤ %s", slowest, lim)
	}
	t.Logf("slowest failed login with Redis stopped: %s", slowest)
	if !banned(a.lim, src.String()) {
		t.Fatal("local count did not ban while Redis was away")
	}
	testbed.WaitFor(t, 5*time.Second, "a down", func() bool { return !a.c.Up() })
	r.Resume()
	testbed.WaitFor(t, 10*time.Second, "a up", a.c.Up)
	testbed.WaitFor(t, 5*time.Second, "pushed ban on b", func() bool { return banned(b.lim, src.String()) })
	r.Kill()
	testbed.WaitFor(t, 5*time.Second, "a down after kill", func() bool { return !a.c.Up() })
	r.Start()
	testbed.WaitFor(t, 10*time.Second, "a up after restart", a.c.Up)
	if n := strings.Count(a.logs.String(), "redis unreachable"); n != 2 {
		t.Errorf("a logged %d outage warnings for 2 outages:\n%s", n, a.logs)
	}
	st := a.c.Status()
	data, _ := json.Marshal(st)
	for _, s := range []string{a.logs.String(), b.logs.String(), string(data)} {
		if strings.Contains(s, password) {
			t.Errorf("the password appears in %q", s)
		}
	}
	if !strings.Contains(st.Redis, ":xxxxx@") || len(st.Nodes) != 2 {
		t.Errorf("status = %s, want the address redacted and 2 nodes", data)
	}
}

// TestSharedLadder: the ladder's strikes travel with the bans: a source banned
// once through a is banned for the second step when b bans it next.
func TestSharedLadder(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{})
	bans := testBans()
	bans.Ban = conf.D(300 * time.Millisecond)
	a, b := startNodeBans(t, r.URL(), "a", bans), startNodeBans(t, r.URL(), "b", bans)
	src := netip.MustParseAddr("198.51.100.33")
	fail := func(n *node, round int) limiter.Verdict {
		var v limiter.Verdict
		for i := range bans.SourceFailures {
			at, err := n.lim.Try(src, fmt.Sprintf("u%d-%d", round, i))
			if err != nil {
				t.Fatalf("round %d try %d: %v", round, i+1, err)
			}
			v = at.Failed([]byte{byte(round), byte(i)})
		}
		return v
	}
	if v := fail(a, 1); !v.Banned {
		t.Fatal("a did not ban")
	}
	testbed.WaitFor(t, time.Second, "ban on b", func() bool { return banned(b.lim, src.String()) })
	testbed.WaitFor(t, 2*time.Second, "first ban to end on b", func() bool { return !banned(b.lim, src.String()) })
	v := fail(b, 2)
	if got := v.Until.Sub(time.Now()); !v.Banned || got < 900*time.Millisecond {
		t.Errorf("second ban through b: banned %v for %s, want the ladder's second step (1.2s)", v.Banned, got)
	}
	if bs := b.lim.Bans(); len(bs) != 1 || bs[0].Strikes != 2 {
		t.Errorf("b's bans = %+v, want strike 2", bs)
	}
}

// TestWrongPassword: a node with the wrong password stays down, and neither
// its status nor its log shows the password it tried.
func TestWrongPassword(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{Password: password})
	const wrong = "not-the-pw-4411"
	cc := conf.Default().Cluster
	cc.Redis, cc.Node = "redis://:"+wrong+"@"+r.Addr+"/0", "w"
	logs := &testbed.LogBuffer{}
	c, err := New(cc, Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testbed.WaitFor(t, 5*time.Second, "an error", func() bool { return c.Status().LastError != "" })
	st := c.Status()
	data, _ := json.Marshal(st)
	if st.Up || !strings.Contains(st.LastError, "WRONGPASS") || strings.Contains(string(data), wrong) || strings.Contains(logs.String(), wrong) {
		t.Errorf("status %s, log %q: want down with WRONGPASS and no password", data, logs)
	}
}
