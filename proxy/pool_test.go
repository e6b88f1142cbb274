package proxy_test

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/imapgw/imapgw/backend"
	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
	"github.com/prometheus/client_golang/prometheus"
)

// poolEnv is a gateway in front of several real Dovecots sharing one mail root,
// with a pool whose health checks run.
type poolEnv struct {
	*gateway
	nodes []*testbed.Dovecot
	names []string // server names, imap1…, in nodes order
	users map[string]string
	next  int // last byte of the next client source address
}

// poolUsers are enough users for every server of three to own some.
func poolUsers() map[string]string {
	users := map[string]string{}
	for i := 1; i <= 24; i++ {
		users[fmt.Sprintf("user%02d", i)] = fmt.Sprintf("secret-%02d", i)
	}
	return users
}

// Fast checks so that failures are seen in well under a second; the numbers
// the bound is computed from.
const (
	poolCheckInterval = 200 * time.Millisecond
	poolFall          = 2
	poolConnect       = 2 * time.Second
)

// startPoolEnv starts n Dovecots with their defaults and a gateway whose pool
// names the first configured of them (all when configured is 0) imap1…. The
// health checks start with runChecks.
func startPoolEnv(t *testing.T, n, configured int, edit func(*conf.Config)) *poolEnv {
	t.Helper()
	users := poolUsers()
	nodes := testbed.StartDovecotCluster(t, n, testbed.DovecotOptions{Users: users})
	if configured == 0 {
		configured = n
	}
	e := &poolEnv{nodes: nodes, users: users, next: 10}
	for i := range nodes {
		e.names = append(e.names, fmt.Sprintf("imap%d", i+1))
	}
	e.gateway = startGateway(t, nodes[0].Addr, func(c *conf.Config) {
		c.Backend.Servers = nil
		c.Backend.Server = e.serverConfs(configured)
		c.Backend.CheckInterval = conf.D(poolCheckInterval)
		c.Backend.CheckTimeout = conf.D(poolConnect) // a loaded machine must not fail a healthy Dovecot twice in a row
		c.Backend.Fall, c.Backend.Rise = poolFall, 2
		c.Backend.ConnectTimeout = conf.D(poolConnect)
		c.Backend.Affinity = conf.D(time.Second)
		if edit != nil {
			edit(c)
		}
	})
	return e
}

func (e *poolEnv) serverConfs(n int) []conf.BackendServer {
	var out []conf.BackendServer
	for i := range n {
		out = append(out, conf.BackendServer{Name: e.names[i], Address: e.nodes[i].Addr, Weight: 100})
	}
	return out
}

// source returns a new client source address, 127.0.0.x.
func (e *poolEnv) source() string {
	e.next++
	return fmt.Sprintf("127.0.0.%d", e.next)
}

// sortedUsers returns the user names in order.
func (e *poolEnv) sortedUsers() []string {
	var us []string
	for u := range e.users {
		us = append(us, u)
	}
	slices.Sort(us)
	return us
}

// hashed returns the server each user goes to now (Where), by node index.
func (e *poolEnv) hashed(t *testing.T) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, u := range e.sortedUsers() {
		out[u] = e.index(t, e.gateway.pool.Where(u).Backend)
	}
	return out
}

func (e *poolEnv) index(t *testing.T, name string) int {
	t.Helper()
	i := slices.Index(e.names, name)
	if i < 0 {
		t.Fatalf("no server named %q", name)
	}
	return i
}

// counts snapshots how many logins of user each node has logged.
func (e *poolEnv) counts(user string) []int {
	out := make([]int, len(e.nodes))
	for i, d := range e.nodes {
		out[i] = d.LoginCount(user)
	}
	return out
}

// landed waits until exactly one node logged one more login of user than in
// before, and returns it. Dovecot logs through a separate process.
func (e *poolEnv) landed(t *testing.T, user string, before []int) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		now := e.counts(user)
		var grew []int
		for i := range now {
			if now[i] > before[i] {
				grew = append(grew, i)
			}
		}
		if len(grew) == 1 && now[grew[0]] == before[grew[0]]+1 {
			return grew[0]
		}
		if len(grew) > 1 || time.Now().After(deadline) {
			t.Fatalf("logins of %s: %v before, %v after; want one more on exactly one node", user, before, now)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dialGo connects go-imap's client from src to the implicit-TLS listener.
func (e *poolEnv) dialGo(t *testing.T, src string) *imapclient.Client {
	t.Helper()
	c, err := e.dialGoErr(src)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (e *poolEnv) dialGoErr(src string) (*imapclient.Client, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	conn, err := d.Dial("tcp", e.implicit)
	if err != nil {
		return nil, fmt.Errorf("dial from %s: %w", src, err)
	}
	return imapclient.New(tls.Client(conn, e.clientTLS()), nil), nil
}

// loginGo logs user in with go-imap from a new source, selects INBOX and
// returns the client and the node the login landed on.
func (e *poolEnv) loginGo(t *testing.T, user string) (*imapclient.Client, int) {
	t.Helper()
	before := e.counts(user)
	c := e.dialGo(t, e.source())
	if err := c.Login(user, e.users[user]).Wait(); err != nil {
		t.Fatalf("Login(%s) = %v", user, err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT INBOX as %s = %v", user, err)
	}
	return c, e.landed(t, user, before)
}

// visitGo logs user in and out with go-imap and returns where it landed.
func (e *poolEnv) visitGo(t *testing.T, user string) int {
	t.Helper()
	open := e.pool.Where(user).Sessions
	c, node := e.loginGo(t, user)
	if err := c.Logout().Wait(); err != nil {
		t.Fatalf("LOGOUT as %s = %v", user, err)
	}
	c.Close()
	e.waitSessions(t, user, open) // ended in the pool too: its affinity runs from now
	return node
}

// idle logs user in and holds an IDLE command open; stop ends it.
func (e *poolEnv) idle(t *testing.T, user string) (c *imapclient.Client, node int, stop func()) {
	t.Helper()
	c, node = e.loginGo(t, user)
	cmd, err := c.Idle()
	if err != nil {
		t.Fatalf("IDLE as %s = %v", user, err)
	}
	return c, node, func() {
		t.Helper()
		if err := cmd.Close(); err != nil {
			t.Fatalf("ending IDLE as %s: %v", user, err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("IDLE as %s ended with %v", user, err)
		}
	}
}

// stillWorks checks a session holding IDLE is alive: DONE, NOOP, IDLE again.
func stillWorks(t *testing.T, c *imapclient.Client, stop func()) func() {
	t.Helper()
	stop()
	if err := c.Noop().Wait(); err != nil {
		t.Fatalf("NOOP on a session that must have stayed up: %v", err)
	}
	cmd, err := c.Idle()
	if err != nil {
		t.Fatalf("IDLE again: %v", err)
	}
	return func() {
		t.Helper()
		cmd.Close()
		if err := cmd.Wait(); err != nil {
			t.Fatalf("IDLE ended with %v", err)
		}
	}
}

// waitSessions waits until the pool counts n open sessions of user.
func (e *poolEnv) waitSessions(t *testing.T, user string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for e.gateway.pool.Where(user).Sessions != n {
		if time.Now().After(deadline) {
			t.Fatalf("%s has %d sessions in the pool after 5s, want %d", user, e.gateway.pool.Where(user).Sessions, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitState waits until the pool shows server name in state and returns how
// long that took.
func (e *poolEnv) waitState(t *testing.T, name, state string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		for _, st := range e.gateway.pool.Servers() {
			if st.Name == name && st.State == state {
				return time.Since(start)
			}
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s not %s within %v: %+v", name, state, timeout, e.gateway.pool.Servers())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// byNode groups users by the node they hash to.
func byNode(m map[string]int, n int) [][]string {
	out := make([][]string, n)
	for u, i := range m {
		out[i] = append(out[i], u)
	}
	for i := range out {
		slices.Sort(out[i])
	}
	return out
}

// runImaplib logs each user in with Python's imaplib from its own source
// address, selects INBOX and logs out.
func (e *poolEnv) runImaplib(t *testing.T, users []string) {
	t.Helper()
	testbed.Need(t, "python3")
	dir := t.TempDir()
	caFile := e.ca.WritePEM(t, dir)
	py := filepath.Join(dir, "pool.py")
	os.WriteFile(py, []byte(`import imaplib, socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
port = int(sys.argv[2])
class Client(imaplib.IMAP4_SSL):
    def __init__(self, src):
        self.src = src
        super().__init__("localhost", port, ssl_context=ctx, timeout=10)
    def _create_socket(self, timeout):
        s = socket.create_connection(("127.0.0.1", self.port), timeout, source_address=(self.src, 0))
        return self.ssl_context.wrap_socket(s, server_hostname=self.host)
for arg in sys.argv[3:]:
    src, user, pw = arg.split(":", 2)
    m = Client(src)
    m.login(user, pw)
    typ, data = m.select("INBOX")
    assert typ == "OK", data
    m.logout()
    print("ok", user)
`), 0o644)
	_, port, _ := strings.Cut(e.implicit, ":")
	args := []string{py, caFile, port}
	for _, u := range users {
		args = append(args, e.source()+":"+u+":"+e.users[u])
	}
	out, err := exec.Command("python3", args...).CombinedOutput()
	if err != nil || strings.Count(string(out), "ok ") != len(users) {
		t.Fatalf("imaplib: %v\n%s", err, out)
	}
}

// TestPoolSameServer: every login of a user, from go-imap or imaplib and from
// any source address, lands on the same Dovecot, the one the pool names; the
// users spread over all three; the auth line names the server.
func TestPoolSameServer(t *testing.T) {
	e := startPoolEnv(t, 3, 0, nil)
	e.runChecks(t)
	hashed := e.hashed(t)
	for i, us := range byNode(hashed, 3) {
		if len(us) == 0 {
			t.Errorf("no user hashes to %s: %v", e.names[i], hashed)
		}
	}
	users := e.sortedUsers()
	for _, u := range users {
		if got := e.visitGo(t, u); got != hashed[u] {
			t.Errorf("go-imap login of %s landed on %s, want %s", u, e.names[got], e.names[hashed[u]])
		}
	}
	e.runImaplib(t, users)
	for _, u := range users {
		e.nodes[hashed[u]].WaitLogins(t, u, 2, 5*time.Second)
		for i, d := range e.nodes {
			if i != hashed[u] && d.LoginCount(u) != 0 {
				t.Errorf("%s logged in %d times on %s, want only %s", u, d.LoginCount(u), e.names[i], e.names[hashed[u]])
			}
		}
		if !strings.Contains(e.logs.String(), fmt.Sprintf("user=%s mech=", u)) {
			t.Errorf("no auth line for %s", u)
		}
	}
	// Every server got the client's own address (ID), not the gateway's.
	for i, d := range e.nodes {
		for line := range strings.Lines(d.Log()) {
			login := strings.Contains(line, "Info: Login: user=<")
			if login && (!strings.Contains(line, "rip=127.0.0.") || strings.Contains(line, "rip=127.0.0.1,")) {
				t.Errorf("%s logged a login without the client's address: %s", e.names[i], line)
			}
		}
	}
	for _, name := range e.names {
		if !strings.Contains(e.logs.String(), "outcome=ok backend="+name) {
			t.Errorf("no auth line names backend=%s", name)
		}
	}
	e.assertNoPasswords(t)
}

// TestPoolKillAndReturn: SIGKILL one of three Dovecots. Its users log in on
// the others within fall × check_interval + 1 s and no login in that window
// waits past connect_timeout; everyone else keeps their server and their open
// sessions. Then it comes back: a user holding IDLE on its fallback stays
// there, and so do its new logins until the session has ended and the
// affinity passed; users with no session return to their hashed server.
func TestPoolKillAndReturn(t *testing.T) {
	const affinity = 1500 * time.Millisecond
	e := startPoolEnv(t, 3, 0, func(c *conf.Config) { c.Backend.Affinity = conf.D(affinity) })
	e.runChecks(t)
	hashed := e.hashed(t)
	groups := byNode(hashed, 3)
	victim := 0
	for i := range groups {
		if len(groups[i]) > len(groups[victim]) {
			victim = i
		}
	}
	if len(groups[victim]) < 3 {
		t.Fatalf("want 3 users on one server, got %v", groups)
	}
	vname := e.names[victim]
	holder, returner, fresh := groups[victim][0], groups[victim][1], groups[victim][2]

	// Sessions on the survivors must not notice.
	type held struct {
		user string
		c    *imapclient.Client
		stop func()
	}
	var survivors []held
	for i, us := range groups {
		if i != victim && len(us) > 0 {
			c, node, stop := e.idle(t, us[0])
			if node != i {
				t.Fatalf("%s landed on %s, want %s", us[0], e.names[node], e.names[i])
			}
			survivors = append(survivors, held{us[0], c, stop})
		}
	}

	// The victim's users (but fresh) all log in at once, right after the kill,
	// each from its own address, as mail apps reconnecting would.
	var movers []string
	before := map[string][]int{}
	for _, u := range groups[victim] {
		if u != fresh { // fresh keeps no session and no affinity: it must return at once
			movers = append(movers, u)
			before[u] = e.counts(u)
		}
	}
	bound := poolFall*poolCheckInterval + time.Second
	// The bound holds the failover to fall × check_interval + 1s; the
	// logins themselves are slow on a loaded machine (CI tests the packages
	// side by side), which is not the pool's doing. So the movers get that on
	// top of what as many logins at once cost right now on the servers that
	// stay up.
	baseline := e.concurrentLogins(t, spareUsers(groups, victim, len(movers)))
	moveBound := bound + baseline
	killed := time.Now()
	downc := make(chan time.Duration, 1)
	go func() { downc <- e.untilState(vname, "down", 2*bound) }()
	e.nodes[victim].Kill()
	type result struct {
		c        *imapclient.Client
		took, at time.Duration // the login; from the kill to its OK
		err      error
	}
	results := make([]result, len(movers))
	var wg sync.WaitGroup
	for i, u := range movers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			c, err := e.dialGoErr(fmt.Sprintf("127.0.1.%d", i+1))
			if err == nil {
				t.Cleanup(func() { c.Close() })
				err = c.Login(u, e.users[u]).Wait()
			}
			results[i] = result{c, time.Since(start), time.Since(killed), err}
		}()
	}
	wg.Wait()
	var firstMove, moved time.Duration
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("login of %s during the outage: %v", movers[i], r.err)
		}
		if r.took >= poolConnect {
			t.Errorf("login of %s during the outage took %v, want < connect_timeout %v", movers[i], r.took, poolConnect)
		}
		if firstMove == 0 || r.at < firstMove {
			firstMove = r.at
		}
		moved = max(moved, r.at)
	}
	if moved > moveBound {
		t.Errorf("the killed server's users all logged in elsewhere after %v, want within fall × check_interval + 1s + a login before the kill (%v) = %v",
			moved, baseline.Round(time.Millisecond), moveBound)
	}
	var holderConn *imapclient.Client
	var holderStop func()
	holderNode := -1
	for i, u := range movers {
		node := e.landed(t, u, before[u])
		if node == victim {
			t.Fatalf("%s logged in on the killed %s", u, vname)
		}
		if u == holder {
			holderConn, holderNode = results[i].c, node
			cmd, err := holderConn.Idle()
			if err != nil {
				t.Fatalf("IDLE as %s: %v", u, err)
			}
			holderStop = func() { cmd.Close(); cmd.Wait() }
			continue
		}
		if err := results[i].c.Logout().Wait(); err != nil {
			t.Fatalf("LOGOUT as %s: %v", u, err)
		}
	}
	down := <-downc
	if down < 0 || down > bound {
		t.Errorf("%s marked down %v after the kill, want within %v (negative: never)", vname, down, bound)
	}
	t.Logf("MEASURED: after SIGKILL of %s: %d of its users logging in at once got OK from another server %v–%v after the kill (each login ≤ %v, %v failovers; the same logins before the kill ≤ %v); marked down after %v (bound fall × check_interval + 1s = %v)",
		vname, len(movers), firstMove.Round(time.Millisecond), moved.Round(time.Millisecond), slowest(results, func(r result) time.Duration { return r.took }).Round(time.Millisecond),
		unlabeled(t, e.reg, "imapgw_backend_failovers_total"), baseline.Round(time.Millisecond), down.Round(time.Millisecond), bound)

	busy := map[string]bool{}
	for _, h := range survivors {
		busy[h.user] = true
	}
	for u, i := range hashed {
		if i != victim && !busy[u] {
			if got := e.visitGo(t, u); got != i {
				t.Errorf("%s (on %s, still up) moved to %s", u, e.names[i], e.names[got])
			}
		}
	}
	for i := range survivors {
		survivors[i].stop = stillWorks(t, survivors[i].c, survivors[i].stop)
	}

	// Back up.
	e.nodes[victim].Start()
	e.waitState(t, vname, "up", 10*time.Second)
	if got := e.visitGo(t, fresh); got != victim {
		t.Errorf("%s (no session, no affinity) went to %s after %s came back, want %s", fresh, e.names[got], vname, vname)
	}
	if w := e.pool.Where(holder); w.Backend != e.names[holderNode] || w.Reason != "affinity" {
		t.Errorf("Where(%s) with an open session on %s = %+v, want it there by affinity", holder, e.names[holderNode], w)
	}
	if got := e.visitGo(t, holder); got != holderNode {
		t.Errorf("new login of %s, whose IDLE session is on %s, went to %s: split", holder, e.names[holderNode], e.names[got])
	}
	holderStop = stillWorks(t, holderConn, holderStop)
	holderStop()
	if err := holderConn.Logout().Wait(); err != nil {
		t.Fatalf("LOGOUT: %v", err)
	}
	e.waitSessions(t, holder, 0)
	ended := time.Now()
	if w := e.pool.Where(holder); w.Backend != e.names[holderNode] {
		t.Errorf("Where(%s) just after its session ended = %+v, want %s for the affinity", holder, w, e.names[holderNode])
	}
	// It follows the hash again once the affinity has passed, not before.
	back := e.waitRoute(t, holder, vname, affinity+2*time.Second)
	if since := back.Sub(ended); since < affinity-100*time.Millisecond {
		t.Errorf("%s returned to %s %v after its session ended, before the affinity %v", holder, vname, since, affinity)
	}
	if got := e.visitGo(t, holder); got != victim {
		t.Errorf("%s after its affinity went to %s, want %s", holder, e.names[got], vname)
	}
	line := e.waitLog(t, "msg=\"session ended\" ", "user="+holder, "backend="+e.names[holderNode])
	// After LOGOUT the server closes first; the gateway did not.
	if !strings.Contains(line, "closed_by=backend") && !strings.Contains(line, "closed_by=client") {
		t.Errorf("session end line %q after the client's LOGOUT, want closed_by=backend (or client)", line)
	}
	e.waitRoute(t, returner, vname, affinity+2*time.Second)
	if got := e.visitGo(t, returner); got != victim {
		t.Errorf("%s after its affinity went to %s, want %s", returner, e.names[got], vname)
	}
	for _, h := range survivors {
		h.stop()
	}
	e.assertNoPasswords(t)
}

// spareUsers picks n users of the servers other than victim, skipping the
// first of each (it holds an IDLE session in the test), in turn; a user may
// come twice when there are fewer.
func spareUsers(groups [][]string, victim, n int) []string {
	var pool, out []string
	for i, us := range groups {
		if i != victim && len(us) > 1 {
			pool = append(pool, us[1:]...)
		}
	}
	for i := 0; i < n && len(pool) > 0; i++ {
		out = append(out, pool[i%len(pool)])
	}
	return out
}

// concurrentLogins logs users in at once, each from its own address as the
// movers do (connect, TLS, LOGIN), logs them out, and returns the slowest login.
func (e *poolEnv) concurrentLogins(t *testing.T, users []string) time.Duration {
	t.Helper()
	took := make([]time.Duration, len(users))
	errs := make([]error, len(users))
	var wg sync.WaitGroup
	for i, u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			c, err := e.dialGoErr(fmt.Sprintf("127.0.2.%d", i+1))
			if err != nil {
				errs[i] = err
				return
			}
			defer c.Close()
			if errs[i] = c.Login(u, e.users[u]).Wait(); errs[i] == nil {
				took[i] = time.Since(start)
				errs[i] = c.Logout().Wait()
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("login of %s before the kill: %v", users[i], err)
		}
	}
	return slowest(took, func(d time.Duration) time.Duration { return d })
}

func slowest[T any](rs []T, d func(T) time.Duration) time.Duration {
	var m time.Duration
	for _, r := range rs {
		m = max(m, d(r))
	}
	return m
}

// waitRoute waits until the pool sends user to name and returns when.
func (e *poolEnv) waitRoute(t *testing.T, user, name string, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if w := e.pool.Where(user); w.Backend == name {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not routed to %s within %v: %+v", user, name, timeout, e.pool.Where(user))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// untilState polls the pool from now until name is in state and returns how
// long that took, or -1 after timeout. Safe to run in its own goroutine.
func (e *poolEnv) untilState(name, state string, timeout time.Duration) time.Duration {
	start := time.Now()
	for time.Since(start) < timeout {
		for _, st := range e.pool.Servers() {
			if st.Name == name && st.State == state {
				return time.Since(start)
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	return -1
}

// TestPoolSilentServer: a server that accepts TCP and never greets is marked
// down by the checks; then the logins of the users it had are not held for
// connect_timeout but go straight to the others.
func TestPoolSilentServer(t *testing.T) {
	silent := testbed.StartSilentServer(t)
	const checkTimeout = 300 * time.Millisecond
	e := startPoolEnv(t, 2, 0, func(c *conf.Config) {
		c.Backend.Server = append(c.Backend.Server, conf.BackendServer{Name: "silent", Address: silent, Weight: 100})
		c.Backend.CheckTimeout = conf.D(checkTimeout)
	})
	var owned []string // users the silent server would have
	for _, u := range e.sortedUsers() {
		if e.pool.Where(u).Backend == "silent" {
			owned = append(owned, u)
		}
	}
	if len(owned) == 0 {
		t.Fatal("no user hashes to the silent server")
	}
	// Before any check: the login waits connect_timeout for a greeting that
	// never comes, then goes on to the next server (nothing was sent to the
	// silent one), which counts as a failover.
	start := time.Now()
	node := e.visitGo(t, owned[0])
	took := time.Since(start)
	if took < poolConnect || took > poolConnect+2*time.Second {
		t.Errorf("login of %s via the silent server took %v, want connect_timeout %v and a little", owned[0], took, poolConnect)
	}
	if n := unlabeled(t, e.reg, "imapgw_backend_failovers_total"); n != 1 {
		t.Errorf("imapgw_backend_failovers_total = %v, want 1", n)
	}
	t.Logf("%s: silent server not yet checked, went on to %s after %v", owned[0], e.names[node], took.Round(time.Millisecond))
	e.runChecks(t)
	bound := poolFall*(poolCheckInterval+checkTimeout) + time.Second
	took = e.waitState(t, "silent", "down", bound)
	t.Logf("MEASURED: silent server marked down %v after the checks started (bound %v)", took.Round(time.Millisecond), bound)
	for _, st := range e.pool.Servers() {
		if st.Name == "silent" && st.LastError == "" {
			t.Errorf("silent server down with no LastError: %+v", st)
		}
	}
	for _, u := range owned[1:] {
		start := time.Now()
		node := e.visitGo(t, u)
		if took := time.Since(start); took > time.Second {
			t.Errorf("login of %s took %v with the silent server already down", u, took)
		}
		t.Logf("%s: silent server down, landed on %s", u, e.names[node])
	}
}

// TestPoolDrain: a drained server gets no new logins and keeps its sessions;
// drain with kick closes them (both sockets, logged with the reason); undrain
// brings its users back.
func TestPoolDrain(t *testing.T) {
	e := startPoolEnv(t, 3, 0, func(c *conf.Config) { c.Backend.Affinity = conf.D(0) })
	e.runChecks(t)
	hashed := e.hashed(t)
	groups := byNode(hashed, 3)
	x := 0
	for i := range groups {
		if len(groups[i]) > len(groups[x]) {
			x = i
		}
	}
	name := e.names[x]
	holder := groups[x][0]
	c, node, stop := e.idle(t, holder)
	if node != x {
		t.Fatalf("%s landed on %s, want %s", holder, e.names[node], name)
	}

	if err := e.pool.Drain(name, false); err != nil {
		t.Fatalf("Drain(%s) = %v", name, err)
	}
	e.waitState(t, name, "draining", time.Second)
	for _, u := range groups[x][1:] {
		if got := e.visitGo(t, u); got == x {
			t.Errorf("%s logged in on the draining %s", u, name)
		}
	}
	stop = stillWorks(t, c, stop)
	if w := e.pool.Where(holder); w.Sessions != 1 {
		t.Errorf("Where(%s) = %+v, want its session still counted", holder, w)
	}

	if err := e.pool.Drain(name, true); err != nil {
		t.Fatalf("Drain(%s, kick) = %v", name, err)
	}
	e.waitSessions(t, holder, 0)
	// The client sees its connection closed (no BYE is injected into a relayed
	// stream): its next command fails instead of hanging.
	noop := make(chan error, 1)
	go func() { noop <- c.Noop().Wait() }()
	select {
	case err := <-noop:
		if err == nil {
			t.Errorf("NOOP on a kicked session succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Errorf("NOOP on a kicked session still waiting after 5s: its connection was not closed")
	}
	_ = stop
	line := e.waitLog(t, "msg=\"session ended\" ", "user="+holder)
	if !strings.Contains(line, "closed_by=gateway") || !strings.Contains(line, "backend="+name) {
		t.Errorf("session end line %q, want closed_by=gateway, the reason and backend=%s", line, name)
	}
	t.Logf("kicked: %s", line)

	if err := e.pool.Undrain(name); err != nil {
		t.Fatalf("Undrain(%s) = %v", name, err)
	}
	e.waitState(t, name, "up", time.Second)
	for _, u := range groups[x] {
		if got := e.visitGo(t, u); got != x {
			t.Errorf("%s after undrain went to %s, want %s", u, e.names[got], name)
		}
	}
}

// waitLog waits for a gateway log line holding every one of parts.
func (e *poolEnv) waitLog(t *testing.T, parts ...string) string {
	t.Helper()
	return waitLogLine(t, e.logs, parts...)
}

// waitLogLine waits up to 5 s for a line of logs holding every part.
func waitLogLine(t *testing.T, logs *testbed.LogBuffer, parts ...string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
	lines:
		for line := range strings.Lines(logs.String()) {
			for _, p := range parts {
				if !strings.Contains(line, p) {
					continue lines
				}
			}
			return strings.TrimSpace(line)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no gateway log line with %q", parts)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPoolMapFile: a map file entry wins over the hash, and an edit of the
// file is picked up without a reload.
func TestPoolMapFile(t *testing.T) {
	mapFile := filepath.Join(t.TempDir(), "users.map")
	// Empty at first: the hash of every user.
	if err := os.WriteFile(mapFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	e := startPoolEnv(t, 3, 0, func(c *conf.Config) {
		c.Backend.Affinity = conf.D(0)
		c.Backend.MapFile = mapFile
	})
	hashed := e.hashed(t)
	other := func(u string) string { return e.names[(hashed[u]+1)%3] }
	a, b := "user01", "user02"
	write := func(body string) {
		t.Helper()
		// Write and rename: the pool never reads a half-written map.
		tmp := mapFile + ".new"
		if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, mapFile); err != nil {
			t.Fatal(err)
		}
	}
	write(a + " " + other(a) + "\n")
	if err := e.pool.Reload(e.cfg.Backend); err != nil {
		t.Fatalf("Reload with the map: %v", err)
	}
	e.runChecks(t)
	if w := e.pool.Where(a); w.Backend != other(a) || w.Reason != "map" {
		t.Fatalf("Where(%s) = %+v, want %s by map", a, w, other(a))
	}
	if got := e.visitGo(t, a); e.names[got] != other(a) {
		t.Errorf("%s went to %s, want %s from the map (hash: %s)", a, e.names[got], other(a), e.names[hashed[a]])
	}
	if got := e.visitGo(t, b); got != hashed[b] {
		t.Errorf("%s (not in the map) went to %s, want its hash %s", b, e.names[got], e.names[hashed[b]])
	}

	// Edit: a goes back to the hash, b is mapped away from it.
	write("# edited\n" + b + " " + other(b) + "\n")
	picked := time.Now()
	e.waitRoute(t, b, other(b), 5*time.Second)
	t.Logf("MEASURED: map file edit picked up after %v", time.Since(picked).Round(time.Millisecond))
	if w := e.pool.Where(b); w.Reason != "map" {
		t.Errorf("Where(%s) = %+v, want reason map", b, w)
	}
	if got := e.visitGo(t, b); e.names[got] != other(b) {
		t.Errorf("%s after the edit went to %s, want %s", b, e.names[got], other(b))
	}
	e.waitRoute(t, a, e.names[hashed[a]], 5*time.Second)
	if got := e.visitGo(t, a); got != hashed[a] {
		t.Errorf("%s, no longer mapped, went to %s, want its hash %s", a, e.names[got], e.names[hashed[a]])
	}
}

// TestPoolReloadAddServer: a reload adds a fourth Dovecot while IDLE sessions
// are open: they stay up; a user whose hash now names the new server goes
// there when it has no session, and stays with its session's server while it
// has one (never split), following the hash once it has ended.
func TestPoolReloadAddServer(t *testing.T) {
	const affinity = time.Second
	e := startPoolEnv(t, 4, 3, func(c *conf.Config) { c.Backend.Affinity = conf.D(affinity) })
	e.runChecks(t)
	before := e.hashed(t)

	// Where each user goes with four servers, from a pool of that config.
	four := *e.cfg
	four.Backend.Server = e.serverConfs(4)
	probe, err := backend.New(four.Backend, backend.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var movers, stayers []string
	for _, u := range e.sortedUsers() {
		if probe.Where(u).Backend == e.names[3] {
			movers = append(movers, u)
		} else {
			stayers = append(stayers, u)
		}
	}
	if len(movers) < 2 {
		t.Fatalf("want 2 users that move to the new server, got %v", movers)
	}

	type held struct {
		user string
		node int
		c    *imapclient.Client
		stop func()
	}
	var sessions []held
	for _, u := range append([]string{movers[0]}, stayers[:3]...) {
		c, node, stop := e.idle(t, u)
		sessions = append(sessions, held{u, node, c, stop})
	}

	if err := e.pool.Reload(four.Backend); err != nil {
		t.Fatalf("Reload with a fourth server: %v", err)
	}
	e.waitState(t, e.names[3], "up", 5*time.Second)
	for i := range sessions {
		sessions[i].stop = stillWorks(t, sessions[i].c, sessions[i].stop)
	}
	holder := sessions[0]
	if got := e.visitGo(t, holder.user); got != holder.node {
		t.Errorf("%s, with an IDLE session on %s, went to %s after the reload: split", holder.user, e.names[holder.node], e.names[got])
	}
	if got := e.visitGo(t, movers[1]); got != 3 {
		t.Errorf("%s (no session) went to %s after the reload, want the new %s", movers[1], e.names[got], e.names[3])
	}
	for _, u := range stayers[3:] {
		if got := e.visitGo(t, u); got != before[u] {
			t.Errorf("%s moved from %s to %s when a server was added", u, e.names[before[u]], e.names[got])
		}
	}
	for _, h := range sessions {
		h.stop()
		if err := h.c.Logout().Wait(); err != nil {
			t.Errorf("LOGOUT as %s after the reload: %v", h.user, err)
		}
	}
	e.waitSessions(t, holder.user, 0)
	e.waitRoute(t, holder.user, e.names[3], affinity+2*time.Second)
	if got := e.visitGo(t, holder.user); got != 3 {
		t.Errorf("%s after its session and affinity went to %s, want the new %s", holder.user, e.names[got], e.names[3])
	}
}

// TestPoolNoneUp: with every server down, a login is answered NO
// [UNAVAILABLE] at once without dialing (so no credentials go anywhere) and is
// not counted by the policy: more of them than max_auth_failures_per_connection
// leave the connection open and the source with no failures.
func TestPoolNoneUp(t *testing.T) {
	e := startPoolEnv(t, 2, 0, nil)
	e.runChecks(t)
	for _, d := range e.nodes {
		d.Kill()
	}
	for _, name := range e.names {
		e.waitState(t, name, "down", poolFall*poolCheckInterval+time.Second)
	}
	const src = "127.0.0.77"
	c := dialRawFrom(t, src, e.implicit, e.clientTLS())
	greeting(t, c)
	for i := range e.cfg.Limits.MaxAuthFailuresPerConnection + 2 {
		start := time.Now()
		tag := fmt.Sprintf("a%d", i)
		c.send(tag + " LOGIN user01 " + e.users["user01"] + "\r\n")
		if l, _ := c.expect(tag + " "); !strings.HasPrefix(l, tag+" NO [UNAVAILABLE]") {
			t.Fatalf("login with no server up = %q, want NO [UNAVAILABLE]", l)
		}
		if took := time.Since(start); took > 500*time.Millisecond {
			t.Errorf("login with no server up answered after %v, want at once", took)
		}
	}
	c.send("n NOOP\r\n")
	c.expect("n OK")
	if got := e.lim.Source(netip.MustParseAddr(src)); got.Failures != 0 || got.Ban != nil {
		t.Errorf("policy after logins with no server up: %+v, want no failures, no ban", got)
	}
	line := e.waitLog(t, "msg=auth", "user=user01", "outcome=error")
	if !strings.Contains(line, "no backend server up") || strings.Contains(line, "backend=") {
		t.Errorf("auth line %q, want reason no backend server up and no backend named", line)
	}
	e.assertNoPasswords(t)
}

// unlabeled returns the value of a counter or gauge without labels; -1 when
// the family is absent.
func unlabeled(t *testing.T, reg *prometheus.Registry, family string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == family && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return -1
}

// assertNoPasswords checks the gateway's log for the pool users' passwords
// and has an auth line.
func (e *poolEnv) assertNoPasswords(t *testing.T) {
	t.Helper()
	logs := e.logs.String()
	for user, p := range e.users {
		if strings.Contains(logs, p) || strings.Contains(logs, b64(p)) {
			t.Errorf("the log contains %s's password", user)
		}
	}
	if !strings.Contains(logs, "msg=auth") {
		t.Errorf("the log has no auth line")
	}
}
