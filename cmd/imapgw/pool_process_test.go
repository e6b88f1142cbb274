package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imapgw/imapgw/admin"
	"github.com/imapgw/imapgw/internal/testbed"
)

// poolEnv is a real `imapgw run` in front of two real Dovecots, imap1 and
// imap2, driven by the CLI as an operator would.
type poolEnv struct {
	dir      string // holds the config file and state
	p        *process
	dovecots map[string]*testbed.Dovecot
}

// startPoolEnv starts two independent Dovecots (the same accounts; no shared
// mail: this test is about routing, not mail) and the gateway in front.
func startPoolEnv(t *testing.T) *poolEnv {
	t.Helper()
	d1 := testbed.StartDovecot(t, testbed.DovecotOptions{})
	d2 := testbed.StartDovecot(t, testbed.DovecotOptions{})
	e := &poolEnv{dir: t.TempDir(), dovecots: map[string]*testbed.Dovecot{"imap1": d1, "imap2": d2}}
	e.writeConfig(t, fmt.Sprintf("[[backend.server]]\nname = \"imap1\"\naddress = %q\n\n[[backend.server]]\nname = \"imap2\"\naddress = %q\n", d1.Addr, d2.Addr))
	e.p = startProcess(t, e.path())
	return e
}

func (e *poolEnv) path() string { return filepath.Join(e.dir, "imapgw.toml") }

// writeConfig writes the gateway's config with these [[backend.server]]
// tables. Checks every 100 ms, one verdict enough: the servers are up within
// a check of the start, and the tests wait on that state, never on a timer.
func (e *poolEnv) writeConfig(t *testing.T, servers string) {
	t.Helper()
	text := fmt.Sprintf(`[server]
hostname = "localhost"
state_dir = %q

[[listen]]
address = "127.0.0.1:0"
tls = "implicit"

[tls]
certificate = "self-signed"
names = ["127.0.0.1"]

[backend]
client_ip = "none"
check_interval = "100ms"
check_timeout = "2s"
fall = 1
rise = 1

%s
[bans]
allow = ["127.0.0.0/8"]
failure_delay = "0s"

[admin]
address = "127.0.0.1:0"
`, filepath.Join(e.dir, "state"), servers)
	must(t, os.WriteFile(e.path(), []byte(text), 0o600))
}

// cli runs an imapgw command against the process's admin endpoint.
func (e *poolEnv) cli(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(append(args, "-admin", e.p.admin), &out, &errb)
	return code, out.String(), errb.String()
}

// cliJSON runs a command with -json, fails the test unless it exits 0, and
// decodes its output into v.
func (e *poolEnv) cliJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	code, out, errOut := e.cli(append(args, "-json")...)
	if code != 0 {
		t.Fatalf("imapgw %s -json = %d: %s", strings.Join(args, " "), code, errOut)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("imapgw %s -json: output is not the JSON expected (%v):\n%s", strings.Join(args, " "), err, out)
	}
}

func (e *poolEnv) backends(t *testing.T) map[string]admin.BackendInfo {
	t.Helper()
	var list []admin.BackendInfo
	e.cliJSON(t, &list, "backends", "list")
	m := map[string]admin.BackendInfo{}
	for _, b := range list {
		m[b.Name] = b
	}
	return m
}

func (e *poolEnv) where(t *testing.T, user string) admin.UserInfo {
	t.Helper()
	var u admin.UserInfo
	e.cliJSON(t, &u, "users", "where", user)
	return u
}

// logins counts user's logins in each Dovecot's log.
func (e *poolEnv) logins(user string) map[string]int {
	n := map[string]int{}
	for name, d := range e.dovecots {
		n[name] = strings.Count(d.Log(), "Login: user=<"+user+">")
	}
	return n
}

// login logs user in through the gateway and returns the session and the
// server whose Dovecot logged the login.
func (e *poolEnv) login(t *testing.T, user string) (*poolSession, string) {
	t.Helper()
	before, open := e.logins(user), e.where(t, user).Open
	s, err := dialPoolSession(e.p.imaps, user, e.dovecots["imap1"].Users[user])
	if err != nil {
		t.Fatalf("login of %s through the gateway: %v", user, err)
	}
	t.Cleanup(func() { s.conn.Close() })
	var on string
	e.p.eventually(t, "a Dovecot to log the login of "+user, func() bool {
		for name, n := range e.logins(user) {
			if n > before[name] {
				on = name
				return true
			}
		}
		return false
	})
	// The client has its OK a moment before the pool counts the session
	// (proxy answers, then starts the relay); a kick in between would miss
	// it, so wait until the pool knows it.
	e.p.eventually(t, "the pool to count the session of "+user, func() bool {
		return e.where(t, user).Open > open
	})
	return s, on
}

// poolSession is a logged-in client session through the gateway.
type poolSession struct {
	conn *tls.Conn
	br   *bufio.Reader
}

func dialPoolSession(addr, user, pass string) (*poolSession, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return nil, err
	}
	s := &poolSession{conn: c, br: bufio.NewReader(c)}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := readUntil(s.br, "* OK"); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := fmt.Fprintf(c, "a LOGIN %s %s\r\n", user, imapQuote(pass)); err != nil {
		c.Close()
		return nil, err
	}
	if err := readUntil(s.br, "a OK"); err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}

func imapQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// noop checks the session still relays.
func (s *poolSession) noop() error {
	s.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(s.conn, "n NOOP\r\n"); err != nil {
		return err
	}
	return readUntil(s.br, "n OK")
}

// waitClosed waits up to 10 s for the gateway to close the session: the
// read ends with EOF or a reset, not the deadline. Bytes the server had
// sent before (none expected) are skipped.
func (s *poolSession) waitClosed() error {
	s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, err := s.br.ReadString('\n'); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return fmt.Errorf("still open after 10 s")
			}
			return nil
		}
	}
}

func other(name string) string {
	if name == "imap1" {
		return "imap2"
	}
	return "imap1"
}

// TestBackendPoolCLIProcess (issue 12): the real process, two real Dovecots,
// the operator's commands: backends list shows both up; drain sends new
// logins elsewhere while sessions there go on; drain -kick closes them;
// users where names the server a login then really reaches; users move and
// users kick close the user's sessions, move pins it; -json parses.
func TestBackendPoolCLIProcess(t *testing.T) {
	e := startPoolEnv(t)

	e.p.eventually(t, "imapgw backends list to show both servers checked and up", func() bool {
		m := e.backends(t)
		return m["imap1"].State == "up" && m["imap2"].State == "up" &&
			!m["imap1"].LastCheck.IsZero() && !m["imap2"].LastCheck.IsZero()
	})
	m := e.backends(t)
	for name, d := range e.dovecots {
		if b := m[name]; b.Address != d.Addr || b.Weight != 100 || b.LastCheck.IsZero() || b.LastError != "" || len(b.Capabilities) == 0 {
			t.Errorf("backends list: %s = %+v, want %s, weight 100, checked, capabilities", name, b, d.Addr)
		}
	}
	code, out, errOut := e.cli("backends", "list")
	if code != 0 || !strings.Contains(out, "BACKEND") || strings.Count(out, " up ") != 2 {
		t.Errorf("imapgw backends list = %d %s\n%s, want a table with both up", code, errOut, out)
	}

	// users where says where a login goes; the login really goes there.
	u := e.where(t, "alice")
	if u.Backend == "" || u.Reason == "" {
		t.Fatalf("users where alice = %+v, want a server and a reason", u)
	}
	home := u.Backend
	alice, on := e.login(t, "alice")
	if on != home {
		t.Fatalf("alice logged in on %s; users where said %s", on, home)
	}
	if u := e.where(t, "alice"); u.Backend != home || u.Open != 1 || len(u.Sessions) != 1 {
		t.Errorf("users where alice with a session open = %+v, want %s and its session", u, home)
	}

	// Drain alice's server: alice's session goes on; a user with none goes to
	// the other server.
	code, out, errOut = e.cli("backends", "drain", home)
	if code != 0 || !strings.Contains(out, "draining "+home) {
		t.Fatalf("imapgw backends drain %s = %d %s%s", home, code, out, errOut)
	}
	if b := e.backends(t)[home]; b.State != "draining" {
		t.Errorf("after drain: %s state %q, want draining", home, b.State)
	}
	if err := alice.noop(); err != nil {
		t.Errorf("alice's session on the drained %s: %v", home, err)
	}
	for _, user := range []string{"bob", "demo"} {
		if u := e.where(t, user); u.Backend != other(home) {
			t.Errorf("users where %s with %s drained = %+v, want %s", user, home, u, other(home))
		}
		if _, on := e.login(t, user); on != other(home) {
			t.Errorf("%s logged in on %s with %s drained", user, on, home)
		}
	}
	var dr admin.DrainResult
	e.cliJSON(t, &dr, "backends", "undrain", home)
	if dr.Status != "undrained" || dr.Backend != home {
		t.Errorf("backends undrain -json = %+v", dr)
	}
	if b := e.backends(t)[home]; b.State != "up" {
		t.Errorf("after undrain: %s state %q, want up", home, b.State)
	}
	code, _, errOut = e.cli("backends", "drain", "nope")
	if code != 1 || !strings.Contains(errOut, `no backend server named "nope"`) || !strings.Contains(errOut, "404") {
		t.Errorf("imapgw backends drain nope = %d %q, want 1 and a clear error", code, errOut)
	}

	// Move alice to the other server: its session is closed, it is pinned
	// there, and its next login goes there.
	var mv admin.UserResult
	e.cliJSON(t, &mv, "users", "move", "alice", other(home))
	if mv.Status != "moved" || mv.Backend != other(home) || mv.Closed != 1 {
		t.Errorf("users move alice %s -json = %+v, want 1 session closed", other(home), mv)
	}
	if err := alice.waitClosed(); err != nil {
		t.Errorf("alice's session after the move: %v", err)
	}
	if u := e.where(t, "alice"); u.Backend != other(home) || u.Pinned != other(home) {
		t.Errorf("users where alice after the move = %+v, want pinned to %s", u, other(home))
	}
	alice2, on := e.login(t, "alice")
	if on != other(home) {
		t.Errorf("alice logged in on %s after the move to %s", on, other(home))
	}
	code, out, errOut = e.cli("users", "where", "alice")
	if code != 0 || !strings.Contains(out, "next login") || !strings.Contains(out, other(home)) || !strings.Contains(out, "SESSION") {
		t.Errorf("imapgw users where alice = %d %s\n%s", code, errOut, out)
	}
	code, _, errOut = e.cli("users", "move", "alice", "nope")
	if code != 1 || !strings.Contains(errOut, `"nope"`) {
		t.Errorf("imapgw users move alice nope = %d %q, want 1 and a clear error", code, errOut)
	}

	// Kick closes alice's sessions, and only hers.
	code, out, errOut = e.cli("users", "kick", "alice")
	if code != 0 || !strings.Contains(out, "kicked alice (1 session closed)") {
		t.Errorf("imapgw users kick alice = %d %s%s", code, out, errOut)
	}
	if err := alice2.waitClosed(); err != nil {
		t.Errorf("alice's session after the kick: %v", err)
	}
	e.p.eventually(t, "users where alice to show no session", func() bool {
		u := e.where(t, "alice")
		return u.Open == 0 && len(u.Sessions) == 0
	})

	// drain -kick closes the sessions on the server.
	bob, on := e.login(t, "bob")
	e.cliJSON(t, &dr, "backends", "drain", on, "-kick")
	if dr.Status != "draining" || !dr.Kick {
		t.Errorf("backends drain %s -kick -json = %+v", on, dr)
	}
	if err := bob.waitClosed(); err != nil {
		t.Errorf("bob's session on %s after drain -kick: %v", on, err)
	}
}

// TestBackendPoolReloadProcess: SIGHUP reloads the pool the gateway owns:
// a reweighted server and a new one show in backends list, the new one,
// which nothing answers at, goes down with its error; a session stays up.
func TestBackendPoolReloadProcess(t *testing.T) {
	e := startPoolEnv(t)
	e.p.eventually(t, "both servers up", func() bool {
		m := e.backends(t)
		return m["imap1"].State == "up" && m["imap2"].State == "up"
	})
	alice, on := e.login(t, "alice")

	// A port nothing listens on: bound, then closed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	e.writeConfig(t, fmt.Sprintf(`[[backend.server]]
name = "imap1"
address = %q
weight = 300

[[backend.server]]
name = "imap2"
address = %q

[[backend.server]]
name = "imap3"
address = %q
`, e.dovecots["imap1"].Addr, e.dovecots["imap2"].Addr, dead))
	e.p.signal(t, syscall.SIGHUP)
	e.p.waitLog(t, "configuration reloaded", 1)
	e.p.eventually(t, "backends list to show the reload and imap3 down", func() bool {
		m := e.backends(t)
		return len(m) == 3 && m["imap1"].Weight == 300 && m["imap3"].State == "down" && m["imap3"].LastError != ""
	})
	code, out, errOut := e.cli("status")
	if code != 0 || !strings.Contains(out, "imap3") || !strings.Contains(out, dead) || !strings.Contains(out, "down") {
		t.Errorf("imapgw status after the reload = %d %s\n%s, want imap3 down", code, errOut, out)
	}
	if err := alice.noop(); err != nil {
		t.Errorf("alice's session on %s across the reload: %v", on, err)
	}
	if b := e.backends(t)[on]; b.Sessions != 1 {
		t.Errorf("%s after the reload: %d sessions, want alice's 1", on, b.Sessions)
	}
}
