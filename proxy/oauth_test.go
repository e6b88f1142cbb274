package proxy_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
	"github.com/imapgw/imapgw/limiter"
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

// expectChallenge reads the backend's error challenge relayed by the gateway
// and checks it is the base64 JSON Dovecot sends with status want.
func (c *rawClient) expectChallenge(want string) {
	c.t.Helper()
	l := c.line()
	if !strings.HasPrefix(l, "+ ") {
		c.t.Fatalf("reply %q, want the error challenge", l)
	}
	js, err := base64.StdEncoding.DecodeString(l[2:])
	if err != nil || !strings.Contains(string(js), `"status":"`+want+`"`) {
		c.t.Fatalf("challenge %q decodes to %q, %v: want JSON with status %q", l, js, err, want)
	}
}

// oauthSource dials the TLS listener from src.
func oauthSource(t *testing.T, g *gateway, src string) *rawClient {
	t.Helper()
	c := dialRawFrom(t, src, g.implicit, g.clientTLS())
	greeting(t, c)
	return c
}

func failures(g *gateway, src string) int {
	return g.lim.Source(netip.MustParseAddr(src)).Failures
}

// TestOAuthDovecotFailures: with Dovecot's defaults, a refused token gets the
// error challenge, the client's answer, then NO [AUTHENTICATIONFAILED], and
// the policy counts it like a wrong password: revoked tokens with both
// mechanisms, a token presented for another user, a message with no user
// (keyed by the token's hash), a client cancelling at the error challenge.
// Cancelling before the message is not a login, and an identity provider
// answering 500 is Dovecot's internal failure: neither counts.
func TestOAuthDovecotFailures(t *testing.T) {
	d, in, g := startOAuthDovecot(t, testbed.DovecotOptions{}, policyConfig(t.TempDir()))
	in.Grant("tok-alice", "alice")
	in.Break("tok-broken")
	cases := []struct {
		name, src string
		run       func(c *rawClient)
		counted   int
	}{
		{"revoked XOAUTH2", "127.0.0.41", func(c *rawClient) {
			c.send("a AUTHENTICATE XOAUTH2 " + xoauth2("alice", "tok-revoked") + "\r\n")
			c.expectChallenge("401")
			c.send("\r\n") // what XOAUTH2 clients answer
			c.expect("a NO [AUTHENTICATIONFAILED]")
		}, 1},
		{"revoked OAUTHBEARER without SASL-IR", "127.0.0.42", func(c *rawClient) {
			c.send("a AUTHENTICATE OAUTHBEARER\r\n")
			c.expect("+")
			c.send(oauthbearer("alice", "tok-revoked") + "\r\n")
			c.expectChallenge("invalid_token")
			c.send("AQ==\r\n") // RFC 7628 section 3.2.3: a ^A
			c.expect("a NO [AUTHENTICATIONFAILED]")
		}, 1},
		{"alice's token for bob", "127.0.0.43", func(c *rawClient) {
			c.send("a AUTHENTICATE XOAUTH2 " + xoauth2("bob", "tok-alice") + "\r\n")
			c.expectChallenge("401")
			c.send("\r\n")
			c.expect("a NO [AUTHENTICATIONFAILED]")
		}, 1},
		{"no user", "127.0.0.44", func(c *rawClient) {
			// Dovecot 2.3 needs a=: it refuses at once, no challenge.
			c.send("a AUTHENTICATE OAUTHBEARER " + b64("n,,\x01auth=Bearer tok-alice\x01\x01") + "\r\n")
			c.expect("a NO [AUTHENTICATIONFAILED]")
			// The admin API's session list names it by the token's hash.
			sessions, _ := json.Marshal(g.srv.Sessions())
			if !strings.Contains(string(sessions), `"user":"oauth-token:`) {
				c.t.Errorf("sessions %s: want the session's user named oauth-token:…", sessions)
			}
			assertNoTokens(c.t, string(sessions), "tok-alice")
		}, 1},
		{"cancel at the error challenge", "127.0.0.45", func(c *rawClient) {
			c.send("a AUTHENTICATE XOAUTH2 " + xoauth2("alice", "tok-revoked") + "\r\n")
			c.expectChallenge("401")
			c.send("*\r\n")
			c.expect("a NO [AUTHENTICATIONFAILED]")
		}, 1},
		{"identity provider down", "127.0.0.47", func(c *rawClient) {
			// Dovecot's internal failure: the client is told to come back, and
			// nobody is counted for the provider's outage.
			c.send("a AUTHENTICATE XOAUTH2 " + xoauth2("alice", "tok-broken") + "\r\n")
			c.expect("a NO [UNAVAILABLE]")
		}, 0},
		{"cancel before the message", "127.0.0.46", func(c *rawClient) {
			c.send("a AUTHENTICATE XOAUTH2\r\n")
			c.expect("+")
			c.send("*\r\n")
			c.expect("a BAD")
		}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each source waits out Dovecot's failure delay once
			c := oauthSource(t, g, tc.src)
			tc.run(c)
			if got := failures(g, tc.src); got != tc.counted {
				t.Errorf("failures counted for %s = %d, want %d", tc.src, got, tc.counted)
			}
			c.send("z LOGOUT\r\n")
			c.until("z OK")
		})
	}
	t.Cleanup(func() {
		if got := loginsTotal(t, g, "failed"); got != 5 {
			t.Errorf("imapgw_logins_total{outcome=failed} = %v, want 5", got)
		}
		logs := g.logs.String()
		for _, want := range []string{"user=bob mech=XOAUTH2 outcome=failed", "user=oauth-token:", "mech=OAUTHBEARER outcome=failed"} {
			if !strings.Contains(logs, want) {
				t.Errorf("the gateway log lacks %q", want)
			}
		}
		mfs, err := g.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		assertNoTokens(t, logs+d.Log()+fmt.Sprint(mfs), "tok-alice", "tok-revoked", "tok-broken")
	})
}

// TestOAuthStaleTokenAndSpray: a phone retrying one expired token counts once
// however often it tries; a source trying many tokens for many users is
// banned as a spray.
func TestOAuthStaleTokenAndSpray(t *testing.T) {
	d, _, g := startOAuthDovecot(t, testbed.DovecotOptions{NoAuthPenalty: true, AuthFailureDelay: -1,
		Why: "several failures from one source are the test; Dovecot's penalty would add up to 15 s to each"},
		policyConfig(t.TempDir()))
	t.Run("stale token", func(t *testing.T) {
		const src = "127.0.0.51"
		for conn := 0; conn < 2; conn++ {
			c := oauthSource(t, g, src)
			for try := 0; try < 2; try++ {
				c.send("a AUTHENTICATE XOAUTH2 " + xoauth2("alice", "tok-expired") + "\r\n")
				c.expectChallenge("401")
				c.send("\r\n")
				c.expect("a NO [AUTHENTICATIONFAILED]")
			}
		}
		if got := failures(g, src); got != 1 {
			t.Errorf("4 tries of one token counted as %d failures, want 1", got)
		}
		if b := g.lim.Source(netip.MustParseAddr(src)).Ban; b != nil {
			t.Errorf("one stale token banned its source: %+v", b)
		}
	})
	t.Run("spray", func(t *testing.T) {
		const src = "127.0.0.52"
		spray := g.cfg.Bans.SprayAccounts
		for i := 0; i < spray; i++ {
			c := oauthSource(t, g, src)
			user, tok := fmt.Sprintf("user%d", i), fmt.Sprintf("tok-spray-%d", i)
			mech, msg := conf.MechXOAuth2, xoauth2(user, tok)
			if i%2 == 1 {
				mech, msg = conf.MechOAuthBearer, oauthbearer(user, tok)
			}
			if l := c.authenticate("a", mech, msg, true); !strings.HasPrefix(l, "+ ") {
				t.Fatalf("try %d: %q, want the error challenge", i, l)
			}
			c.send("\r\n")
			l := c.until("a ")
			if !strings.HasPrefix(l, "a NO [AUTHENTICATIONFAILED]") {
				t.Fatalf("try %d: %q, want a NO [AUTHENTICATIONFAILED]", i, l)
			}
		}
		b := g.lim.Source(netip.MustParseAddr(src)).Ban
		if b == nil || b.Reason != limiter.ReasonSpray {
			t.Fatalf("after %d users' tokens failed, ban = %+v, want a spray ban", spray, b)
		}
		expectRefused(t, src, g.implicit)
	})
	assertNoTokens(t, g.logs.String()+d.Log(), "tok-expired", "tok-spray-0", "tok-spray-1")
}

// TestOAuthMechanisms: by default the OAuth mechanisms follow the backend.
// Without health checks the first login's connection teaches them (an OAuth
// login is tried while nothing is known); a backend without them gets none
// offered and refuses them; [auth] mechanisms overrides both.
func TestOAuthMechanisms(t *testing.T) {
	in := testbed.StartIntrospection(t)
	in.Grant("tok-alice", "alice")
	d := testbed.StartDovecot(t, testbed.DovecotOptions{OAuth: in})

	t.Run("first connection", func(t *testing.T) {
		g := startGateway(t, d.Addr, nil) // no health checks
		c := oauthSource(t, g, "127.0.0.1")
		c.send("c CAPABILITY\r\n")
		if l, _ := c.expect("* CAPABILITY"); strings.Contains(l, "XOAUTH2") {
			t.Errorf("CAPABILITY before any backend connection = %q, want no OAuth", l)
		}
		c.expect("c OK")
		if l := c.authenticate("a", conf.MechXOAuth2, xoauth2("alice", "tok-alice"), true); !strings.HasPrefix(l, "a OK") {
			t.Fatalf("first XOAUTH2 login = %q, want a OK", l)
		}
		if l := greeting(t, dialRaw(t, g.implicit, g.clientTLS())); !strings.Contains(l, "AUTH=XOAUTH2 AUTH=OAUTHBEARER") {
			t.Errorf("greeting after the first login = %q, want AUTH=XOAUTH2 AUTH=OAUTHBEARER", l)
		}
	})
	t.Run("backend without OAuth", func(t *testing.T) {
		g := startGateway(t, startDemo(t).Addr, nil)
		g.runChecks(t)
		waitFor(t, "the backend's capabilities", func() bool { _, known := g.pool.AuthMechanisms(); return known })
		c := oauthSource(t, g, "127.0.0.1")
		c.send("c CAPABILITY\r\n")
		if l, _ := c.expect("* CAPABILITY"); strings.Contains(l, "XOAUTH2") || strings.Contains(l, "OAUTHBEARER") {
			t.Errorf("CAPABILITY = %q, want no OAuth mechanism", l)
		}
		c.expect("c OK")
		c.send("a AUTHENTICATE OAUTHBEARER " + oauthbearer("alice", "tok-alice") + "\r\n")
		c.expect("a NO Unsupported authentication mechanism")
	})
	t.Run("configured", func(t *testing.T) {
		g := startGateway(t, d.Addr, func(c *conf.Config) { c.Auth.Mechanisms = []string{"plain", "XOAUTH2"} })
		c := oauthSource(t, g, "127.0.0.1")
		c.send("c CAPABILITY\r\n")
		if l, _ := c.expect("* CAPABILITY"); !strings.HasSuffix(l, " AUTH=PLAIN AUTH=XOAUTH2") {
			t.Errorf("CAPABILITY = %q, want AUTH=PLAIN AUTH=XOAUTH2 and no other", l)
		}
		c.expect("c OK")
		c.send("a AUTHENTICATE OAUTHBEARER " + oauthbearer("alice", "tok-alice") + "\r\n")
		c.expect("a NO Unsupported authentication mechanism")
		c.send("b AUTHENTICATE LOGIN\r\n")
		c.expect("b NO Unsupported authentication mechanism")
		if l := c.authenticate("d", conf.MechXOAuth2, xoauth2("alice", "tok-alice"), false); !strings.HasPrefix(l, "d OK") {
			t.Fatalf("XOAUTH2 = %q, want d OK", l)
		}
	})
}
