package pinstore_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/imapgw/imapgw/backend"
	"github.com/imapgw/imapgw/cluster/pinstore"
	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
)

// gateway is one node's backend pool in these tests.
type gateway struct {
	name string
	pool *backend.Pool
	logs *testbed.LogBuffer
}

// backendConf names the Dovecots imap1, imap2, … with health checks fast
// enough for a test.
func backendConf(dovecots []*testbed.Dovecot) conf.Backend {
	b := conf.Default().Backend
	b.Servers = nil
	for i, d := range dovecots {
		b.Server = append(b.Server, conf.BackendServer{Name: fmt.Sprintf("imap%d", i+1), Address: d.Addr, Weight: 100})
	}
	// Four pools check both servers: once a second, since checks every
	// 100-300ms kept a restarting Dovecot's login processes so busy on a
	// loaded 2-core machine that its start-up probe timed out; and a
	// generous timeout so that a slow greeting does not mark a server down.
	b.CheckInterval, b.CheckTimeout = conf.D(time.Second), conf.D(3*time.Second)
	b.Fall, b.Rise = 2, 1
	return b
}

// startGateway runs a pool for node name, sharing pins through rc when rc
// is not nil, until the test ends.
func startGateway(t *testing.T, name string, b conf.Backend, rc redis.UniversalClient, timeout time.Duration) *gateway {
	t.Helper()
	g := &gateway{name: name, logs: &testbed.LogBuffer{}}
	o := backend.Options{Logger: slog.New(slog.NewTextHandler(g.logs, nil)), AffinityTimeout: timeout,
		AffinityRefresh: 200 * time.Millisecond}
	if rc != nil {
		o.Affinity = pinstore.New(rc, "gw:", name, pinstore.Options{Lease: time.Second})
	}
	p, err := backend.New(b, o)
	if err != nil {
		t.Fatal(err)
	}
	g.pool = p
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		p.Run(ctx)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("%s log:\n%s", name, g.logs)
		}
	})
	return g
}

func newClient(t testing.TB, addr string, ctxTimeouts bool) redis.UniversalClient {
	t.Helper()
	rc := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{addr}, ContextTimeoutEnabled: ctxTimeouts})
	t.Cleanup(func() { rc.Close() })
	return rc
}

// session is a logged-in backend connection the pool knows about.
type session struct {
	conn   *backend.Conn
	server string
	end    func()
}

func (s *session) close() {
	s.conn.Close()
	s.end()
}

// login does what the proxy does for user: route, dial in order (a failed
// dial counts against the server and moves on), log in, report the
// session. The password is the testbed's.
func login(t *testing.T, g *gateway, user string) *session {
	t.Helper()
	order, _ := g.pool.Route(user)
	for _, s := range order {
		c, err := s.Dial(context.Background(), netip.MustParseAddrPort("192.0.2.1:40000"))
		if err != nil {
			g.pool.DialFailed(s, err)
			continue
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "a1 LOGIN %s %q\r\n", user, testbed.DefaultUsers()[user])
		for {
			line, err := c.R.ReadString('\n')
			if err != nil {
				t.Fatalf("%s: login of %s on %s: %v", g.name, user, s.Name, err)
			}
			if strings.HasPrefix(line, "a1 ") {
				if !strings.HasPrefix(line, "a1 OK") {
					t.Fatalf("%s: login of %s on %s: %s", g.name, user, s.Name, line)
				}
				break
			}
		}
		sess := &session{conn: c, server: s.Name}
		sess.end = g.pool.SessionStarted(user, s, func(string) { c.Close() })
		t.Cleanup(sess.close)
		return sess
	}
	t.Fatalf("%s: no server for %s (order %v)", g.name, user, order)
	return nil
}

func state(g *gateway, server string) string {
	for _, s := range g.pool.Servers() {
		if s.Name == server {
			return s.State
		}
	}
	return ""
}

func waitState(t *testing.T, gws []*gateway, server, want string) {
	t.Helper()
	testbed.WaitFor(t, 10*time.Second, server+" "+want+" at every node", func() bool {
		for _, g := range gws {
			if state(g, server) != want {
				return false
			}
		}
		return true
	})
}

// TestPoolsShareUserPinning: three gateways' pools share one Redis in front
// of two Dovecots. A user's sessions through all three land on one server.
// That server dies: the user's next login fails over to the other, and
// when the first returns (where hashing alone would send the user back) the
// user's further sessions through every node still join the open ones on
// the second: never split.
func TestPoolsShareUserPinning(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{})
	dovecots := testbed.StartDovecotCluster(t, 2, testbed.DovecotOptions{})
	b := backendConf(dovecots)
	byName := map[string]*testbed.Dovecot{"imap1": dovecots[0], "imap2": dovecots[1]}
	var gws []*gateway
	for i := range 3 {
		gws = append(gws, startGateway(t, fmt.Sprintf("node%d", i+1), b, newClient(t, r.Addr, true), 100*time.Millisecond))
	}
	// A gateway on its own, to show where hashing alone sends the user.
	lonely := startGateway(t, "lonely", b, nil, 0)
	reader := pinstore.New(newClient(t, r.Addr, true), "gw:", "reader", pinstore.Options{})
	pinned := func() backend.Pin {
		pin, err := reader.Pick(context.Background(), "alice", "", 0)
		if err != nil {
			t.Fatalf("reading the pin: %v", err)
		}
		return pin
	}
	const user = "alice"

	// Concurrent logins through the three nodes: one server.
	var first []*session
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, g := range gws {
		wg.Go(func() {
			s := login(t, g, user)
			mu.Lock()
			first = append(first, s)
			mu.Unlock()
		})
	}
	wg.Wait()
	home := first[0].server
	for _, s := range first {
		if s.server != home {
			t.Fatalf("concurrent sessions split: %s and %s", home, s.server)
		}
	}
	other := map[string]string{"imap1": "imap2", "imap2": "imap1"}[home]
	testbed.WaitFor(t, 5*time.Second, "three sessions counted in Redis", func() bool {
		p := pinned()
		return p.Server == home && p.Sessions == 3
	})

	// home dies: its sessions end, every node sees it down.
	byName[home].Kill()
	for _, s := range first {
		s.close()
	}
	waitState(t, gws, home, "down")
	failover := login(t, gws[1], user)
	if failover.server != other {
		t.Fatalf("with %s down the login went to %s", home, failover.server)
	}
	testbed.WaitFor(t, 5*time.Second, "the pin to follow the failover", func() bool {
		p := pinned()
		return p.Server == other && p.Sessions == 1
	})

	// home returns. Hashing alone would send the user back there, beside
	// the open session on other: the shared pin keeps it on other.
	byName[home].Start()
	waitState(t, append(gws, lonely), home, "up")
	if order, reason := lonely.pool.Route(user); order[0].Name != home {
		t.Fatalf("test premise: a lone node sends %s to %s (%s), want %s", user, order[0].Name, reason, home)
	}
	for _, g := range []*gateway{gws[2], gws[0]} {
		if s := login(t, g, user); s.server != other {
			t.Errorf("%s sent %s to %s beside its open session on %s: split", g.name, user, s.server, other)
		}
	}
	if order, reason := gws[0].pool.Route(user); order[0].Name != other || reason != "affinity" {
		t.Errorf("node1 Route = %s (%s), want %s (affinity)", order[0].Name, reason, other)
	}
	byName[other].WaitLogins(t, user, 3, 5*time.Second)
	if n := byName[home].LoginCount(user); n != 3 {
		t.Errorf("%s logged %d logins of %s, want the 3 before it died", home, n, user)
	}
	testbed.WaitFor(t, 5*time.Second, "the three open sessions counted in Redis", func() bool {
		p := pinned()
		return p.Server == other && p.Sessions == 3
	})
	if us := gws[1].pool.Where(user); us.Backend != other || us.Reason != "affinity" {
		t.Errorf("node2 Where = %+v, want %s (affinity)", us, other)
	}

	// The operator moves the user through node1: every node sends its
	// next login there, and says why.
	if err := gws[0].pool.Move(user, home); err != nil {
		t.Fatal(err)
	}
	if us := gws[2].pool.Where(user); us.Backend != home || us.Reason != "moved" {
		t.Errorf("node3 Where after a move through node1 = %+v, want %s (moved)", us, home)
	}
	if order, _ := gws[1].pool.Route(user); order[0].Name != home {
		t.Errorf("node2 Route after the move = %s, want %s", order[0].Name, home)
	}
}

// TestPoolsFailOpen: with Redis frozen (SIGSTOP) or dead, a login routes
// on the node's own view within the timeout, even with a go-redis client
// that ignores context deadlines; one warning per outage; shared routing
// resumes when Redis is back.
func TestPoolsFailOpen(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{})
	dovecots := testbed.StartDovecotCluster(t, 2, testbed.DovecotOptions{})
	b := backendConf(dovecots)
	const timeout = 100 * time.Millisecond
	// No ContextTimeoutEnabled: the client would wait its 3s read timeout.
	g := startGateway(t, "node1", b, newClient(t, r.Addr, false), timeout)
	lonely := startGateway(t, "lonely", b, nil, 0)
	users := []string{"alice", "bob", "carol", "demo"}

	route := func(what string) time.Duration {
		var worst time.Duration
		for _, u := range users {
			start := time.Now()
			order, _ := g.pool.Route(u)
			took := time.Since(start)
			worst = max(worst, took)
			want, _ := lonely.pool.Route(u)
			if len(order) == 0 || order[0].Name != want[0].Name {
				t.Errorf("%s: %s routed to %v, the local choice is %s", what, u, order, want[0].Name)
			}
		}
		t.Logf("%s: slowest Route %v (timeout %v)", what, worst, timeout)
		return worst
	}
	// What Route may take at most: the timeout, plus scheduling slack on a
	// loaded machine under -race; far below the client's own 3s read
	// timeout that would apply without the pool's guard.
	const bound = timeout + 900*time.Millisecond
	route("Redis up")
	const rounds = 200
	start := time.Now()
	for i := range rounds {
		g.pool.Route(users[i%len(users)])
	}
	t.Logf("Route with Redis up: %v each (%d rounds, one Lua round trip)", time.Since(start)/rounds, rounds)
	s := login(t, g, "alice")

	r.Pause()
	if worst := route("Redis frozen"); worst > bound {
		t.Errorf("Route took %v with Redis frozen, timeout %v", worst, timeout)
	}
	s.close() // the count goes to the background loop, which must not stall logins
	login(t, g, "bob")
	if n := strings.Count(g.logs.String(), "shared user pinning unavailable"); n != 1 {
		t.Errorf("%d warnings during one outage, want 1", n)
	}
	r.Resume()
	testbed.WaitFor(t, 10*time.Second, "shared pinning back after SIGCONT", func() bool {
		g.pool.Route("alice")
		return strings.Contains(g.logs.String(), "shared user pinning available again")
	})

	r.Kill()
	if worst := route("Redis killed"); worst > bound {
		t.Errorf("Route took %v with Redis dead, timeout %v", worst, timeout)
	}
	login(t, g, "carol")
	if n := strings.Count(g.logs.String(), "shared user pinning unavailable"); n != 2 {
		t.Errorf("%d warnings after two outages, want 2", n)
	}
}
