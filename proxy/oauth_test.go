package proxy_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
)

// OAuth logins through the gateway against a real Dovecot whose oauth2 passdb
// asks an introspection endpoint (issue 14).

// xoauth2 is the base64 XOAUTH2 message (Google's format).
func xoauth2(user, token string) string {
	return b64("user=" + user + "\x01auth=Bearer " + token + "\x01\x01")
}

// oauthbearer is the base64 RFC 7628 message, with host and port as MailKit
// sends them.
func oauthbearer(user, token string) string {
	return b64("n,a=" + user + ",\x01host=localhost\x01port=993\x01auth=Bearer " + token + "\x01\x01")
}

// startOAuthDovecot runs Dovecot with the oauth2 passdb and the gateway in
// front of it, with health checks, and waits until the gateway knows the
// backend's mechanisms.
func startOAuthDovecot(t *testing.T, opts testbed.DovecotOptions, edit func(*conf.Config)) (*testbed.Dovecot, *testbed.Introspection, *gateway) {
	t.Helper()
	in := testbed.StartIntrospection(t)
	opts.OAuth = in
	d := testbed.StartDovecot(t, opts)
	g := startGateway(t, d.Addr, edit)
	g.runChecks(t)
	waitFor(t, "the backend's AUTH= capabilities", func() bool {
		_, known := g.pool.AuthMechanisms()
		return known
	})
	return d, in, g
}

// authenticate sends an OAuth login as tag, with the message as initial
// response (ir) or after the "+", and returns the first reply that is not a
// continuation for the message.
func (c *rawClient) authenticate(tag, mech, msg string, ir bool) string {
	c.t.Helper()
	if ir {
		c.send(tag + " AUTHENTICATE " + mech + " " + msg + "\r\n")
	} else {
		c.send(tag + " AUTHENTICATE " + mech + "\r\n")
		if l := c.line(); l != "+ " && l != "+" {
			c.t.Fatalf("AUTHENTICATE %s without initial response: %q, want an empty challenge", mech, l)
		}
		c.send(msg + "\r\n")
	}
	for {
		l := c.line()
		if !strings.HasPrefix(l, "* ") {
			return l
		}
	}
}

// assertNoTokens fails if any of the tokens, or a message carrying one,
// appears in logs.
func assertNoTokens(t *testing.T, logs string, tokens ...string) {
	t.Helper()
	for _, tok := range tokens {
		if strings.Contains(logs, tok) || strings.Contains(logs, b64(tok)) {
			t.Errorf("a log contains the token %.6s…", tok)
		}
		for _, msg := range []string{xoauth2("alice", tok), oauthbearer("alice", tok)} {
			if strings.Contains(logs, msg[:32]) {
				t.Errorf("a log contains an OAuth message")
			}
		}
	}
}

// TestOAuthDovecotLogin: good tokens log in and SELECT with XOAUTH2 and
// OAUTHBEARER, with and without SASL-IR, on the implicit-TLS listener and
// after STARTTLS; AUTH=XOAUTH2 and AUTH=OAUTHBEARER are offered after TLS only.
func TestOAuthDovecotLogin(t *testing.T) {
	d, in, g := startOAuthDovecot(t, testbed.DovecotOptions{}, nil)
	in.Grant("tok-alice-good", "alice")

	plain := dialRaw(t, g.starttls, nil)
	if l := greeting(t, plain); strings.Contains(l, "AUTH=") {
		t.Errorf("plaintext greeting offers a mechanism: %q", l)
	}
	plain.send("c CAPABILITY\r\n")
	if l, _ := plain.expect("* CAPABILITY"); strings.Contains(l, "AUTH=") {
		t.Errorf("plaintext CAPABILITY offers a mechanism: %q", l)
	}
	plain.expect("c OK")
	plain.send("a AUTHENTICATE XOAUTH2 " + xoauth2("alice", "tok-alice-good") + "\r\n")
	plain.expect("a NO [PRIVACYREQUIRED]")
	plain.starttls(g.clientTLS())
	plain.send("c CAPABILITY\r\n")
	if l, _ := plain.expect("* CAPABILITY"); !strings.Contains(l, " AUTH=PLAIN AUTH=LOGIN AUTH=XOAUTH2 AUTH=OAUTHBEARER") {
		t.Errorf("CAPABILITY after STARTTLS = %q, want AUTH=PLAIN AUTH=LOGIN AUTH=XOAUTH2 AUTH=OAUTHBEARER", l)
	}
	if l := greeting(t, dialRaw(t, g.implicit, g.clientTLS())); !strings.Contains(l, " AUTH=XOAUTH2 AUTH=OAUTHBEARER") {
		t.Errorf("greeting on the TLS listener = %q, want AUTH=XOAUTH2 AUTH=OAUTHBEARER", l)
	}

	for _, listener := range []string{"implicit", "starttls"} {
		for _, mech := range []string{conf.MechXOAuth2, conf.MechOAuthBearer} {
			for _, ir := range []bool{true, false} {
				t.Run(fmt.Sprintf("%s/%s/ir=%v", listener, mech, ir), func(t *testing.T) {
					var c *rawClient
					if listener == "implicit" {
						c = dialRaw(t, g.implicit, g.clientTLS())
						greeting(t, c)
					} else {
						c = dialRaw(t, g.starttls, nil)
						greeting(t, c)
						c.starttls(g.clientTLS())
					}
					msg := xoauth2("alice", "tok-alice-good")
					if mech == conf.MechOAuthBearer {
						msg = oauthbearer("alice", "tok-alice-good")
					}
					if l := c.authenticate("a", mech, msg, ir); !strings.HasPrefix(l, "a OK") {
						t.Fatalf("AUTHENTICATE %s = %q, want a OK", mech, l)
					}
					c.send("b SELECT INBOX\r\n")
					c.expect("b OK")
					c.send("z LOGOUT\r\n")
					c.until("z OK")
				})
			}
		}
	}
	d.WaitLog(t, "method=XOAUTH2", 5*time.Second)
	d.WaitLog(t, "method=OAUTHBEARER", 5*time.Second)
	logs := g.logs.String()
	for _, want := range []string{"mech=XOAUTH2 outcome=ok", "mech=OAUTHBEARER outcome=ok"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the gateway log lacks %q", want)
		}
	}
	if got := loginsTotal(t, g, "ok"); got != 8 {
		t.Errorf("imapgw_logins_total{outcome=ok} = %v, want 8", got)
	}
	assertNoTokens(t, logs+d.Log(), "tok-alice-good")
}
