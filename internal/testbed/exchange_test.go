package testbed

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
)

var exShared = map[string][]string{"sales": {"alice"}}

// exScript is a line-level client for the Exchange testbed.
type exScript struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func dialExchange(t *testing.T, addr string, conf *tls.Config) *exScript {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if conf != nil {
		conn = tls.Client(conn, conf)
	}
	t.Cleanup(func() { conn.Close() })
	return &exScript{t: t, conn: conn, br: bufio.NewReader(conn)}
}

// do sends s and checks the next lines are exactly want.
func (s *exScript) do(send string, want ...string) {
	s.t.Helper()
	if send != "" {
		if _, err := io.WriteString(s.conn, send); err != nil {
			s.t.Fatalf("write %q: %v", send, err)
		}
	}
	for _, w := range want {
		s.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		l, err := s.br.ReadString('\n')
		if err != nil || l != w+"\r\n" {
			s.t.Fatalf("after %q: got %q, %v, want %q", send, l, err, w)
		}
	}
}

func (s *exScript) closed() {
	s.t.Helper()
	s.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, err := io.ReadAll(s.br); err != nil || len(rest) != 0 {
		s.t.Fatalf("want the connection closed, got %q, %v", rest, err)
	}
}

// TestExchangeWire checks the exact wire forms over STARTTLS: the greeting,
// both capability lists, LOGINDISABLED, the bare "+", the cancel, the code-less
// NO, a shared-mailbox login in a literal, SELECT and LOGOUT.
func TestExchangeWire(t *testing.T) {
	e := StartExchange(t, ExchangeOptions{Shared: exShared})
	s := dialExchange(t, e.Addr, nil)
	s.do("", "* OK The Microsoft Exchange IMAP4 service is ready.")
	s.do("a CAPABILITY\r\n",
		"* CAPABILITY IMAP4 IMAP4rev1 LOGINDISABLED STARTTLS UIDPLUS MOVE ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+",
		"a OK CAPABILITY completed.")
	s.do("b LOGIN alice alice-secret\r\n", "b BAD Command received in Invalid state.")
	s.do("c STARTTLS\r\n", "c OK Begin TLS negotiation now.")
	tc := tls.Client(s.conn, &tls.Config{RootCAs: e.CA.Pool(), ServerName: "localhost"})
	s.conn, s.br = tc, bufio.NewReader(tc)
	s.do("d CAPABILITY\r\n",
		"* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=NTLM AUTH=GSSAPI UIDPLUS MOVE ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+",
		"d OK CAPABILITY completed.")
	s.do("e ID (\"name\" \"test\")\r\n", `* ID ("name" "Microsoft Exchange IMAP4" "version" "15.1")`, "e OK ID completed.")
	s.do("f AUTHENTICATE PLAIN\r\n", "+")
	s.do("*\r\n", "f NO The AUTH protocol exchange was canceled by the client.")
	s.do("g AUTHENTICATE PLAIN "+b64("\x00alice\x00alice-secret")+"\r\n", "g BAD Command Argument Error. 11")
	s.do("h LOGIN alice wrong\r\n", "h NO LOGIN failed.")
	s.do("i AUTHENTICATE PLAIN\r\n", "+")
	s.do(b64("\x00alice\x00wrong")+"\r\n", "i NO AUTHENTICATE failed.")
	shared := `alice@example.com\sales@example.com`
	s.do("j LOGIN {35}\r\n", "+ Ready for additional command text.")
	s.do(shared+" \"alice-secret\"\r\n", "j OK LOGIN completed.")
	s.do("k0 CAPABILITY\r\n",
		"* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=NTLM AUTH=GSSAPI UIDPLUS MOVE ID UNSELECT XPROXY3 CHILDREN IDLE NAMESPACE LITERAL+",
		"k0 OK CAPABILITY completed.")
	s.do("k SELECT INBOX\r\n", "* 0 EXISTS", "* 0 RECENT")
	s.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for l := ""; !strings.HasPrefix(l, "k "); {
		l, _ = s.br.ReadString('\n')
		if l == "" {
			t.Fatal("no reply to SELECT")
		}
	}
	s.do("l LOGOUT\r\n", "* BYE Microsoft Exchange Server IMAP4 server signing off.", "l OK LOGOUT completed.")
	s.closed()

	logins := e.Logins()
	if len(logins) != 3 || logins[2].User != shared || logins[2].Mailbox != "sales" || logins[2].Mech != "LOGIN" {
		t.Errorf("Logins() = %+v, want the third to be %q opening sales", logins, shared)
	}
}

// TestExchangeClient logs in with go-imap's client over implicit TLS, with
// SASL-IR, and selects INBOX.
func TestExchangeClient(t *testing.T) {
	e := StartExchange(t, ExchangeOptions{SASLIR: true})
	c, err := imapclient.DialTLS(e.TLSAddr, &imapclient.Options{TLSConfig: &tls.Config{RootCAs: e.CA.Pool(), ServerName: "localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Caps().Has("SASL-IR") || !c.Caps().Has("AUTH=PLAIN") {
		t.Errorf("caps on 993 = %v, want SASL-IR and AUTH=PLAIN", c.Caps())
	}
	if err := c.Login(`EXAMPLE\bob`, "bob secret with spaces").Wait(); err != nil {
		t.Fatalf("Login: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatalf("LOGOUT: %v", err)
	}
}

// TestExchangeOutagesAndLimits: outage replies whatever the password, and the
// BYE after MaxFailedLogins.
func TestExchangeOutagesAndLimits(t *testing.T) {
	e := StartExchange(t, ExchangeOptions{MaxFailedLogins: 2})
	conf := &tls.Config{RootCAs: e.CA.Pool(), ServerName: "localhost"}
	open := func() *exScript {
		s := dialExchange(t, e.TLSAddr, conf)
		s.do("", "* OK The Microsoft Exchange IMAP4 service is ready.")
		return s
	}
	s := open()
	s.do("a LOGIN alice wrong\r\n", "a NO LOGIN failed.")
	s.do("b LOGIN alice wrong\r\n", "b NO LOGIN failed.", "* BYE Connection is closed. 14")
	s.closed()

	e.SetOutage(OutageNO)
	s = open()
	s.do("a LOGIN alice alice-secret\r\n", "a NO Server Unavailable. 15")
	e.SetOutage(OutageNOBye)
	s.do("b LOGIN alice alice-secret\r\n", "b NO Server Unavailable. 15", "* BYE Connection closed.")
	s.closed()
	e.SetOutage(OutageNotConnected)
	s = open()
	s.do("a LOGIN alice wrong\r\n", "a NO LOGIN failed.")
	s.do("b LOGIN alice alice-secret\r\n", "b OK LOGIN completed.")
	s.do("c NOOP\r\n", "c OK NOOP completed.")
	s.do("d NAMESPACE\r\n", "d BAD User is authenticated but not connected.")
	s.do("e SELECT INBOX\r\n", "e BAD User is authenticated but not connected.", "* BYE Connection closed. 14")
	s.closed()
	e.SetOutage(Up)
	s = open()
	s.do("b LOGIN alice alice-secret\r\n", "b OK LOGIN completed.")
}

func TestExchangeCheck(t *testing.T) {
	e := &Exchange{o: ExchangeOptions{Users: DefaultUsers(), Shared: exShared}}
	cases := []struct {
		user, authzid, pass, want string
	}{
		{"alice", "", "alice-secret", "alice"},
		{"Alice@Example.com", "", "alice-secret", "alice"},
		{`EXAMPLE\alice`, "", "alice-secret", "alice"},
		{`alice@example.com\sales@example.com`, "", "alice-secret", "sales"},
		{`alice@example.com/sales`, "", "alice-secret", "sales"},
		{`EXAMPLE\alice\sales`, "", "alice-secret", "sales"},
		{"alice", "sales@example.com", "alice-secret", "sales"},
		{`bob@example.com\sales`, "", "bob secret with spaces", ""}, // not a delegate
		{`OTHER\alice`, "", "alice-secret", ""},
		{"alice@other.example", "", "alice-secret", ""},
		{`alice\sales`, "", "alice-secret", ""}, // "alice" read as a domain
		{"alice", "", "wrong", ""},
		{"sales", "", "", ""},
	}
	for _, tc := range cases {
		if got := e.check(ExchangeLogin{User: tc.user, Authzid: tc.authzid}, tc.pass); got != tc.want {
			t.Errorf("check(%q, authzid %q) = %q, want %q", tc.user, tc.authzid, got, tc.want)
		}
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
