package proxy_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
)

// clientForms reproduces, byte for byte, what real clients send up to login.
// Each script ends logged in as the user, with the client's tagged OK read.
var clientForms = []struct {
	name     string
	starttls bool
	user     string
	script   func(c *rawClient, pass string)
}{
	{"thunderbird lowercase numeric tags", false, "alice", func(c *rawClient, pass string) {
		c.send("1 capability\r\n")
		c.expect("1 OK")
		c.send(fmt.Sprintf("2 login \"alice\" %q\r\n", pass))
		c.expect("2 OK [CAPABILITY ")
	}},
	{"ios PLAIN with SASL-IR straight after the greeting", false, "alice", func(c *rawClient, pass string) {
		c.send("A1 AUTHENTICATE PLAIN " + b64("\x00alice\x00"+pass) + "\r\n")
		c.expect("A1 OK")
	}},
	{"ios bare-atom LOGIN", false, "alice", func(c *rawClient, pass string) {
		c.send("A2 LOGIN alice " + pass + "\r\n")
		c.expect("A2 OK")
	}},
	{"outlook ID then AUTHENTICATE with a command pipelined behind", false, "alice", func(c *rawClient, pass string) {
		c.send("A01 ID (\"name\" \"Microsoft Outlook\" \"version\" \"16.0\")\r\n")
		c.expect("A01 OK")
		c.send("A02 AUTHENTICATE PLAIN\r\n")
		c.expect("+")
		c.send(b64("\x00alice\x00"+pass) + "\r\nA03 SELECT INBOX\r\n")
		c.expect("A02 OK")
		c.expect("A03 OK")
	}},
	{"k9 PLAIN after + with a UTF-8 password", false, "carol", func(c *rawClient, pass string) {
		c.send("3 AUTHENTICATE PLAIN\r\n")
		c.expect("+")
		c.send(b64("\x00carol\x00"+pass) + "\r\n")
		c.expect("3 OK")
	}},
	{"javamail synchronizing literals for an 8-bit password", false, "carol", func(c *rawClient, pass string) {
		c.send("A1 LOGIN {5}\r\n")
		c.expect("+")
		c.send(fmt.Sprintf("carol {%d}\r\n", len(pass)))
		c.expect("+")
		c.send(pass + "\r\n")
		c.expect("A1 OK")
	}},
	{"evolution LITERAL+ in one write", false, "carol", func(c *rawClient, pass string) {
		c.send(fmt.Sprintf("A1 LOGIN {5+}\r\ncarol {%d+}\r\n%s\r\n", len(pass), pass))
		c.expect("A1 OK")
	}},
	{"mutt authzid equal to the user", false, "alice", func(c *rawClient, pass string) {
		c.send("a0 AUTHENTICATE PLAIN\r\n")
		c.expect("+")
		c.send(b64("alice\x00alice\x00"+pass) + "\r\n")
		c.expect("a0 OK")
	}},
	{"curl AUTHENTICATE LOGIN with the user as initial response", false, "alice", func(c *rawClient, pass string) {
		c.send("B AUTHENTICATE LOGIN " + b64("alice") + "\r\n")
		if l := c.line(); l != "+ UGFzc3dvcmQ6" {
			c.t.Fatalf("challenge = %q, want + UGFzc3dvcmQ6", l)
		}
		c.send(b64(pass) + "\r\n")
		c.expect("B OK")
	}},
	{"cancel with * then log in", false, "alice", func(c *rawClient, pass string) {
		c.send("c1 AUTHENTICATE PLAIN\r\n")
		c.expect("+")
		c.send("*\r\n")
		c.expect("c1 BAD")
		c.send("c2 LOGIN alice " + quote(pass) + "\r\n")
		c.expect("c2 OK")
	}},
	{"second attempt after a failure", false, "alice", func(c *rawClient, pass string) {
		c.send("f1 LOGIN alice wrong-password\r\n")
		c.expect("f1 NO [AUTHENTICATIONFAILED]")
		c.send("f2 LOGIN alice " + quote(pass) + "\r\n")
		c.expect("f2 OK")
	}},
	{"dovecot proxy: ID, CAPABILITY and LOGIN with a literal in one write", false, "bob", func(c *rawClient, pass string) {
		c.send(fmt.Sprintf("P1 ID (\"x-session-ext-id\" \"abc\")\r\nP2 CAPABILITY\r\nP3 LOGIN bob {%d}\r\n%s\r\n", len(pass), pass))
		c.expect("P1 OK")
		c.expect("P2 OK")
		c.expect("P3 OK")
	}},
	{"STARTTLS then LOGIN", true, "alice", func(c *rawClient, pass string) {
		c.send("A LOGIN alice " + quote(pass) + "\r\n")
		c.expect("A OK")
	}},
	{"STARTTLS then AUTHENTICATE PLAIN =-less IR", true, "bob", func(c *rawClient, pass string) {
		c.send("A AUTHENTICATE PLAIN " + b64("\x00bob\x00"+pass) + "\r\n")
		c.expect("A OK")
	}},
}

func quote(s string) string { return fmt.Sprintf("%q", s) }

func TestClientFormsDemo(t *testing.T) {
	be := startDemo(t)
	g := startGateway(t, be.Addr, nil)
	users := map[string]string{}
	for _, f := range clientForms {
		t.Run(f.name, func(t *testing.T) {
			runForm(t, g, f.starttls, f.user, f.script)
		})
		users[f.user] = ""
	}
	assertNoPasswords(t, g.logs.String())
}

func runForm(t *testing.T, g *gateway, starttls bool, user string, script func(*rawClient, string)) {
	pass := testPasswords[user]
	var c *rawClient
	if starttls {
		c = dialRaw(t, g.starttls, nil)
		greeting(t, c)
		c.starttls(g.clientTLS())
	} else {
		c = dialRaw(t, g.implicit, g.clientTLS())
		greeting(t, c)
	}
	script(c, pass)
	c.send("Z1 SELECT INBOX\r\n")
	c.expect("Z1 OK")
	c.send("Z2 LOGOUT\r\n")
	c.expect("* BYE")
	c.expect("Z2 OK")
	c.expectClosed()
}

var testPasswords = map[string]string{"alice": "alice-secret", "bob": "bob secret with spaces", "carol": "pässwörd-ü"}

func assertNoPasswords(t *testing.T, logs string) {
	t.Helper()
	for user, p := range testPasswords {
		if strings.Contains(logs, p) || strings.Contains(logs, b64(p)) {
			t.Errorf("the log contains %s's password", user)
		}
	}
	if !strings.Contains(logs, "msg=auth") {
		t.Errorf("the log has no auth line")
	}
}

func TestStartTLSListener(t *testing.T) {
	be := startDemo(t)
	g := startGateway(t, be.Addr, nil)

	c := dialRaw(t, g.starttls, nil)
	if gr := greeting(t, c); !strings.Contains(gr, "STARTTLS") || !strings.Contains(gr, "LOGINDISABLED") || strings.Contains(gr, "AUTH=") {
		t.Fatalf("plain greeting = %q, want STARTTLS LOGINDISABLED and no AUTH=", gr)
	}
	c.send("a LOGIN alice alice-secret\r\n")
	c.expect("a NO [PRIVACYREQUIRED]")
	c.send("b AUTHENTICATE PLAIN " + b64("\x00alice\x00alice-secret") + "\r\n")
	c.expect("b NO [PRIVACYREQUIRED]")
	// A command injected behind STARTTLS, in the same packet, must not run.
	c.send("s1 STARTTLS\r\nx1 LOGIN alice alice-secret\r\n")
	c.expect("s1 OK")
	tc := dialUpgrade(t, c, g)
	tc.send("x2 CAPABILITY\r\n")
	l, before := tc.expect("x2 OK")
	if len(before) != 1 || !strings.Contains(before[0], "AUTH=PLAIN") || strings.Contains(before[0], "STARTTLS") {
		t.Fatalf("capabilities after TLS = %q (then %q), want AUTH=PLAIN and no STARTTLS", before, l)
	}
	tc.send("x3 STARTTLS\r\n")
	tc.expect("x3 BAD")
	if !strings.Contains(g.logs.String(), "pipelined after STARTTLS discarded") {
		t.Errorf("no log of the discarded bytes")
	}
}

func dialUpgrade(t *testing.T, c *rawClient, g *gateway) *rawClient {
	t.Helper()
	tc := tlsClient(c.conn, g.clientTLS())
	if err := tc.Handshake(); err != nil {
		t.Fatalf("STARTTLS handshake: %v", err)
	}
	return &rawClient{t: t, conn: tc, br: newReader(tc)}
}

func TestHostileInput(t *testing.T) {
	be := startDemo(t)
	g := startGateway(t, be.Addr, func(c *conf.Config) {
		c.Limits.PreauthTimeout = conf.D(700 * time.Millisecond)
		c.Limits.MaxLine = 1024
		c.Limits.MaxLiteral = 1024
	})
	cases := []struct {
		name     string
		starttls bool
		send     string
		want     string // the reply's prefix; the connection then closes when want is a BYE
	}{
		{"over-long line", false, "a " + strings.Repeat("x", 2000) + "\r\n", "* BYE Line too long"},
		{"over-size literal", false, "a LOGIN {5000}\r\n", "* BYE Literal too large"},
		{"2 GB literal", false, "a LOGIN alice {2147483648+}\r\n", "* BYE Literal too large"},
		{"NUL in a quoted string", false, "a CAPABILITY\r\nb LOGIN \"al\x00ice\" x\r\n", "b BAD"},
		{"HTTP request", false, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", "* BYE"},
		{"TLS bytes on the STARTTLS port", true, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n", "* BYE"},
		{"SMTP on the IMAP port", false, "EHLO mail.example.com\r\n", "* BYE"},
		{"unknown command", false, "a CAPABILITY\r\nb FROB\r\n", "b BAD"},
		{"silent past preauth_timeout", false, "", "* BYE Autologout"},
		{"slow trickle", false, "a NO", "* BYE Autologout"},
		{"trickle under the per-read timeout, past the pre-auth lifetime", false, "trickle", "* BYE Autologout"},
		{"command before login", false, "a CAPABILITY\r\nb SELECT INBOX\r\n", "b BAD"},
		{"bad base64", false, "a AUTHENTICATE PLAIN !!!!\r\n", "a BAD"},
		{"unsupported mechanism", false, "a AUTHENTICATE GSSAPI\r\n", "a NO"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var c *rawClient
			if tc.starttls {
				c = dialRaw(t, g.starttls, nil)
			} else {
				c = dialRaw(t, g.implicit, g.clientTLS())
			}
			greeting(t, c)
			switch tc.send {
			case "":
			case "trickle":
				// One byte every 400 ms, each within preauth_timeout (700 ms): only
				// the pre-auth lifetime (5 × 700 ms) ends it.
				go func() {
					for i := 0; i < 20; i++ {
						if _, err := c.conn.Write([]byte("a")); err != nil {
							return
						}
						time.Sleep(400 * time.Millisecond)
					}
				}()
			default:
				c.send(tc.send)
			}
			word, _, _ := strings.Cut(tc.want, " ")
			if word == "*" {
				word = "* BYE"
			}
			l := c.until(word)
			if !strings.HasPrefix(l, tc.want) {
				t.Fatalf("reply = %q, want %q", l, tc.want)
			}
			if strings.HasPrefix(tc.want, "* BYE") {
				c.expectClosed()
			}
			// The gateway keeps serving everyone else.
			ok := dialRaw(t, g.implicit, g.clientTLS())
			greeting(t, ok)
			ok.send("n NOOP\r\n")
			ok.expect("n OK")
		})
	}
}
