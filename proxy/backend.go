package proxy

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/imapgw/imapgw/backend"
	"github.com/imapgw/imapgw/conf"
)

// backendConn is a backend connection during login: what backend.Dial
// returned (greeted, TLS and PROXY header done), and the server it belongs to.
type backendConn struct {
	conn   net.Conn
	br     *bufio.Reader
	caps   []string
	server *backend.Server
	// challenge relays a continuation the backend sends after the whole OAuth
	// message (its error challenge) to the client and returns the answer; nil
	// for other logins and once used.
	challenge func(text string) (string, error)
	// warm: taken ready from the pool (backend.warm_connections), so its
	// server may have died or hung since it greeted. Until the first line
	// of the answer arrives, the wait is connect_timeout, not login_timeout.
	warm bool
	sent time.Time // when the credentials went out
}

func newBackendConn(c *backend.Conn, srv *backend.Server) *backendConn {
	// c.Conn, not c: the relay looks through *tls.Conn to the socket to wait
	// for data without holding a buffer.
	return &backendConn{conn: c.Conn, br: c.R, caps: c.Caps, server: srv}
}

// Login outcomes, also the imapgw_logins_total label values.
const (
	outcomeOK          = "ok"
	outcomeFailed      = "failed"   // wrong credentials: counted by the policy
	outcomeRejected    = "rejected" // a NO with another code (EXPIRED, …): passed on, not counted
	outcomeUnavailable = "error"    // backend down, slow, or confused
	outcomeTimeout     = "timeout"  // no answer to the credentials within login_timeout: not counted
	outcomeRefused     = "refused"  // the policy said no; the backend never saw it
)

type loginResult struct {
	outcome  string
	st       status   // the backend's tagged reply (OK, NO)
	caps     string   // post-login capabilities
	untagged []string // other untagged responses, forwarded before the OK
	err      error    // why, for the log (outcomeUnavailable)
	bc       *backendConn
	server   *backend.Server // the server that answered; nil when none could be dialed

	challenged bool // an OAuth token drew the backend's error challenge
	// lost: the warm connection closed, failed or stayed silent for
	// connect_timeout before answering anything; why.
	lost error
}

// errBackend marks an answer from the backend that makes no sense here.
var errBackend = errors.New("unexpected backend response")

// errLoginTimeout is the reason logged when the backend took the credentials and
// did not answer within login_timeout.
var errLoginTimeout = errors.New("login reply timeout")

// errNoBackend is the reason logged when no server is up.
var errNoBackend = errors.New("no backend server up")

// backendLogin sends the login to the user's server, or to the next in the
// pool's order when one refuses or never greets (the pool gets a strike and the
// login goes on), then replays the credentials once. Every step up to the
// credentials is bounded by backend.connect_timeout per server, the answer to
// them by backend.login_timeout; once they are sent, the answer stands. The
// one exception is a warm connection (backend.warm_connections) that never
// answered at all: its server died or hung after greeting, which counts as a
// server that never greeted. A dead one gets its server one fresh dial, a
// silent one sends the login on to the next server.
func (s *session) backendLogin(ctx context.Context, c creds) loginResult {
	var buf [8]*backend.Server // no allocation for up to 8 servers
	user := c.mailbox()
	order, _ := s.srv.pool.RouteInto(buf[:0], user)
	if len(order) == 0 {
		return loginResult{outcome: outcomeUnavailable, err: errNoBackend}
	}
	var errs []error
	warm := true
	for from := 0; from < len(order) && ctx.Err() == nil; {
		bc, at, err := s.dialRoute(ctx, user, order, from, warm, &errs)
		if err != nil {
			break
		}
		res := s.replayLogin(bc, c)
		if res.lost != nil {
			bc.conn.Close()
			errs = append(errs, res.lost)
			from, warm = at, false
			if errors.Is(res.lost, os.ErrDeadlineExceeded) {
				// Silent: as a server that never greets. A closed one is
				// judged by the fresh dial.
				s.srv.pool.DialFailed(bc.server, res.lost)
				from++
			}
			continue
		}
		res.server = bc.server
		s.srv.pool.CountLogin(bc.server, res.outcome)
		if res.outcome != outcomeOK {
			bc.conn.Close()
			return res
		}
		res.bc = bc
		return res
	}
	err := errors.Join(errs...)
	if err == nil {
		err = ctx.Err() // shut down before any server was tried
	}
	return loginResult{outcome: outcomeUnavailable, err: err}
}

// dialRoute returns a connection to the first server of order, from index
// from on, that greets, and that server's index: a warm connection when warm
// is set and the pool has one ready, else a dial. Failed dials go to errs.
func (s *session) dialRoute(ctx context.Context, user string, order []*backend.Server, from int, warm bool, errs *[]error) (*backendConn, int, error) {
	local := addrPort(s.raw.LocalAddr())
	for i := from; i < len(order); i++ {
		srv := order[i]
		s.setBackend(srv.Name)
		var c *backend.Conn
		if warm {
			c = s.srv.pool.TakeWarm(srv)
		}
		taken := c != nil
		if !taken {
			var err error
			if c, err = srv.DialFrom(ctx, s.client, local); err != nil {
				s.srv.pool.DialFailed(srv, err)
				*errs = append(*errs, err)
				if ctx.Err() != nil {
					break
				}
				continue
			}
			s.srv.m.dial.Observe(c.Connected.Seconds())
		}
		if i > 0 {
			s.srv.pool.CountFailover(user, order[i-1], srv)
		}
		s.srv.pool.NoteCaps(srv, c.Caps)
		bc := newBackendConn(c, srv)
		bc.warm = taken
		return bc, i, nil
	}
	return nil, 0, errors.Join(*errs...)
}

// command sends a command with no literals and waits for its tagged reply,
// keeping the capabilities of any untagged CAPABILITY.
func (bc *backendConn) command(tag, cmd string) (status, error) {
	if _, err := fmt.Fprintf(bc.conn, "%s %s\r\n", tag, cmd); err != nil {
		return status{}, fmt.Errorf("backend %s: %w", cmd, err)
	}
	rr := backend.NewReplyReader(bc.br)
	for {
		line, err := rr.Next()
		if err != nil {
			return status{}, fmt.Errorf("backend %s: %w", cmd, err)
		}
		st := parseStatus(line)
		switch {
		case st.Tag == tag:
			if st.Kind != "OK" {
				return st, fmt.Errorf("%w: %s: %s", errBackend, cmd, sanitize(st.String(), 120))
			}
			return st, nil
		case st.Tag == "*" && st.Kind == "CAPABILITY":
			bc.caps = strings.Fields(line)[2:]
		case st.Tag == "*" && st.Kind == "BYE":
			return st, fmt.Errorf("%w: BYE %s", errBackend, sanitize(st.Text, 120))
		}
	}
}

func (bc *backendConn) capability() error {
	_, err := bc.command("gwc", "CAPABILITY")
	if err == nil && bc.caps == nil {
		err = fmt.Errorf("%w: no capabilities", errBackend)
	}
	return err
}

func (bc *backendConn) has(capability string) bool {
	for _, c := range bc.caps {
		if strings.EqualFold(c, capability) {
			return true
		}
	}
	return false
}

// replayLogin sends ID (when configured) and the login in one write, then reads
// the replies, answering continuation requests with the next chunk.
func (s *session) replayLogin(bc *backendConn, c creds) loginResult {
	chunks, err := bc.loginChunks(c)
	if err != nil {
		return loginResult{outcome: outcomeUnavailable, err: err}
	}
	if c.oauth != nil {
		bc.challenge = s.relayChallenge
	}
	id := false
	if bc.server.ClientIP == conf.ClientIPID {
		if bc.has("ID") {
			chunks[0] = s.idCommand() + chunks[0]
			id = true
		} else {
			s.logger().Warn("backend does not advertise ID: the client's address is not passed on (set backend.client_ip)")
		}
	}
	if bc.warm && !id {
		// Something the server answers at once, before the credentials
		// (which Dovecot may answer only after its penalty): a warm
		// connection that answers nothing within connect_timeout is dead.
		chunks[0] = "gwn NOOP\r\n" + chunks[0]
	}
	// Dovecot answers a failed login only after its auth penalty for the client's
	// address (up to 15 s) plus auth_failure_delay: connect_timeout would turn an
	// attacker's failures into backend errors the policy never counts (issue 10).
	bc.sent = time.Now()
	bc.conn.SetDeadline(bc.sent.Add(bc.firstWait()))
	if _, err := bc.conn.Write([]byte(chunks[0])); err != nil {
		if bc.warm {
			return loginResult{outcome: outcomeUnavailable, lost: fmt.Errorf("warm connection: writing login: %w", err)}
		}
		return loginResult{outcome: outcomeUnavailable, err: fmt.Errorf("writing login: %w", err)}
	}
	return bc.loginReply(chunks[1:])
}

// firstWait bounds the wait for the first line of the answer to the login:
// login_timeout, or on a warm connection connect_timeout (its ID or NOOP is
// answered at once by a live server), whichever is shorter.
func (bc *backendConn) firstWait() time.Duration {
	if bc.warm {
		return min(bc.server.ConnectTimeout, bc.server.LoginTimeout)
	}
	return bc.server.LoginTimeout
}

// idCommand passes the client's address in RFC 2971 ID fields, which Dovecot
// believes from login_trusted_networks.
func (s *session) idCommand() string {
	local := addrPort(s.raw.LocalAddr())
	return fmt.Sprintf("gwi ID (\"x-originating-ip\" %s \"x-originating-port\" \"%d\" \"x-connected-ip\" %s \"x-connected-port\" \"%d\" \"x-session-id\" %s)\r\n",
		quoteIMAP(s.client.Addr().String()), s.client.Port(), quoteIMAP(local.Addr().String()), local.Port(), quoteIMAP(s.id))
}

// loginChunks encodes the login. Each chunk after the first is sent only after
// a continuation request. AUTHENTICATE PLAIN with SASL-IR is preferred: one
// round trip and any bytes; otherwise LOGIN with quoted strings or literals.
func (bc *backendConn) loginChunks(c creds) ([]string, error) {
	if c.oauth != nil {
		return bc.oauthChunks(c)
	}
	plain := base64.StdEncoding.EncodeToString([]byte(c.authzid + "\x00" + c.user + "\x00" + string(c.password)))
	switch {
	case bc.has("AUTH=PLAIN") && bc.has("SASL-IR"):
		return []string{"gwl AUTHENTICATE PLAIN " + plain + "\r\n"}, nil
	case bc.has("AUTH=PLAIN") && (c.authzid != "" || bc.has("LOGINDISABLED")):
		return []string{"gwl AUTHENTICATE PLAIN\r\n", plain + "\r\n"}, nil
	case c.authzid != "":
		return nil, fmt.Errorf("%w: backend lacks AUTH=PLAIN, needed for an authorization identity", errBackend)
	case bc.has("LOGINDISABLED"):
		return nil, fmt.Errorf("%w: backend advertises LOGINDISABLED (set backend.tls)", errBackend)
	}
	chunks := []string{"gwl LOGIN "}
	literalPlus := bc.has("LITERAL+")
	for i, arg := range [][]byte{[]byte(c.user), c.password} {
		sep := " "
		if i == 1 {
			sep = "\r\n"
		}
		last := len(chunks) - 1
		switch {
		case isQuotable(arg):
			chunks[last] += quoteIMAP(string(arg)) + sep
		case literalPlus:
			chunks[last] += "{" + strconv.Itoa(len(arg)) + "+}\r\n" + string(arg) + sep
		default:
			chunks[last] += "{" + strconv.Itoa(len(arg)) + "}\r\n"
			chunks = append(chunks, string(arg)+sep)
		}
	}
	return chunks, nil
}

// isQuotable: 7-bit, no CR, LF or NUL (RFC 9051 quoted); 8-bit goes as a literal
// since IMAP4rev1 servers only accept UTF-8 in quoted strings after ENABLE.
func isQuotable(b []byte) bool {
	for _, c := range b {
		if c == 0 || c == '\r' || c == '\n' || c >= 0x80 {
			return false
		}
	}
	return true
}

// loginReply reads the backend's answer to the login and classifies it.
func (bc *backendConn) loginReply(rest []string) loginResult {
	var res loginResult
	rr := backend.NewReplyReader(bc.br)
	for first := true; ; first = false {
		line, err := rr.Next()
		if err != nil && first && bc.warm {
			res.outcome, res.lost = outcomeUnavailable, fmt.Errorf("warm connection: reading login reply: %w", err)
			return res
		}
		if first && bc.warm {
			if st := parseStatus(line); st.Tag == "*" && st.Kind == "BYE" {
				// Said before it read the login: the server was closing
				// the connection (a restart, its own timeout).
				res.outcome, res.lost = outcomeUnavailable, fmt.Errorf("warm connection: BYE %s", sanitize(st.Text, 120))
				return res
			}
			bc.conn.SetDeadline(bc.sent.Add(bc.server.LoginTimeout))
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			res.outcome, res.err = outcomeTimeout, errLoginTimeout
			return res
		}
		if err != nil {
			res.outcome, res.err = outcomeUnavailable, fmt.Errorf("reading login reply: %w", err)
			return res
		}
		st := parseStatus(line)
		switch {
		case st.Tag == "+" && len(rest) == 0 && bc.challenge != nil:
			res.challenged = true
			if err := bc.answerChallenge(st.Text); err != nil {
				res.outcome, res.st = outcomeFailed, status{Kind: "NO", Text: err.Error()}
				return res
			}
		case st.Tag == "+":
			if len(rest) == 0 {
				bc.conn.Write([]byte("*\r\n")) // cancel: nothing more to send
				continue
			}
			if _, err := bc.conn.Write([]byte(rest[0])); err != nil {
				res.outcome, res.err = outcomeUnavailable, err
				return res
			}
			rest = rest[1:]
		case st.Tag == "*":
			bc.untagged(&res, st, line)
			if st.Kind == "BYE" {
				res.outcome, res.err = outcomeUnavailable, fmt.Errorf("%w: BYE %s", errBackend, sanitize(st.Text, 120))
				return res
			}
		case st.Tag == "gwi", st.Tag == "gwn":
			// ID refused: the login goes on without the client's address.
			// gwn: the warm connection's NOOP.
		case st.Tag == "gwl":
			res.st = st
			res.outcome = classify(st)
			if res.challenged && res.outcome != outcomeOK {
				// The token was refused with the error challenge; whatever the
				// tagged reply to the client's answer or cancel, it is a failure.
				res.outcome = outcomeFailed
			}
			if res.outcome == outcomeUnavailable {
				res.err = fmt.Errorf("%w: %s", errBackend, sanitize(st.String(), 120))
			}
			if st.Code == "CAPABILITY" {
				res.caps = st.Args
			}
			return res
		}
	}
}

func (bc *backendConn) untagged(res *loginResult, st status, line string) {
	switch st.Kind {
	case "CAPABILITY":
		res.caps = strings.TrimSpace(line[len("* CAPABILITY"):])
	case "ID", "BYE":
	default:
		res.untagged = append(res.untagged, line)
	}
}

// classify maps the backend's tagged reply to a login outcome. Only
// AUTHENTICATIONFAILED or a code-less NO says the credentials were wrong
// (RFC 5530); other codes are the backend's to explain and not the client's fault.
//
// Exchange sends no response codes at all (NOTES.md, "Exchange"): its failed
// password is a code-less NO ("NO LOGIN failed.", "NO AUTHENTICATE failed."),
// but so is its outage, "NO Server Unavailable. 15" (sometimes followed by
// "* BYE Connection closed."). Counting that as a failure would tarpit and ban
// every user retrying through an outage, so known code-less outage texts are
// unavailable. (Its other outage reply, "BAD User is authenticated but not
// connected.", answers the commands after a successful login; were it the
// login's answer, it is a BAD: unavailable like every BAD.)
func classify(st status) string {
	switch st.Kind {
	case "OK":
		return outcomeOK
	case "NO":
		if st.Code == "" && codelessUnavailable(st.Text) {
			return outcomeUnavailable
		}
		if st.Code == "" || st.Code == "AUTHENTICATIONFAILED" {
			return outcomeFailed
		}
		if st.Code == "UNAVAILABLE" || st.Code == "SERVERBUG" {
			return outcomeUnavailable
		}
		return outcomeRejected
	default:
		return outcomeUnavailable
	}
}

// codelessUnavailable recognises a code-less NO that is not about the
// credentials: Exchange's outage ("Server Unavailable. 15", matched without its
// diagnostic number), and Exchange's answer to the gateway cancelling a SASL
// exchange (it cancels only when a confused backend asks for more than the
// mechanism has).
func codelessUnavailable(text string) bool {
	for _, prefix := range []string{"server unavailable", "the auth protocol exchange was canceled"} {
		if len(text) >= len(prefix) && strings.EqualFold(text[:len(prefix)], prefix) {
			return true
		}
	}
	return false
}

// postLoginCaps returns the capabilities to put in the client's OK: from the
// backend's reply, or by asking.
func (bc *backendConn) postLoginCaps(res *loginResult) string {
	if res.caps != "" {
		return res.caps
	}
	bc.caps = nil
	if err := bc.capability(); err != nil {
		return ""
	}
	return strings.Join(bc.caps, " ")
}
