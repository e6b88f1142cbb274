package testbed

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// Exchange 2016/2019 IMAP4 wire forms, from public transcripts and Microsoft's
// documentation (see /work/shared/NOTES.md, "Exchange"; the number of independent
// sources is in brackets). Forms marked "testbed" were seen nowhere: they are
// this server's choice where Exchange's is unknown.
const (
	exGreeting     = "* OK The Microsoft Exchange IMAP4 service is ready."       // [5]
	exStartTLS     = "OK Begin TLS negotiation now."                             // [4]
	exLoginOK      = "OK LOGIN completed."                                       // [2-4]
	exLoginNO      = "NO LOGIN failed."                                          // [6]
	exAuthOK       = "OK AUTHENTICATE completed."                                // [2-4]
	exAuthNO       = "NO AUTHENTICATE failed."                                   // [5]
	exCancelled    = "NO The AUTH protocol exchange was canceled by the client." // [2]
	exInvalidState = "BAD Command received in Invalid state."                    // [2], for LOGIN under LOGINDISABLED
	exCommandError = "BAD Command Error. 10"                                     // [2], unknown command
	exArgError     = "BAD Command Argument Error. 11"                            // [2], bad arguments
	exTooManyFails = "* BYE Connection is closed. 14"                            // [1], after MaxFailedLoginAttempts
	exIdleTimeout  = "* BYE Connection is closed. 13"                            // [1]
	exLiteralCont  = "+ Ready for additional command text."                      // MailKit logs [2]
	exSignOff      = "* BYE Microsoft Exchange Server IMAP4 server signing off." // MailKit logs [2]

	// exPreauthTimeout is Exchange's default pre-authentication timeout (1 min).
	exPreauthTimeout = time.Minute
)

// exCaps builds the CAPABILITY list. Before TLS (SecureLogin, the default) there
// is no AUTH= and LOGINDISABLED; after STARTTLS or on 993, AUTH=PLAIN NTLM GSSAPI.
// 2016/2019 add UNSELECT, and SASL-IR in one source [1]. After login Exchange
// 2013 adds XPROXY3 [1] (Exchange Online other private ones [3]): a client must
// ask again rather than keep the list it had before login.
func exCaps(tls, saslIR, authed bool) string {
	caps := "IMAP4 IMAP4rev1"
	if tls {
		caps += " AUTH=PLAIN AUTH=NTLM AUTH=GSSAPI"
	} else {
		caps += " LOGINDISABLED STARTTLS"
	}
	if saslIR {
		caps += " SASL-IR"
	}
	caps += " UIDPLUS MOVE ID UNSELECT"
	if authed {
		caps += " XPROXY3"
	}
	return caps + " CHILDREN IDLE NAMESPACE LITERAL+"
}

// Outage is how the Exchange testbed answers credentials while its mailbox
// servers are unreachable, whatever the password.
type Outage int

const (
	// Up checks credentials.
	Up Outage = iota
	// OutageNO answers "NO Server Unavailable. 15" [4]: no response code.
	OutageNO
	// OutageNOBye answers that NO, then "* BYE Connection closed." and closes.
	OutageNOBye
	// OutageNotConnected accepts good credentials and CAPABILITY, then answers
	// mailbox commands (SELECT, LIST, NAMESPACE, …) "BAD User is authenticated
	// but not connected.", the second one followed by "* BYE Connection closed.
	// 14" [5]: the mailbox is unreachable, which the login does not reveal.
	OutageNotConnected
)

// ExchangeDomain and ExchangeNetBIOS name the testbed's one domain: a user alice
// logs in as "alice", "alice@example.com" or "EXAMPLE\alice".
const (
	ExchangeDomain  = "example.com"
	ExchangeNetBIOS = "EXAMPLE"
)

// ExchangeOptions configures StartExchange. The zero value serves the
// DefaultUsers over STARTTLS and implicit TLS, without SASL-IR.
type ExchangeOptions struct {
	// Users maps mailbox aliases (lower case, no domain) to passwords. Nil means
	// DefaultUsers().
	Users map[string]string
	// Shared maps a shared mailbox's alias to the users who may open it with their
	// own password ("delegates"). A shared mailbox has no password of its own.
	Shared map[string][]string
	// CA issues the server certificate for "localhost" and 127.0.0.1. Nil means a
	// new CA, exposed as Exchange.CA.
	CA *CA
	// SASLIR advertises SASL-IR, as one transcript shows 2016/2019 doing [1].
	// Without it an AUTHENTICATE with an initial response is refused.
	SASLIR bool
	// MaxFailedLogins closes a connection after that many failed logins on it
	// (NO, then "* BYE Connection is closed. 14"). Zero means never.
	MaxFailedLogins int
}

// ExchangeLogin is one set of credentials the testbed checked.
type ExchangeLogin struct {
	// User is the login name exactly as it arrived, after unquoting or base64.
	User string
	// Authzid is AUTHENTICATE PLAIN's authorization identity, if any.
	Authzid string
	// Mech is "LOGIN" or "PLAIN".
	Mech string
	// Mailbox is the mailbox opened ("alice", "sales"), or "" when refused.
	Mailbox string
	// Reply is the tagged reply without its tag, e.g. "NO LOGIN failed.".
	Reply string
}

// Exchange is an IMAP server on 127.0.0.1 that answers as Exchange 2016/2019
// IMAP4 does: its greeting, capabilities, code-less replies, shared-mailbox
// login names and outages. It serves just enough after login (CAPABILITY, NOOP,
// SELECT INBOX, IDLE, LOGOUT) for a real client; INBOX is always empty.
type Exchange struct {
	// Addr is the plain listener (port 143): STARTTLS, LOGINDISABLED before it.
	Addr string
	// TLSAddr is the implicit-TLS listener (port 993).
	TLSAddr string
	// CA issued the server certificate.
	CA *CA

	o       ExchangeOptions
	tlsConf *tls.Config
	lns     []net.Listener
	wg      sync.WaitGroup

	mu     sync.Mutex
	outage Outage
	logins []ExchangeLogin
	conns  map[net.Conn]struct{}
	closed bool
}

// StartExchange starts the server; it is stopped in t.Cleanup.
func StartExchange(t testing.TB, o ExchangeOptions) *Exchange {
	t.Helper()
	if o.Users == nil {
		o.Users = DefaultUsers()
	}
	o.Users = maps.Clone(o.Users)
	if o.CA == nil {
		o.CA = NewCA(t)
	}
	e := &Exchange{CA: o.CA, o: o, conns: map[net.Conn]struct{}{}}
	leaf := o.CA.Leaf(t, "localhost", "127.0.0.1")
	e.tlsConf = &tls.Config{Certificates: []tls.Certificate{leaf}, MinVersion: tls.VersionTLS12}
	plain := e.listen(t)
	e.Addr = plain.Addr().String()
	e.TLSAddr = e.listen(t).Addr().String()
	t.Cleanup(e.Close)
	e.serve(plain, false)
	e.serve(e.lns[1], true)
	return e
}

func (e *Exchange) listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("exchange testbed: %v", err)
	}
	e.lns = append(e.lns, ln)
	return ln
}

// SetOutage changes how the following logins are answered.
func (e *Exchange) SetOutage(o Outage) {
	e.mu.Lock()
	e.outage = o
	e.mu.Unlock()
}

// Logins returns the credentials checked so far, oldest first. A login is
// recorded before its reply is sent.
func (e *Exchange) Logins() []ExchangeLogin {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]ExchangeLogin(nil), e.logins...)
}

// Close stops the listeners, closes every connection and waits for them.
func (e *Exchange) Close() {
	e.mu.Lock()
	e.closed = true
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	for _, ln := range e.lns {
		ln.Close()
	}
	e.wg.Wait()
}

func (e *Exchange) serve(ln net.Listener, implicit bool) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			if !e.track(conn) {
				conn.Close()
				return
			}
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer e.untrack(conn)
				c := &exConn{e: e, conn: conn}
				if implicit {
					c.conn, c.tls = tls.Server(conn, e.tlsConf), true
				}
				c.br = bufio.NewReader(c.conn)
				c.serve()
			}()
		}
	}()
}

func (e *Exchange) track(c net.Conn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	e.conns[c] = struct{}{}
	return true
}

func (e *Exchange) untrack(c net.Conn) {
	c.Close()
	e.mu.Lock()
	delete(e.conns, c)
	e.mu.Unlock()
}

func (e *Exchange) record(l ExchangeLogin) {
	e.mu.Lock()
	e.logins = append(e.logins, l)
	e.mu.Unlock()
}

func (e *Exchange) currentOutage() Outage {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.outage
}

// exConn is one client connection.
type exConn struct {
	e        *Exchange
	conn     net.Conn
	br       *bufio.Reader
	tls      bool
	mailbox  string // "" until logged in
	failures int
	// notConnected: logged in during OutageNotConnected; badCount counts its BADs.
	notConnected bool
	badCount     int
}

// errClose ends a connection after its last reply.
var errClose = errors.New("close")

func (c *exConn) serve() {
	if c.writeLine(exGreeting) != nil {
		return
	}
	for {
		timeout := exPreauthTimeout
		if c.mailbox != "" {
			timeout = 30 * time.Minute
		}
		c.conn.SetReadDeadline(time.Now().Add(timeout))
		args, err := c.readCommand()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.writeLine(exIdleTimeout)
			return
		}
		if errors.Is(err, errSyntax) {
			if len(args) > 0 {
				c.reply(string(args[0]), exArgError)
			} else {
				c.writeLine("* " + exCommandError)
			}
			continue
		}
		if err != nil || len(args) == 0 {
			return
		}
		if len(args) < 2 {
			c.reply(string(args[0]), exCommandError)
			continue
		}
		if c.command(string(args[0]), strings.ToUpper(string(args[1])), args[2:]) != nil {
			return
		}
	}
}

func (c *exConn) command(tag, name string, args [][]byte) error {
	switch name {
	case "CAPABILITY":
		return c.replies(tag, "* CAPABILITY "+exCaps(c.tls, c.e.o.SASLIR, c.mailbox != ""), "OK CAPABILITY completed.")
	case "NOOP":
		return c.reply(tag, "OK NOOP completed.")
	case "LOGOUT":
		c.replies(tag, exSignOff, "OK LOGOUT completed.")
		return errClose
	case "ID":
		return c.id(tag, args)
	}
	if c.mailbox == "" {
		return c.notAuthenticated(tag, name, args)
	}
	return c.authenticated(tag, name, args)
}

func (c *exConn) notAuthenticated(tag, name string, args [][]byte) error {
	switch name {
	case "STARTTLS":
		if c.tls || len(args) != 0 {
			return c.reply(tag, exInvalidState)
		}
		if err := c.reply(tag, exStartTLS); err != nil {
			return err
		}
		tc := tls.Server(c.conn, c.e.tlsConf)
		c.conn, c.br, c.tls = tc, bufio.NewReader(tc), true
		return nil
	case "LOGIN":
		if !c.tls {
			return c.reply(tag, exInvalidState)
		}
		if len(args) != 2 {
			return c.reply(tag, exArgError)
		}
		return c.login(tag, ExchangeLogin{User: string(args[0]), Mech: "LOGIN"}, string(args[1]))
	case "AUTHENTICATE":
		if !c.tls { // testbed: no AUTH= is offered before TLS
			return c.reply(tag, exInvalidState)
		}
		return c.authenticate(tag, args)
	case "SELECT", "EXAMINE", "IDLE":
		return c.reply(tag, exInvalidState)
	}
	return c.reply(tag, exCommandError)
}

func (c *exConn) authenticated(tag, name string, args [][]byte) error {
	if c.notConnected {
		return c.unreachable(tag)
	}
	switch name {
	case "SELECT", "EXAMINE":
		if len(args) != 1 || !strings.EqualFold(string(args[0]), "INBOX") {
			return c.reply(tag, "NO "+name+" failed.") // testbed
		}
		mode := "READ-WRITE"
		if name == "EXAMINE" {
			mode = "READ-ONLY"
		}
		return c.replies(tag, "* 0 EXISTS", "* 0 RECENT",
			`* FLAGS (\Seen \Answered \Flagged \Deleted \Draft $MDNSent)`,
			`* OK [PERMANENTFLAGS (\Seen \Answered \Flagged \Deleted \Draft $MDNSent)] Permanent flags`,
			"* OK [UIDVALIDITY 14] UIDVALIDITY value", "* OK [UIDNEXT 1] The next unique identifier value",
			"OK ["+mode+"] "+name+" completed.")
	case "IDLE":
		if err := c.writeLine("+ IDLE accepted, awaiting DONE command."); err != nil {
			return err
		}
		line, err := c.readLine()
		if err != nil {
			return err
		}
		if !strings.EqualFold(string(line), "DONE") {
			return c.reply(tag, exArgError)
		}
		return c.reply(tag, "OK IDLE completed.")
	case "LOGIN", "AUTHENTICATE", "STARTTLS":
		return c.reply(tag, exInvalidState)
	}
	return c.reply(tag, exCommandError)
}

// unreachable answers a mailbox command while the mailbox cannot be reached.
func (c *exConn) unreachable(tag string) error {
	if err := c.reply(tag, "BAD User is authenticated but not connected."); err != nil {
		return err
	}
	if c.badCount++; c.badCount >= 2 {
		c.writeLine("* BYE Connection closed. 14")
		return errClose
	}
	return nil
}

// id answers RFC 2971 ID; Exchange rejects an empty list [1] (testbed: with
// its argument error).
func (c *exConn) id(tag string, args [][]byte) error {
	if len(args) == 2 && string(args[0]) == "(" && string(args[1]) == ")" {
		return c.reply(tag, exArgError)
	}
	return c.replies(tag, `* ID ("name" "Microsoft Exchange IMAP4" "version" "15.1")`, "OK ID completed.")
}

// authenticate runs a SASL exchange. PLAIN is checked; NTLM and GSSAPI get one
// bare "+" round (as Exchange sends it) and fail: the testbed speaks neither.
func (c *exConn) authenticate(tag string, args [][]byte) error {
	if len(args) < 1 || len(args) > 2 || (len(args) == 2 && !c.e.o.SASLIR) {
		return c.reply(tag, exArgError) // testbed: an IR without SASL-IR is refused
	}
	mech := strings.ToUpper(string(args[0]))
	if mech != "PLAIN" && mech != "NTLM" && mech != "GSSAPI" {
		return c.reply(tag, exArgError)
	}
	var resp []byte
	if len(args) == 2 {
		resp = args[1]
	} else {
		if err := c.writeLine("+"); err != nil { // bare, no trailing space [2-5]
			return err
		}
		line, err := c.readLine()
		if err != nil {
			return err
		}
		if string(line) == "*" {
			return c.reply(tag, exCancelled)
		}
		resp = line
	}
	msg, err := base64.StdEncoding.DecodeString(string(resp))
	parts := strings.Split(string(msg), "\x00")
	if mech != "PLAIN" || err != nil || len(parts) != 3 {
		return c.fail(tag, exAuthNO)
	}
	return c.login(tag, ExchangeLogin{User: parts[1], Authzid: parts[0], Mech: "PLAIN"}, parts[2])
}

// login checks credentials (or answers as the outage says), records them and
// replies.
func (c *exConn) login(tag string, l ExchangeLogin, password string) error {
	ok, no := exLoginOK, exLoginNO
	if l.Mech == "PLAIN" {
		ok, no = exAuthOK, exAuthNO
	}
	switch c.e.currentOutage() {
	case OutageNO:
		l.Reply = "NO Server Unavailable. 15"
	case OutageNOBye:
		l.Reply = "NO Server Unavailable. 15"
		c.e.record(l)
		c.replies(tag, l.Reply)
		c.writeLine("* BYE Connection closed.")
		return errClose
	default:
		l.Mailbox = c.e.check(l, password)
		l.Reply = no
		if l.Mailbox != "" {
			l.Reply = ok
		}
	}
	c.e.record(l)
	if l.Reply == no {
		return c.fail(tag, no)
	}
	c.mailbox = l.Mailbox
	c.notConnected = c.e.currentOutage() == OutageNotConnected
	return c.reply(tag, l.Reply)
}

// fail answers a failed login; after MaxFailedLogins on this connection the
// NO is followed by a BYE [1].
func (c *exConn) fail(tag, reply string) error {
	if err := c.reply(tag, reply); err != nil {
		return err
	}
	c.failures++
	if max := c.e.o.MaxFailedLogins; max > 0 && c.failures >= max {
		c.writeLine(exTooManyFails)
		return errClose
	}
	return nil
}

// check returns the mailbox the credentials open, or "". Exchange reads `\` as
// `/` in login names [3]: "user", "user@domain", "DOMAIN/user",
// "user@domain/shared", "DOMAIN/user/shared"; the shared part may carry the
// domain too. A delegate opens a shared mailbox with the delegate's own password.
// An authzid naming a shared mailbox opens it too (testbed).
func (e *Exchange) check(l ExchangeLogin, password string) string {
	parts := strings.Split(strings.ReplaceAll(l.User, `\`, "/"), "/")
	if len(parts) == 3 || (len(parts) == 2 && !strings.Contains(parts[0], "@")) {
		if !strings.EqualFold(parts[0], ExchangeNetBIOS) && !strings.EqualFold(parts[0], ExchangeDomain) {
			return ""
		}
		parts = parts[1:]
	}
	user := alias(parts[0])
	if want, ok := e.o.Users[user]; !ok || want != password || len(parts) > 2 {
		return ""
	}
	target := ""
	if len(parts) == 2 {
		target = alias(parts[1])
	}
	if l.Authzid != "" && l.Authzid != l.User {
		if target != "" {
			return ""
		}
		target = alias(l.Authzid)
	}
	if target == "" || target == user {
		return user
	}
	for _, d := range e.o.Shared[target] {
		if d == user {
			return target
		}
	}
	return ""
}

// alias strips the testbed's domain from a user or mailbox name.
func alias(name string) string {
	local, domain, found := strings.Cut(name, "@")
	if found && !strings.EqualFold(domain, ExchangeDomain) {
		return ""
	}
	return strings.ToLower(local)
}

func (c *exConn) reply(tag, text string) error { return c.writeLine(tag + " " + text) }

// replies writes untagged lines then the tagged one, in one write.
func (c *exConn) replies(tag string, lines ...string) error {
	var sb strings.Builder
	for i, l := range lines {
		if i == len(lines)-1 {
			l = tag + " " + l
		}
		sb.WriteString(l + "\r\n")
	}
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := c.conn.Write([]byte(sb.String()))
	return err
}

func (c *exConn) writeLine(s string) error {
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := fmt.Fprintf(c.conn, "%s\r\n", s)
	return err
}
