package testbed

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// StartDovecotCluster starts n Dovecot instances that share one mail root and
// one passwd-file, as a cluster on shared storage does (same mail_location
// root, same users), each with its own ports, base_dir, state and log, and
// otherwise the settings StartDovecot gives one instance (o applies to all;
// with TLS they share one CA). Each instance's log tells which users logged in
// there (Dovecot.Logins). Kill one to simulate a crash; Start brings it back
// on the same ports.
func StartDovecotCluster(t testing.TB, n int, o DovecotOptions) []*Dovecot {
	t.Helper()
	Need(t, "dovecot")
	if o.Users == nil {
		o.Users = DefaultUsers()
	}
	if o.TLS && o.CA == nil {
		o.CA = NewCA(t)
	}
	shared, err := os.MkdirTemp("", "dovecot-shared")
	if err != nil {
		t.Fatalf("creating the shared mail directory: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	// Reachable by Dovecot's unprivileged processes, as in makeDir.
	for name, perm := range map[string]os.FileMode{"": 0o755, "mail": 0o777} {
		p := filepath.Join(shared, name)
		if err := os.MkdirAll(p, perm); err != nil {
			t.Fatalf("creating %s: %v", p, err)
		}
		if err := os.Chmod(p, perm); err != nil {
			t.Fatalf("chmod %s: %v", p, err)
		}
	}
	writeFile(t, filepath.Join(shared, "passwd"), passwdFile(t, o.Users), 0o644)
	o.shared = shared
	nodes := make([]*Dovecot, n)
	for i := range nodes {
		nodes[i] = StartDovecot(t, o)
	}
	return nodes
}

// Logins returns the user of every successful login this instance logged
// ("imap-login: Info: Login: user=<alice>, method=PLAIN, rip=…"), in order.
func (d *Dovecot) Logins() []string {
	var users []string
	for line := range strings.Lines(d.Log()) {
		_, rest, ok := strings.Cut(line, "imap-login: Info: Login: user=<")
		if !ok {
			continue
		}
		if user, _, ok := strings.Cut(rest, ">"); ok {
			users = append(users, user)
		}
	}
	return users
}

// LoginCount returns how many successful logins of user this instance logged.
func (d *Dovecot) LoginCount(user string) int {
	n := 0
	for _, u := range d.Logins() {
		if u == user {
			n++
		}
	}
	return n
}

// WaitLogins waits up to timeout until this instance has logged at least n
// successful logins of user, and fails the test otherwise. Dovecot writes its
// log through a separate process, a little after the reply.
func (d *Dovecot) WaitLogins(t testing.TB, user string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for d.LoginCount(user) < n {
		if time.Now().After(deadline) {
			t.Fatalf("dovecot %s: %d logins of %q logged within %v, want %d\n%s", d.Addr, d.LoginCount(user), user, timeout, n, d.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// StartSilentServer listens on a loopback port, accepts every connection and
// never sends a byte: a server whose IMAP process hangs before its greeting.
// Connections are held open until the test ends. It returns the address.
func StartSilentServer(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("silent server: %v", err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}
