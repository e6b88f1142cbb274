package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/imapgw/imapgw/acme"
	"github.com/imapgw/imapgw/backend"
	"github.com/imapgw/imapgw/cluster/pinstore"
	"github.com/imapgw/imapgw/internal/pebbletest"
	"github.com/imapgw/imapgw/internal/testbed"
)

// asMainACMELifetime, with asMain, makes the child ask Pebble for
// certificates valid this long (a Go duration) and renew them in their
// second half, checking every 250ms: a renewal within a test's time.
const asMainACMELifetime = "IMAPGW_TEST_ACME_LIFETIME"

func init() {
	if os.Getenv(asMain) != "1" {
		return
	}
	if d, err := time.ParseDuration(os.Getenv(asMainACMELifetime)); err == nil {
		acmeTestOptions = func(o *acme.Options) {
			o.CertLifetime, o.RenewalWindowRatio = d, 0.5
			o.RenewCheckInterval = 250 * time.Millisecond
			o.RetryInterval, o.MaxRetryInterval = 200*time.Millisecond, time.Second
		}
	}
}

// fleetNode writes the config of one gateway of a fleet sharing r (its
// node name, the [tls]/[acme] and [backend] lines given) in a new temp dir
// with an empty state dir, and launches `imapgw run` on it with env.
func fleetNode(t *testing.T, r *testbed.Redis, node, hostname, certs, backends string, env ...string) *process {
	t.Helper()
	dir := t.TempDir()
	text := fmt.Sprintf(`[server]
hostname = %q
state_dir = %q

[[listen]]
address = "127.0.0.1:0"
tls = "implicit"

%s

[backend]
client_ip = "none"
%s

[bans]
allow = ["127.0.0.0/8"]
failure_delay = "0s"

[cluster]
redis = %q
node = %q

[admin]
address = "127.0.0.1:0"
`, hostname, filepath.Join(dir, "state"), certs, backends, r.URL(), node)
	path := filepath.Join(dir, "imapgw.toml")
	must(t, os.WriteFile(path, []byte(text), 0o600))
	return launchProcess(t, path, env...)
}

// servedCert does a TLS handshake with addr for host, verifies the chain
// against roots, and returns the leaf.
func servedCert(t *testing.T, addr, host string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{RootCAs: roots, ServerName: host})
	if err != nil {
		t.Fatalf("TLS handshake with %s for %s: %v", addr, host, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0]
}

// sameSerial checks that every node serves one certificate for host,
// valid under roots, and returns its serial.
func sameSerial(t *testing.T, nodes []*process, host string, roots *x509.CertPool) *big.Int {
	t.Helper()
	var serial *big.Int
	for i, p := range nodes {
		got := servedCert(t, p.imaps, host, roots).SerialNumber
		if serial == nil {
			serial = got
		} else if got.Cmp(serial) != 0 {
			t.Errorf("node %d serves serial %x, node 0 %x", i, got, serial)
		}
	}
	return serial
}

// logCount counts the lines with msg across the nodes' logs, and says
// which nodes logged them.
func logCount(nodes []*process, msg string) (int, []int) {
	n, who := 0, []int(nil)
	for i, p := range nodes {
		if c := strings.Count(p.logs.String(), `msg="`+msg+`"`); c > 0 {
			n += c
			who = append(who, i)
		}
	}
	return n, who
}

// TestClusterACMEProcesses (issue 13): three real `imapgw run` processes
// with empty state dirs share one Redis and get their certificate from a
// real Pebble. Exactly one order reaches Pebble, all three serve that
// certificate; when it is due (Pebble issues 30s certificates here), it is
// renewed once, by one node, and all three serve the renewed one.
//
// Pebble validates HTTP-01 on node 0's challenge listener only, as a
// balancer may send the CA to any node: whichever node orders, node 0
// answers from the challenge data in Redis (separate processes: no
// in-memory shortcut as certmagic has within one process).
func TestClusterACMEProcesses(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{})
	// Node 0's HTTP-01 port is held while Pebble starts and the others are
	// picked after: a port picked free and let go before Pebble started was
	// once taken by pebble-challtestsrv, and node 0 could not bind it.
	hold, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	port0 := hold.Addr().(*net.TCPAddr).Port
	peb := pebbletest.Start(t, pebbletest.Options{HTTPPort: port0})
	hold.Close()
	ports := []int{port0, pebbletest.FreePort(t), pebbletest.FreePort(t)}
	host := fmt.Sprintf("mail.fleet-%d.imapgw.test", time.Now().UnixNano()%1000000)
	// No IMAP login here: the backend is an address nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	dead := ln.Addr().String()
	ln.Close()

	const lifetime = 30 * time.Second // renewal due 15s after issue
	start := time.Now()
	var nodes []*process
	for i, port := range ports {
		certs := fmt.Sprintf(`[tls]
certificate = "acme"

[acme]
ca = %q
ca_root = %q
email = "ops@imapgw.test"
http_challenge_address = "127.0.0.1:%d"
`, peb.DirectoryURL, peb.CAFile, port)
		nodes = append(nodes, fleetNode(t, r, "n"+strconv.Itoa(i), host, certs,
			fmt.Sprintf("servers = [%q]", dead), asMainACMELifetime+"="+lifetime.String()))
		if i == 0 {
			// Pebble validates on node 0's port only: a node that ordered
			// before node 0 listened would see its challenge refused and
			// order again (seen twice in seven runs). The others start
			// the moment it listens, while node 0 is still ordering.
			testbed.WaitFor(t, 30*time.Second, "node 0's HTTP-01 listener", func() bool {
				c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
				if err == nil {
					c.Close()
				}
				return err == nil
			})
		}
	}
	for i, p := range nodes {
		p.imaps = p.logValue(t, `msg=listening address=(\S+)`)
		p.admin = p.logValue(t, `msg="admin endpoint listening" .*?address=(\S+)`)
		testbed.WaitFor(t, 30*time.Second, fmt.Sprintf("node %d's /readyz to answer 200 (a certificate)", i), func() bool {
			if p.exited() {
				t.Fatalf("node %d exited: %v", i, p.err)
			}
			code, _, err := p.get("/readyz")
			return err == nil && code == 200
		})
	}
	ready := time.Since(start)
	roots := peb.Roots(t)
	first := sameSerial(t, nodes, host, roots)
	orders := strings.Count(peb.Log(), "Added order")
	if orders != 1 || strings.Count(peb.Log(), "Issued certificate serial") != 1 {
		t.Fatalf("Pebble saw %d orders for three nodes, want 1\n%s", orders, peb.Log())
	}
	n, who := logCount(nodes, "certificate obtained")
	if n != 1 {
		t.Errorf("%d nodes logged an obtained certificate, want 1", n)
	}
	t.Logf("all three nodes ready (serving serial %x) %v after launch; Pebble orders: %d, obtained by node %v",
		first, ready.Round(time.Millisecond), orders, who)

	// The renewal: once, and every node serves the renewed certificate.
	testbed.WaitFor(t, 40*time.Second, "all three nodes serving a renewed certificate", func() bool {
		for _, p := range nodes {
			if servedCert(t, p.imaps, host, roots).SerialNumber.Cmp(first) == 0 {
				return false
			}
		}
		return true
	})
	renewedAt := time.Since(start)
	second := sameSerial(t, nodes, host, roots)
	orders = strings.Count(peb.Log(), "Added order")
	if orders != 2 || strings.Count(peb.Log(), "Issued certificate serial") != 2 {
		t.Errorf("Pebble saw %d orders after one renewal, want 2\n%s", orders, peb.Log())
	}
	n, who = logCount(nodes, "certificate renewed")
	if n != 1 {
		t.Errorf("%d nodes logged a renewal, want 1", n)
	}
	t.Logf("renewed serial %x served by all three %v after launch; Pebble orders in all: %d, renewed by node %v",
		second, renewedAt.Round(time.Millisecond), orders, who)
}

// TestClusterPoolProcesses (issue 13): three real `imapgw run` processes
// with the backend pool in front of two Dovecots (shared mail storage) and
// one Redis. A user's concurrent sessions through the three nodes land on
// one server; when it is killed they end, and the user's new sessions
// through two nodes go together to the other server; when it returns, the
// user's sessions through every node still join the open ones there, also
// through the third node, whose own last sessions of the user were on the
// returned server (its local affinity says so): only the pin in Redis
// keeps the user together.
func TestClusterPoolProcesses(t *testing.T) {
	r := testbed.StartRedis(t, testbed.RedisOptions{})
	dovecots := testbed.StartDovecotCluster(t, 2, testbed.DovecotOptions{})
	byName := map[string]*testbed.Dovecot{"imap1": dovecots[0], "imap2": dovecots[1]}
	// Checks every 500ms: three nodes checking every 100ms keep a
	// restarting Dovecot's login processes (one per connection) so busy on
	// a loaded machine that it misses its own start deadline.
	servers := fmt.Sprintf(`check_interval = "500ms"
check_timeout = "2s"
fall = 1
rise = 1

[[backend.server]]
name = "imap1"
address = %q

[[backend.server]]
name = "imap2"
address = %q
`, dovecots[0].Addr, dovecots[1].Addr)
	certs := "[tls]\ncertificate = \"self-signed\"\nnames = [\"127.0.0.1\"]"
	names := []string{"a", "b", "c"}
	nodes := map[string]*poolEnv{}
	start := time.Now()
	for _, n := range names {
		p := fleetNode(t, r, n, "localhost", certs, servers)
		nodes[n] = &poolEnv{p: p, dovecots: byName}
	}
	for _, n := range names {
		nodes[n].p.waitStarted(t)
	}
	t.Logf("three nodes ready %v after launch", time.Since(start).Round(time.Millisecond))

	const user = "alice"
	pass := dovecots[0].Users[user]
	rc := redis.NewClient(&redis.Options{Addr: r.Addr})
	t.Cleanup(func() { rc.Close() })
	reader := pinstore.New(rc, "imapgw:", "test-reader", pinstore.Options{}) // the default key_prefix
	pinned := func() backend.Pin {
		pin, err := reader.Pick(context.Background(), user, "", 0)
		if err != nil {
			t.Fatalf("reading the pin in Redis: %v", err)
		}
		return pin
	}
	waitState := func(server, want string) {
		t.Helper()
		for _, n := range names {
			e := nodes[n]
			e.p.eventually(t, fmt.Sprintf("%s to see %s %s", n, server, want), func() bool {
				return e.backends(t)[server].State == want
			})
		}
	}
	// open logs user in through the nodes given, all at once, perNode
	// sessions each; it waits until the Dovecots logged every login and
	// returns the sessions and the logins per server.
	open := func(perNode int, via ...string) ([]*poolSession, map[string]int) {
		t.Helper()
		before := nodes["a"].logins(user)
		var mu sync.Mutex
		var sessions []*poolSession
		var wg sync.WaitGroup
		errs := make(chan error, perNode*len(via))
		for _, n := range via {
			for range perNode {
				wg.Go(func() {
					s, err := dialPoolSession(nodes[n].p.imaps, user, pass)
					if err != nil {
						errs <- fmt.Errorf("via %s: %w", n, err)
						return
					}
					mu.Lock()
					sessions = append(sessions, s)
					mu.Unlock()
				})
			}
		}
		wg.Wait()
		close(errs)
		for _, s := range sessions {
			t.Cleanup(func() { s.conn.Close() })
		}
		for err := range errs {
			t.Fatalf("login of %s: %v", user, err)
		}
		delta := map[string]int{}
		testbed.WaitFor(t, 10*time.Second, "the Dovecots to log every login", func() bool {
			total := 0
			for name, c := range nodes["a"].logins(user) {
				delta[name] = c - before[name]
				total += delta[name]
			}
			return total >= len(sessions)
		})
		return sessions, delta
	}
	together := func(what string, delta map[string]int, want int) string {
		t.Helper()
		for name, n := range delta {
			if n == want {
				return name
			}
		}
		t.Fatalf("%s: logins per server %v, want all %d on one", what, delta, want)
		return ""
	}

	// Two sessions through each node, all at once: one server. (With no
	// pin yet the nodes' hashing agrees anyway; the pin in Redis proves
	// itself after the server's return, below.)
	first, delta := open(2, names...)
	home := together("concurrent sessions through a, b and c", delta, 6)
	away := other(home)
	testbed.WaitFor(t, 5*time.Second, "Redis to count the six sessions on "+home, func() bool {
		p := pinned()
		return p.Server == home && p.Sessions == 6
	})
	for _, n := range names {
		if u := nodes[n].where(t, user); u.Backend != home || u.Reason != "affinity" || u.Open != 2 {
			t.Errorf("users where %s on %s = %+v, want %s (affinity), 2 open", user, n, u, home)
		}
	}

	// home dies: its sessions end, every node sees it down; new sessions
	// through a and b go together to the other server.
	byName[home].Kill()
	killed := time.Now()
	for _, s := range first {
		if err := s.waitClosed(); err != nil {
			t.Errorf("a session on the killed %s: %v", home, err)
		}
	}
	waitState(home, "down")
	t.Logf("sessions closed and %s down at all three %v after the kill", home, time.Since(killed).Round(time.Millisecond))
	second, delta := open(2, "a", "b")
	together("sessions through a and b with "+home+" dead", delta, 4)
	if delta[away] != 4 {
		t.Fatalf("with %s dead the logins went %v", home, delta)
	}
	testbed.WaitFor(t, 5*time.Second, "Redis to pin the user to "+away+" with four sessions", func() bool {
		p := pinned()
		return p.Server == away && p.Sessions == 4
	})

	// home returns. c's own last sessions of the user were on home, and
	// hashing alone would also send the user there: the pin in Redis keeps
	// every node's new sessions beside the open ones on away.
	byName[home].Start()
	waitState(home, "up")
	if u := nodes["c"].where(t, user); u.Backend != away || u.Reason != "affinity" || u.Open != 0 {
		t.Errorf("users where %s on c after %s returned = %+v, want %s (affinity), none open there", user, home, u, away)
	}
	third, delta := open(1, names...)
	together("sessions through a, b and c after "+home+" returned", delta, 3)
	if delta[away] != 3 {
		t.Errorf("after %s returned, the user's new sessions went %v, want all on %s beside the open ones", home, delta, away)
	}
	testbed.WaitFor(t, 5*time.Second, "Redis to count seven sessions on "+away, func() bool {
		p := pinned()
		return p.Server == away && p.Sessions == 7
	})
	for _, s := range append(second, third...) {
		if err := s.noop(); err != nil {
			t.Errorf("a session on %s: %v", away, err)
		}
	}
	t.Logf("logins of %s: %s %d (before it died), %s %d", user, home, byName[home].LoginCount(user), away, byName[away].LoginCount(user))
}
