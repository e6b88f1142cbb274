package proxy_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
)

// exchangeUsers adds a user with an 8-bit name to the usual ones: the gateway
// must send that name to the backend as a literal.
func exchangeUsers() map[string]string {
	u := testbed.DefaultUsers()
	u["jürgen"] = "jürgen-secret"
	return u
}

// startExchange runs the Exchange testbed with a shared mailbox "sales" that
// alice and jürgen may open.
func startExchange(t *testing.T, saslIR bool) *testbed.Exchange {
	t.Helper()
	return testbed.StartExchange(t, testbed.ExchangeOptions{
		Users:  exchangeUsers(),
		Shared: map[string][]string{"sales": {"alice", "jürgen"}},
		SASLIR: saslIR,
	})
}

// exchangeBackend points the gateway at e as an operator fronting Exchange
// would: backend TLS verified against e's CA, and client_ip = "none" since
// Exchange has no way to take the client's address.
func exchangeBackend(t *testing.T, e *testbed.Exchange, mode string) func(*conf.Config) {
	caFile := e.CA.WritePEM(t, t.TempDir())
	return func(c *conf.Config) {
		c.Backend.Servers = []string{e.TLSAddr}
		if mode == conf.TLSStartTLS || mode == conf.TLSNone {
			c.Backend.Servers = []string{e.Addr}
		}
		c.Backend.TLS = mode
		c.Backend.TLSCAFile = caFile
		c.Backend.TLSServerName = "localhost"
		c.Backend.ClientIP = conf.ClientIPNone
	}
}

// lastLogin is the last set of credentials Exchange checked.
func lastLogin(t *testing.T, e *testbed.Exchange) testbed.ExchangeLogin {
	t.Helper()
	l := e.Logins()
	if len(l) == 0 {
		t.Fatal("Exchange checked no credentials")
	}
	return l[len(l)-1]
}

// plainClient is SASL PLAIN for imapclient.Authenticate (the sasl.Client
// interface, without importing go-sasl).
type plainClient struct{ user, pass string }

func (p plainClient) Start() (string, []byte, error) {
	return "PLAIN", []byte("\x00" + p.user + "\x00" + p.pass), nil
}
func (p plainClient) Next([]byte) ([]byte, error) { return nil, fmt.Errorf("unexpected challenge") }

// TestExchangeBackendTLS logs in through the gateway to Exchange over implicit
// TLS and STARTTLS, with and without SASL-IR, with go-imap's LOGIN and
// AUTHENTICATE PLAIN; the client gets Exchange's post-login capabilities
// (Exchange sends no CAPABILITY code: the gateway asks) and uses INBOX.
func TestExchangeBackendTLS(t *testing.T) {
	for _, mode := range []string{conf.TLSImplicit, conf.TLSStartTLS} {
		for _, saslIR := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/sasl-ir=%v", mode, saslIR), func(t *testing.T) {
				e := startExchange(t, saslIR)
				g := startGateway(t, "", exchangeBackend(t, e, mode))
				// Without SASL-IR the gateway sends LOGIN; with it, one PLAIN round trip.
				wantMech := map[bool]string{false: "LOGIN", true: "PLAIN"}[saslIR]
				for _, how := range []string{"LOGIN", "AUTHENTICATE PLAIN"} {
					c, err := imapclient.DialTLS(g.implicit, &imapclient.Options{TLSConfig: g.clientTLS()})
					if err != nil {
						t.Fatal(err)
					}
					if how == "LOGIN" {
						err = c.Login("alice", testPasswords["alice"]).Wait()
					} else {
						err = c.Authenticate(plainClient{"alice", testPasswords["alice"]})
					}
					if err != nil {
						t.Fatalf("%s through the gateway: %v", how, err)
					}
					caps := c.Caps()
					if !caps.Has("IDLE") || !caps.Has("MOVE") || !caps.Has("XPROXY3") {
						t.Errorf("post-login capabilities %v are not Exchange's post-login ones (IDLE MOVE XPROXY3)", caps)
					}
					if caps.Has("LOGINDISABLED") || caps.Has("STARTTLS") {
						t.Errorf("post-login capabilities %v carry pre-TLS ones", caps)
					}
					if _, err := c.Select("INBOX", nil).Wait(); err != nil {
						t.Fatalf("SELECT: %v", err)
					}
					if err := c.Logout().Wait(); err != nil {
						t.Fatalf("LOGOUT: %v", err)
					}
					c.Close()
					if l := lastLogin(t, e); l.User != "alice" || l.Mailbox != "alice" || l.Mech != wantMech {
						t.Errorf("Exchange saw %+v, want alice by %s", l, wantMech)
					}
				}
				// The exact list: Exchange's answer to the CAPABILITY the gateway
				// sent after login, not the gateway's own nor a pre-TLS one.
				c := dialRaw(t, g.implicit, g.clientTLS())
				greeting(t, c)
				c.send("r LOGIN alice " + quote(testPasswords["alice"]) + "\r\n")
				ir := map[bool]string{false: "", true: " SASL-IR"}[saslIR]
				want := "r OK [CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=NTLM AUTH=GSSAPI" + ir +
					" UIDPLUS MOVE ID UNSELECT XPROXY3 CHILDREN IDLE NAMESPACE LITERAL+] Logged in"
				if l, _ := c.expect("r "); l != want {
					t.Errorf("raw LOGIN answered %q, want %q", l, want)
				}
				c.send("n NOOP\r\n")
				c.expect("n OK NOOP completed.")
				if strings.Contains(g.logs.String(), "does not advertise ID") {
					t.Errorf("client_ip = none still tried ID")
				}
				assertNoPasswords(t, g.logs.String())
			})
		}
	}
	t.Run("no backend TLS", func(t *testing.T) {
		// Exchange refuses LOGIN before TLS (LOGINDISABLED, no AUTH=): the
		// gateway must say so rather than send the password in clear.
		e := startExchange(t, false)
		g := startGateway(t, "", exchangeBackend(t, e, conf.TLSNone))
		c := dialRaw(t, g.implicit, g.clientTLS())
		greeting(t, c)
		c.send("a LOGIN alice " + quote(testPasswords["alice"]) + "\r\n")
		c.expect("a NO [UNAVAILABLE]")
		if !strings.Contains(authLine(g.logs.String()), "LOGINDISABLED") {
			t.Errorf("auth log line %q does not name LOGINDISABLED", authLine(g.logs.String()))
		}
		if n := len(e.Logins()); n != 0 {
			t.Errorf("Exchange checked %d logins sent before TLS, want none", n)
		}
	})
}

// TestExchangeSharedMailboxNames: shared-mailbox login names with backslashes
// and an 8-bit name reach Exchange byte for byte, whichever way the client
// sends them (quoted, synchronizing literal, LITERAL+, PLAIN with and without
// an initial response) and whichever way the gateway logs in (LOGIN with
// quoting or literals without SASL-IR, PLAIN with it).
func TestExchangeSharedMailboxNames(t *testing.T) {
	names := []struct{ user, pass string }{
		{`alice@example.com\sales@example.com`, testPasswords["alice"]},
		{`EXAMPLE\alice\sales`, testPasswords["alice"]},
		{`alice@example.com/sales`, testPasswords["alice"]},
		{`EXAMPLE\jürgen\sales`, "jürgen-secret"},
		{`jürgen@example.com\sales@example.com`, "jürgen-secret"},
	}
	forms := []struct {
		name  string
		login func(c *rawClient, user, pass string)
	}{
		{"quoted", func(c *rawClient, user, pass string) {
			c.send("a LOGIN " + imapQuote(user) + " " + imapQuote(pass) + "\r\n")
		}},
		{"literal", func(c *rawClient, user, pass string) {
			c.send(fmt.Sprintf("a LOGIN {%d}\r\n", len(user)))
			c.expect("+")
			c.send(fmt.Sprintf("%s {%d}\r\n", user, len(pass)))
			c.expect("+")
			c.send(pass + "\r\n")
		}},
		{"literal+", func(c *rawClient, user, pass string) {
			c.send(fmt.Sprintf("a LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n", len(user), user, len(pass), pass))
		}},
		{"plain-ir", func(c *rawClient, user, pass string) {
			c.send("a AUTHENTICATE PLAIN " + b64("\x00"+user+"\x00"+pass) + "\r\n")
		}},
		{"plain", func(c *rawClient, user, pass string) {
			c.send("a AUTHENTICATE PLAIN\r\n")
			c.expect("+")
			c.send(b64("\x00"+user+"\x00"+pass) + "\r\n")
		}},
	}
	for _, saslIR := range []bool{false, true} {
		t.Run(fmt.Sprintf("sasl-ir=%v", saslIR), func(t *testing.T) {
			e := startExchange(t, saslIR)
			g := startGateway(t, "", exchangeBackend(t, e, conf.TLSImplicit))
			// The gateway quotes (or, for 8-bit, sends a literal) with LOGIN, or
			// base64s with PLAIN when SASL-IR saves a round trip.
			wantMech := map[bool]string{false: "LOGIN", true: "PLAIN"}[saslIR]
			for _, n := range names {
				for _, f := range forms {
					if f.name == "quoted" && !isASCII(n.user) {
						continue // 8-bit goes in literals (RFC 9051 before UTF8=ACCEPT)
					}
					c := dialRaw(t, g.implicit, g.clientTLS())
					greeting(t, c)
					f.login(c, n.user, n.pass)
					if l, _ := c.expect("a "); !strings.HasPrefix(l, "a OK") {
						t.Errorf("%s as %q: %q", f.name, n.user, l)
					}
					c.conn.Close()
					if l := lastLogin(t, e); l.User != n.user || l.Mailbox != "sales" || l.Mech != wantMech {
						t.Errorf("%s: Exchange saw user %q opening %q by %s, want %q opening sales by %s",
							f.name, l.User, l.Mailbox, l.Mech, n.user, wantMech)
					}
				}
			}
			// An authorization identity goes as PLAIN whatever SASL-IR says:
			// without it, after Exchange's bare "+".
			c := dialRaw(t, g.implicit, g.clientTLS())
			greeting(t, c)
			c.send("z AUTHENTICATE PLAIN " + b64("sales@example.com\x00alice@example.com\x00"+testPasswords["alice"]) + "\r\n")
			c.expect("z OK")
			if l := lastLogin(t, e); l.User != "alice@example.com" || l.Authzid != "sales@example.com" || l.Mailbox != "sales" || l.Mech != "PLAIN" {
				t.Errorf("PLAIN with an authzid: Exchange saw %+v", l)
			}
			assertNoPasswords(t, g.logs.String())
		})
	}
}

// TestExchangeImaplib: Python's imaplib logs in to a shared mailbox through the
// gateway and selects its INBOX.
func TestExchangeImaplib(t *testing.T) {
	testbed.Need(t, "python3")
	e := startExchange(t, false)
	g := startGateway(t, "", exchangeBackend(t, e, conf.TLSStartTLS))
	dir := t.TempDir()
	caFile := g.ca.WritePEM(t, dir)
	_, port, _ := strings.Cut(g.implicit, ":")
	py := filepath.Join(dir, "client.py")
	os.WriteFile(py, []byte(`import imaplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
m = imaplib.IMAP4_SSL("localhost", int(sys.argv[2]), ssl_context=ctx)
m.login(sys.argv[3], sys.argv[4])
typ, data = m.select("INBOX")
assert typ == "OK", data
print("messages:", data[0].decode())
m.logout()
`), 0o644)
	user := `alice@example.com\sales@example.com`
	out, err := exec.Command("python3", py, caFile, port, user, testPasswords["alice"]).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "messages: 0") {
		t.Fatalf("imaplib: %v\n%s", err, out)
	}
	if l := lastLogin(t, e); l.User != user || l.Mailbox != "sales" {
		t.Errorf("Exchange saw %+v, want %q opening sales", l, user)
	}
}

// TestExchangeFailedLogins: Exchange's code-less "NO LOGIN failed." (followed
// here by its BYE after MaxFailedLoginAttempts) is a failed password: it is
// tarpitted, counted, and bans the source after source_failures; exactly that
// many guesses reach Exchange.
func TestExchangeFailedLogins(t *testing.T) {
	e := testbed.StartExchange(t, testbed.ExchangeOptions{MaxFailedLogins: 1})
	g := startGateway(t, "", func(c *conf.Config) {
		exchangeBackend(t, e, conf.TLSStartTLS)(c)
		policyConfig(t.TempDir())(c)
		c.Bans.SourceFailures = 3
	})
	delay := g.cfg.Bans.FailureDelay.Duration

	c := dialRawFrom(t, "127.0.0.9", g.implicit, g.clientTLS())
	greeting(t, c)
	start := time.Now()
	c.send("a LOGIN alice wrong\r\n")
	c.expect("a NO [AUTHENTICATIONFAILED]")
	if d := time.Since(start); d < delay {
		t.Errorf("a failed login was answered after %v, before failure_delay %v", d, delay)
	}
	c.conn.Close()

	before := len(e.Logins())
	if tries := attack(t, g, "127.0.0.7", "alice", 20); tries != 3 {
		t.Errorf("the attacker had %d logins answered, want source_failures = 3", tries)
	}
	if n := len(e.Logins()) - before; n != 3 {
		t.Errorf("%d guesses reached Exchange, want 3", n)
	}
	expectRefused(t, "127.0.0.7", g.implicit)
	if got := loginsTotal(t, g, "failed"); got != 4 {
		t.Errorf(`imapgw_logins_total{outcome="failed"} = %v, want 4`, got)
	}
	if !strings.Contains(g.logs.String(), `reason="NO LOGIN failed.; source banned`) {
		t.Errorf("no auth line gives Exchange's reply and the ban")
	}
	loginTime(t, g, "127.0.0.8", "alice")
}

// TestExchangeOutageBansNobody: during an Exchange outage every login gets a
// code-less NO, "NO Server Unavailable. 15", with or without "* BYE Connection
// closed." after it. Users retrying through it from one address are told to
// try later, and are not tarpitted, counted or banned. In the other outage
// Exchange accepts the login and answers mailbox commands "BAD User is
// authenticated but not connected.": that login is a success, relayed as is.
// Everyone logs in once Exchange is back.
func TestExchangeOutageBansNobody(t *testing.T) {
	e := startExchange(t, false)
	g := startGateway(t, "", func(c *conf.Config) {
		exchangeBackend(t, e, conf.TLSImplicit)(c)
		policyConfig(t.TempDir())(c)
		c.Bans.SourceFailures = 3
		c.Bans.AccountFailures = 3
		// Long enough that a tarpit cannot hide in a slow loaded machine's login.
		c.Bans.FailureDelay = conf.D(2 * time.Second)
	})
	users := []string{"alice", "bob", "carol"}
	attempts := 0
	for _, outage := range []testbed.Outage{testbed.OutageNO, testbed.OutageNOBye} {
		e.SetOutage(outage)
		for _, u := range users {
			for range 2 {
				c := dialRawFrom(t, "127.0.0.7", g.implicit, g.clientTLS())
				greeting(t, c)
				start := time.Now()
				c.send("a LOGIN " + u + " " + quote(testPasswords[u]) + "\r\n")
				c.expect("a NO [UNAVAILABLE] Mail server unavailable")
				if d := time.Since(start); d >= g.cfg.Bans.FailureDelay.Duration {
					t.Errorf("%s during an outage answered after %v: tarpitted as a failure", u, d)
				}
				c.conn.Close()
				attempts++
				if l := lastLogin(t, e); l.User != u || l.Reply != "NO Server Unavailable. 15" {
					t.Fatalf("Exchange answered %+v, want NO Server Unavailable. 15 for %s", l, u)
				}
			}
		}
	}

	e.SetOutage(testbed.OutageNotConnected)
	for _, u := range users {
		c := dialRawFrom(t, "127.0.0.7", g.implicit, g.clientTLS())
		greeting(t, c)
		c.send("a LOGIN " + u + " " + quote(testPasswords[u]) + "\r\n")
		c.expect("a OK [CAPABILITY ")
		c.send("b SELECT INBOX\r\nc LIST \"\" *\r\n")
		c.expect("b BAD User is authenticated but not connected.")
		c.expect("c BAD User is authenticated but not connected.")
		c.expect("* BYE Connection closed. 14")
		c.expectClosed()
	}

	if bans := g.lim.Bans(); len(bans) != 0 {
		t.Errorf("bans after %d logins during an outage: %+v", attempts, bans)
	}
	if got := loginsTotal(t, g, "failed"); got != 0 {
		t.Errorf(`imapgw_logins_total{outcome="failed"} = %v after an outage, want 0`, got)
	}
	if got := loginsTotal(t, g, "error"); got != float64(attempts) {
		t.Errorf(`imapgw_logins_total{outcome="error"} = %v, want %d`, got, attempts)
	}
	e.SetOutage(testbed.Up)
	for _, u := range users {
		loginTime(t, g, "127.0.0.7", u)
	}
}

// loginsTotal reads imapgw_logins_total{outcome} from the gateway's registry.
func loginsTotal(t *testing.T, g *gateway, outcome string) float64 {
	t.Helper()
	mfs, err := g.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "imapgw_logins_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == outcome {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no imapgw_logins_total{outcome=%q}", outcome)
	return 0
}

// imapQuote is an IMAP quoted string (Go's %q would escape non-ASCII).
func imapQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
