package proxy_test

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
)

// TestLoginTimeout: once the credentials are sent, the backend has
// login_timeout to answer, not connect_timeout (issue 10: Dovecot answers an
// attacker after up to 17 s). Silence past login_timeout is its own outcome,
// "timeout", logged as "login reply timeout"; the client gets NO [UNAVAILABLE]
// and its session goes on. The greeting stays bounded by connect_timeout.
func TestLoginTimeout(t *testing.T) {
	const short, long = 400 * time.Millisecond, 5 * time.Second
	const caps = "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n"
	cases := []struct {
		name           string
		serve          func(c net.Conn, br *bufio.Reader)
		connect, login time.Duration
		min, max       time.Duration
		reply, outcome string
		reason         string // in the auth line
	}{
		{"credentials never answered", func(c net.Conn, br *bufio.Reader) {
			io.WriteString(c, caps)
			io.Copy(io.Discard, br)
		}, long, short, short, short + 700*time.Millisecond, "a NO [UNAVAILABLE]", "timeout", `reason="login reply timeout"`},
		{"continuation answered, then silence", func(c net.Conn, br *bufio.Reader) {
			io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN LOGINDISABLED] hi\r\n")
			if l, _ := br.ReadString('\n'); l == "gwl AUTHENTICATE PLAIN\r\n" {
				io.WriteString(c, "+ \r\n")
			}
			io.Copy(io.Discard, br)
		}, long, short, short, short + 700*time.Millisecond, "a NO [UNAVAILABLE]", "timeout", `reason="login reply timeout"`},
		{"failure answered after connect_timeout", func(c net.Conn, br *bufio.Reader) {
			io.WriteString(c, caps)
			br.ReadString('\n')
			time.Sleep(3 * short) // Dovecot's failure delay and penalty, shortened
			io.WriteString(c, "gwl NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
			io.Copy(io.Discard, br)
		}, short, long, 3 * short, 3*short + time.Second, "a NO [AUTHENTICATIONFAILED]", "failed", "AUTHENTICATIONFAILED"},
		{"greeting late", func(c net.Conn, br *bufio.Reader) {
			time.Sleep(3 * short)
			io.WriteString(c, caps)
			io.Copy(io.Discard, br)
		}, short, long, short, short + 700*time.Millisecond, "a NO [UNAVAILABLE]", "error", "greeting"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			be := fakeBackend(t, tc.serve)
			g := startGateway(t, be, func(c *conf.Config) {
				c.Backend.ConnectTimeout = conf.D(tc.connect)
				c.Backend.LoginTimeout = conf.D(tc.login)
				c.Backend.ClientIP = conf.ClientIPNone
			})
			c := dialRaw(t, g.implicit, g.clientTLS())
			greeting(t, c)
			start := time.Now()
			c.send("a LOGIN alice alice-secret\r\n")
			c.expect(tc.reply)
			if d := time.Since(start); d < tc.min || d > tc.max {
				t.Errorf("answered after %v, want %v to %v", d, tc.min, tc.max)
			}
			line := authLine(g.logs.String())
			if !strings.Contains(line, "outcome="+tc.outcome+" ") || !strings.Contains(line, tc.reason) {
				t.Errorf("auth line %q, want outcome=%s and %s", line, tc.outcome, tc.reason)
			}
			for _, o := range []string{"ok", "failed", "rejected", "refused", "error", "timeout"} {
				want := 0.0
				if o == tc.outcome {
					want = 1
				}
				if got := loginsTotal(t, g, o); got != want {
					t.Errorf("imapgw_logins_total{outcome=%q} = %v, want %v", o, got, want)
				}
			}
			c.send("b NOOP\r\n") // the session goes on
			c.expect("b OK")
			assertNoPasswords(t, g.logs.String())
		})
	}
}

// TestRejectedOutcome: a NO with a code other than AUTHENTICATIONFAILED (here
// EXPIRED) reaches the client as it is, is logged and counted as "rejected",
// and is no failure in the policy's eyes.
func TestRejectedOutcome(t *testing.T) {
	be := fakeBackend(t, func(c net.Conn, br *bufio.Reader) {
		io.WriteString(c, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n")
		for {
			if _, err := br.ReadString('\n'); err != nil {
				return
			}
			io.WriteString(c, "gwl NO [EXPIRED] Password expired\r\n")
		}
	})
	g := startGateway(t, be, func(c *conf.Config) {
		c.Backend.ClientIP = conf.ClientIPNone
		c.Bans.Allow = nil
		c.Bans.SourceFailures = 1
	})
	c := dialRawFrom(t, "127.0.0.61", g.implicit, g.clientTLS())
	greeting(t, c)
	for _, tag := range []string{"a", "b"} {
		c.send(tag + " LOGIN alice alice-secret\r\n")
		c.expect(tag + " NO [EXPIRED] Password expired")
	}
	if got := loginsTotal(t, g, "rejected"); got != 2 {
		t.Errorf(`imapgw_logins_total{outcome="rejected"} = %v, want 2`, got)
	}
	if got := loginsTotal(t, g, "failed"); got != 0 {
		t.Errorf(`imapgw_logins_total{outcome="failed"} = %v, want 0`, got)
	}
	if line := authLine(g.logs.String()); !strings.Contains(line, "outcome=rejected") {
		t.Errorf("auth line %q, want outcome=rejected", line)
	}
	// With source_failures = 1, a counted failure would have banned the source.
	c.send("z NOOP\r\n")
	c.expect("z OK")
}
