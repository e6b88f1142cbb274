package proxy_test

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
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
// names the first configured of them (all when configured is 0) imap1….
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
		c.Backend.CheckTimeout = conf.D(time.Second)
		c.Backend.Fall, c.Backend.Rise = poolFall, 2
		c.Backend.ConnectTimeout = conf.D(poolConnect)
		c.Backend.Affinity = conf.D(time.Second)
		if edit != nil {
			edit(c)
		}
	})
	e.runChecks(t)
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
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	conn, err := d.Dial("tcp", e.implicit)
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	c := imapclient.New(tls.Client(conn, e.clientTLS()), nil)
	t.Cleanup(func() { c.Close() })
	return c
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
	c, node := e.loginGo(t, user)
	if err := c.Logout().Wait(); err != nil {
		t.Fatalf("LOGOUT as %s = %v", user, err)
	}
	c.Close()
	e.waitSessions(t, user, 0)
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
	e.runImaplib(t, users)
	for _, u := range users {
		e.nodes[hashed[u]].WaitLogins(t, u, 3, 5*time.Second)
		for i, d := range e.nodes {
			if i != hashed[u] && d.LoginCount(u) != 0 {
				t.Errorf("%s logged in %d times on %s, want only %s", u, d.LoginCount(u), e.names[i], e.names[hashed[u]])
			}
		}
		if !strings.Contains(e.logs.String(), fmt.Sprintf("user=%s mech=", u)) {
			t.Errorf("no auth line for %s", u)
		}
	}
	for _, name := range e.names {
		if !strings.Contains(e.logs.String(), "outcome=ok backend="+name) {
			t.Errorf("no auth line names backend=%s", name)
		}
	}
	assertNoPasswords(t, e.logs.String())
}
