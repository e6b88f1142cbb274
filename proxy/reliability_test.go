package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
)

// TestBackendKilled: Dovecot killed (SIGKILL, no BYE) under relayed sessions in
// several states. Every client connection ends within 2 s; a login while it is
// down gets NO [UNAVAILABLE] at once and the session goes on; once Dovecot is
// back that same session logs in, new sessions work, and a message appended
// before the crash is still there.
func TestBackendKilled(t *testing.T) {
	d := startDovecot(t)
	g := startGateway(t, d.Addr, func(c *conf.Config) { c.Backend.ConnectTimeout = conf.D(time.Second) })
	base := runtime.NumGoroutine()
	msg := testbed.Message(4 << 20)

	idle := loggedIn(t, g)
	idle.send("i1 SELECT INBOX\r\n")
	idle.until("i1 OK")
	appended := loggedIn(t, g)
	appended.send(fmt.Sprintf("p1 APPEND INBOX {%d+}\r\n%s\r\n", len(msg), msg))
	appended.until("p1 OK")
	inIdle := loggedIn(t, g)
	inIdle.send("q1 SELECT INBOX\r\nq2 IDLE\r\n")
	inIdle.until("q1 OK")
	inIdle.expect("+")
	fetching := loggedIn(t, g)
	fetching.send("f1 SELECT INBOX\r\nf2 FETCH 1:* BODY.PEEK[]\r\n")
	fetching.until("f1 OK")
	fetching.until("* 1 FETCH") // a 4 MB literal is on its way, unread
	appending := loggedIn(t, g)
	appending.send(fmt.Sprintf("a1 APPEND INBOX {%d+}\r\n%s", len(msg), msg[:len(msg)/2])) // half a literal
	preauth := dialRaw(t, g.implicit, g.clientTLS())
	greeting(t, preauth)

	d.Kill()
	killed := time.Now()
	for name, c := range map[string]*rawClient{"selected": idle, "after an APPEND": appended, "in IDLE": inIdle, "mid-FETCH": fetching, "mid-APPEND": appending} {
		if dur := closedAfter(c.conn, 5*time.Second); dur < 0 || time.Since(killed) > 2*time.Second {
			t.Errorf("%s session: client connection still open %v after the backend died", name, time.Since(killed).Round(time.Millisecond))
		}
	}
	start := time.Now()
	preauth.send("b1 LOGIN alice alice-secret\r\n")
	preauth.expect("b1 NO [UNAVAILABLE]")
	if dur := time.Since(start); dur > 500*time.Millisecond {
		t.Errorf("login with the backend down answered after %v, want at once", dur)
	}
	preauth.send("b2 NOOP\r\n")
	preauth.expect("b2 OK")

	d.Start()
	preauth.send("b3 LOGIN alice alice-secret\r\nb4 SELECT INBOX\r\n")
	preauth.expect("b3 OK")
	_, untagged := preauth.expect("b4 OK")
	if !strings.Contains(strings.Join(untagged, "\n"), "* 1 EXISTS") {
		t.Errorf("after the restart SELECT INBOX says %q, want the message appended before the crash (1 EXISTS)", untagged)
	}
	assertServesAs(t, g, "bob", testPasswords["bob"])
	preauth.send("b5 LOGOUT\r\n")
	preauth.until("b5 OK")
	preauth.expectClosed()
	waitNoSessions(t, g)
	settleGoroutines(t, base, 5)
}

// TestBackendMisbehaves: a backend that greets and then stalls, speaks
// something else, hangs up, says BYE or floods a line. Each login gets
// NO [UNAVAILABLE] (after connect_timeout or login_timeout at worst), the reason is logged, and
// the client's session goes on.
func TestBackendMisbehaves(t *testing.T) {
	const connectTimeout = 700 * time.Millisecond
	cases := []struct {
		name   string
		serve  func(c net.Conn, br *bufio.Reader)
		within time.Duration
		log    string // in the auth line's reason
	}{
		{"greets, never answers the login", func(c net.Conn, br *bufio.Reader) {
			io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n")
			io.Copy(io.Discard, br)
		}, connectTimeout + 500*time.Millisecond, "timeout"},
		{"not IMAP", func(c net.Conn, br *bufio.Reader) {
			io.WriteString(c, "SSH-2.0-OpenSSH_9.2\r\n")
		}, 300 * time.Millisecond, "greeting"},
		{"hangs up after the greeting", func(c net.Conn, br *bufio.Reader) {
			io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n")
			br.ReadString('\n')
		}, 300 * time.Millisecond, "EOF"},
		{"BYE instead of a greeting", func(c net.Conn, br *bufio.Reader) {
			io.WriteString(c, "* BYE too busy\r\n")
		}, 300 * time.Millisecond, "greeting"},
		{"an endless line", func(c net.Conn, br *bufio.Reader) {
			io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n")
			br.ReadString('\n')
			io.WriteString(c, "* OK "+strings.Repeat("x", 1<<20))
			io.Copy(io.Discard, br)
		}, connectTimeout, "too long"},
		{"a 2 GB literal in the login reply", func(c net.Conn, br *bufio.Reader) {
			io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n")
			br.ReadString('\n')
			io.WriteString(c, "* OK {2147483648}\r\n")
			io.Copy(io.Discard, br)
		}, connectTimeout, "too long"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			be := fakeBackend(t, tc.serve)
			g := startGateway(t, be, func(c *conf.Config) {
				c.Backend.ConnectTimeout = conf.D(connectTimeout)
				c.Backend.LoginTimeout = conf.D(connectTimeout)
				c.Backend.ClientIP = conf.ClientIPNone
			})
			c := dialRaw(t, g.implicit, g.clientTLS())
			greeting(t, c)
			start := time.Now()
			c.send("a LOGIN alice alice-secret\r\n")
			c.expect("a NO [UNAVAILABLE]")
			if d := time.Since(start); d > tc.within {
				t.Errorf("answered after %v, want within %v", d, tc.within)
			}
			if !strings.Contains(authLine(g.logs.String()), tc.log) {
				t.Errorf("auth log line %q does not give the reason (%q)", authLine(g.logs.String()), tc.log)
			}
			c.send("b NOOP\r\n")
			c.expect("b OK")
		})
	}
}

// fakeBackend serves every connection with serve, then closes it.
func fakeBackend(t *testing.T, serve func(net.Conn, *bufio.Reader)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
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
			go func() {
				defer c.Close()
				serve(c, bufio.NewReader(c))
			}()
		}
	}()
	return ln.Addr().String()
}

// authLine is the first auth log line.
func authLine(logs string) string {
	for l := range strings.Lines(logs) {
		if strings.Contains(l, "msg=auth") {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// loggedIn opens a session logged in as alice.
func loggedIn(t *testing.T, g *gateway) *rawClient {
	t.Helper()
	c := dialRaw(t, g.implicit, g.clientTLS())
	greeting(t, c)
	c.send("l LOGIN alice alice-secret\r\n")
	c.expect("l OK")
	return c
}

func assertServesAs(t *testing.T, g *gateway, user, pass string) {
	t.Helper()
	c := dialRaw(t, g.implicit, g.clientTLS())
	greeting(t, c)
	c.send("ok1 LOGIN " + user + " " + quote(pass) + "\r\nok2 SELECT INBOX\r\n")
	c.expect("ok1 OK")
	c.until("ok2 OK")
	c.conn.Close()
}
