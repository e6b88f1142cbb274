package proxy_test

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
)

// policyConfig makes loopback sources count: bans.allow covers only ::1.
func policyConfig(state string) func(*conf.Config) {
	return func(c *conf.Config) {
		c.Server.StateDir = state
		c.Bans.Allow = nil
		c.Bans.SourceFailures = 5
		c.Bans.FailureDelay = conf.D(200 * time.Millisecond)
		c.Limits.MaxAuthFailuresPerConnection = 3
	}
}

// attack logs in from src with wrong passwords, reconnecting as the gateway
// hangs up, until the gateway refuses the connection itself; it returns how
// many logins were answered. It runs in its own goroutine, so it reports with
// t.Errorf and returns rather than calling t.Fatal.
func attack(t *testing.T, g *gateway, src, user string, max int) int {
	tries := 0
	for tries < max {
		c, ok := tryDial(t, src, g)
		if !ok {
			return tries
		}
		for {
			c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := fmt.Fprintf(c.conn, "a%d LOGIN %s wrong-%d\r\n", tries, user, tries); err != nil {
				break // the gateway hung up after its BYE
			}
			l := c.untilErr("a")
			if l == "" {
				break
			}
			tries++
			if !strings.HasPrefix(l, fmt.Sprintf("a%d NO", tries-1)) {
				t.Errorf("attack reply = %q, want NO", l)
				return tries
			}
			if strings.Contains(l, "UNAVAILABLE") {
				break
			}
		}
	}
	return tries
}

// tryDial connects with TLS from src; false when the gateway closes the
// connection before the handshake (a refused source) or right after it.
func tryDial(t *testing.T, src string, g *gateway) (*rawClient, bool) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	conn, err := d.Dial("tcp", g.implicit)
	if err != nil {
		if !isReset(err) {
			t.Errorf("dial from %s: %v", src, err)
		}
		return nil, false
	}
	t.Cleanup(func() { conn.Close() })
	tc := tlsClient(conn, g.clientTLS())
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		return nil, false
	}
	c := &rawClient{t: t, conn: tc, br: newReader(tc)}
	if l := c.untilErr("* OK"); l == "" {
		return nil, false
	}
	return c, true
}

// untilErr is until that returns "" when the connection ends instead of failing.
func (c *rawClient) untilErr(prefix string) string {
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		l, err := c.br.ReadString('\n')
		if err != nil {
			return ""
		}
		if strings.HasPrefix(l, prefix) {
			return strings.TrimRight(l, "\r\n")
		}
	}
}

// loginTime logs in as user from src and returns how long the login took.
func loginTime(t *testing.T, g *gateway, src, user string) time.Duration {
	t.Helper()
	c := dialRawFrom(t, src, g.implicit, g.clientTLS())
	greeting(t, c)
	start := time.Now()
	c.send("L LOGIN " + user + " " + quote(testPasswords[user]) + "\r\n")
	l, _ := c.expect("L ")
	d := time.Since(start)
	if !strings.HasPrefix(l, "L OK") {
		t.Fatalf("login as %s from %s = %q, want OK", user, src, l)
	}
	c.send("Z LOGOUT\r\n")
	return d
}

// TestBanAgainstDovecot: an attacker is banned after source_failures and then
// refused before any TLS byte; a user at another address logs in during and
// after the attack without delay; the ban survives a restart.
func TestBanAgainstDovecot(t *testing.T) {
	d := testbed.StartDovecot(t, testbed.DovecotOptions{AuthFailureDelay: -1})
	state := t.TempDir()
	g := startGateway(t, d.Addr, policyConfig(state))

	before := loginTime(t, g, "127.0.0.8", "alice")
	done := make(chan int)
	go func() { done <- attack(t, g, "127.0.0.7", "alice", 50) }()
	var during []time.Duration
	for i := 0; i < 3; i++ {
		during = append(during, loginTime(t, g, "127.0.0.8", "alice"))
	}
	tries := <-done
	if tries != 5 {
		t.Errorf("the attacker had %d logins answered, want exactly source_failures = 5", tries)
	}
	after := loginTime(t, g, "127.0.0.8", "alice")
	for _, dd := range append(during, after) {
		if dd > before+500*time.Millisecond {
			t.Errorf("the legitimate user's login took %v during/after the attack, %v before", dd, before)
		}
	}
	expectRefused(t, "127.0.0.7", g.implicit)
	if !strings.Contains(g.logs.String(), "outcome=failed") || !strings.Contains(g.logs.String(), "source banned") {
		t.Errorf("the log lacks the failed logins or the ban")
	}
	// Dovecot saw the attacker's own address, so it penalizes that one only.
	d.WaitLog(t, "rip=127.0.0.7", time.Second)
	assertNoPasswords(t, g.logs.String())

	// A restart: a new gateway on the same state directory still refuses it.
	if err := g.lim.Save(); err != nil {
		t.Fatal(err)
	}
	g2 := startGateway(t, d.Addr, policyConfig(state))
	expectRefused(t, "127.0.0.7", g2.implicit)
	loginTime(t, g2, "127.0.0.8", "alice")
}

// TestDistributedAttackOnOneAccount: 30 sources fail once each on alice; the
// account is protected, yet alice still logs in from her known-good address,
// while a new source is refused without the backend hearing of it.
func TestDistributedAttackOnOneAccount(t *testing.T) {
	d := testbed.StartDovecot(t, testbed.DovecotOptions{AuthFailureDelay: -1})
	g := startGateway(t, d.Addr, func(c *conf.Config) {
		policyConfig(t.TempDir())(c)
		c.Bans.AccountFailures = 10
		c.Bans.FailureDelay = conf.D(0)
	})
	loginTime(t, g, "127.0.0.8", "alice") // known-good from 127.0.0.0/24
	for i := 1; i <= 30; i++ {
		src := fmt.Sprintf("127.0.1.%d", i)
		c, ok := tryDial(t, src, g)
		if !ok {
			t.Fatalf("source %s refused at accept", src)
		}
		c.send("a LOGIN alice wrong-" + src + "\r\n")
		c.expect("a NO")
		c.send("z LOGOUT\r\n")
	}
	loginTime(t, g, "127.0.0.8", "alice")
	loginTime(t, g, "127.0.0.9", "alice") // same /24: known-good too

	c, _ := tryDial(t, "127.0.2.5", g)
	c.send("b LOGIN alice " + quote(testPasswords["alice"]) + "\r\n")
	first := c.until("b ")
	c.send("c LOGIN alice " + quote(testPasswords["alice"]) + "\r\n")
	second := c.until("c ")
	// The protected account lets unknown sources share one attempt a minute.
	if !strings.Contains(first+second, "NO [UNAVAILABLE]") {
		t.Errorf("an unknown source's logins to a protected account = %q, %q; want one refused with NO [UNAVAILABLE]", first, second)
	}
	if !strings.Contains(g.logs.String(), "outcome=refused") {
		t.Errorf("no refused auth line in the log")
	}
}
