package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/proxy/imapwire"
)

// SessionInfo describes one session for the admin endpoint.
type SessionInfo struct {
	ID       string    `json:"id"`
	Client   string    `json:"client"`
	Listener string    `json:"listener"`
	User     string    `json:"user,omitempty"`
	Backend  string    `json:"backend,omitempty"`
	State    string    `json:"state"` // "preauth" or "relaying"
	Since    time.Time `json:"since"`
	BytesIn  int64     `json:"bytes_in"`  // client to backend, after login
	BytesOut int64     `json:"bytes_out"` // backend to client, after login
}

// Session states, also the imapgw_sessions label.
const (
	statePreauth  = "preauth"
	stateRelaying = "relaying"
)

// preauthBuffer is the size of the pre-auth read buffer; lines longer than it
// are still read (up to limits.max_line), in pieces.
const preauthBuffer = 2048

type session struct {
	srv     *Server
	cfg     *conf.Config // the config when the session began: a reload never changes a session midway
	lc      *conf.Listen
	id      string
	raw     net.Conn // the accepted socket
	conn    net.Conn // what the session reads and writes: raw, a prefixConn or a *tls.Conn
	client  netip.AddrPort
	since   time.Time
	release func()

	rd       *imapwire.Reader
	tls      bool
	first    bool // no command read yet: a non-IMAP line gets BYE
	saidBye  bool // a BYE was sent: close lingering, so that it arrives
	failures int
	inline   *relay // the relay direction runSession runs after run (startRelay); session goroutine only

	mu       sync.Mutex
	user     string
	backend  string
	state    string
	closed   bool
	bytesIn  atomic.Int64
	bytesOut atomic.Int64
	peer     net.Conn    // the backend, once relaying
	closedBy string      // why the gateway closed the relayed session (drain kick, move, kick)
	endedBy  string      // "client" or "backend": whose side of the relay ended first
	grace    *time.Timer // closes both sides halfCloseGrace after the first half-close
	relays   [2]*relay   // the two directions, once relaying: closing wakes them if parked

	poolEnd func() // tells the backend pool the relayed session ended
}

func newSession(srv *Server, lc *conf.Listen, raw, c net.Conn, client netip.AddrPort, release func()) *session {
	id := newID()
	return &session{
		srv: srv, cfg: srv.Config(), lc: lc, id: id, raw: raw, conn: c, client: client,
		since: time.Now(), release: release, state: statePreauth, first: true,
	}
}

// logger returns the server's logger with the session's id and client. It is
// built per line, not kept: an idle session should hold no more than it must.
func (s *session) logger() *slog.Logger {
	return s.srv.log.With("session", s.id, "client", s.client.String())
}

// logInfo writes an info line with the session's id and client first, as
// logger() would, without building a logger: the auth and session lines are
// two per login, the hot path of a login cycle (issue 16). It hands the
// record to the handler itself, with no caller's PC: Logger.Info would walk
// the stack for one (runtime.Callers, 0.8 % of the gateway's CPU at 64
// clients) that no handler of the gateway's prints.
func (s *session) logInfo(msg string, args ...any) {
	h := s.srv.log.Handler()
	if !h.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	r := slog.NewRecord(time.Now(), slog.LevelInfo, msg, 0)
	r.Add("session", s.id, "client", s.client.String())
	r.Add(args...)
	_ = h.Handle(context.Background(), r)
}

func newID() string {
	var b [10]byte
	rand.Read(b[:])
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

func (s *session) info() SessionInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return SessionInfo{
		ID: s.id, Client: s.client.String(), Listener: s.lc.Address, User: s.user,
		Backend: s.backend, State: s.state, Since: s.since,
		BytesIn: s.bytesIn.Load(), BytesOut: s.bytesOut.Load(),
	}
}

// runSession is what a worker runs for a new connection: the pre-auth life,
// then, after a login, the relay direction startRelay left to this goroutine.
func (s *session) runSession() {
	s.run()
	if r := s.inline; r != nil {
		s.inline = nil
		r.backendToClient()
	}
}

// run is the session's pre-auth life. On a successful login it starts the
// relay (startRelay) and returns.
func (s *session) run() {
	defer s.srv.recoverPanic(s.id)
	s.srv.m.preauth.Inc()
	// A shutdown interrupts the session's reads (Shutdown calls interrupt
	// on every tracked session, the linger included), rather than an
	// AfterFunc on the server's context per session: that registers and
	// unregisters each under the context's one lock, about 1 % of the CPU
	// of a login (issue 16).
	relaying := false
	defer func() {
		if !relaying {
			s.srv.m.preauth.Dec()
			if s.saidBye {
				s.linger()
			}
			s.end()
		}
	}()
	if s.lc.TLS == conf.TLSImplicit {
		if err := s.handshake(); err != nil {
			return
		}
	}
	s.setReader()
	if err := s.greet(); err != nil {
		return
	}
	relaying = s.loop()
}

// end closes the client connection and gives back the admission slot.
func (s *session) end() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.raw.Close()
	// Untracked before the slot is given back: a session admitted into the
	// freed slot must not be listed next to this one, or the sessions shown
	// (admin, status page, tests) would exceed max_connections for a moment.
	s.srv.untrack(s)
	s.release()
}

// interrupt wakes a pre-auth read at shutdown; loop then says BYE.
func (s *session) interrupt() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == statePreauth && !s.closed {
		s.raw.SetReadDeadline(time.Now())
	}
}

// closeBy closes a relayed session for the backend pool (drain -kick, move,
// kick): both sockets, never a byte injected into the relayed stream. The
// "session ended" line gives reason.
func (s *session) closeBy(reason string) {
	s.mu.Lock()
	if s.closedBy == "" {
		s.closedBy = reason
	}
	s.mu.Unlock()
	s.closeNow()
}

// closeNow ends a session at the end of the drain.
func (s *session) closeNow() {
	s.mu.Lock()
	peer := s.peer
	s.mu.Unlock()
	s.raw.Close()
	if peer != nil {
		peer.Close()
	}
	s.wakeRelays()
}

// wakeRelays starts the parked directions of a session whose sockets were
// just closed: a parked direction has no goroutine to see the close, and its
// read must fail for the session to end (park_linux.go). Close first, then
// wake: a direction parking meanwhile then finds its socket closed.
func (s *session) wakeRelays() {
	s.mu.Lock()
	rs := s.relays
	s.mu.Unlock()
	for _, r := range rs {
		if r != nil && r.parkable {
			wakeRelay(r)
		}
	}
}

// handshake runs the TLS handshake under one deadline, preauth_timeout from its
// start in both directions: a client trickling its ClientHello, or not reading
// the server's flight, is cut then, as a trickled line is (issue 10.2). A
// deadline rather than HandshakeContext: no watcher goroutine per handshake;
// interrupt wakes the read at shutdown.
func (s *session) handshake() error {
	tc := tls.Server(&coalesceConn{Conn: s.conn}, s.srv.tlsConf) // the relay gathers its records (coalesce.go)
	s.conn.SetDeadline(s.lineDeadline())
	if err := s.srv.ctx.Err(); err != nil {
		return err // interrupt ran before the deadline above replaced its own
	}
	if err := tc.Handshake(); err != nil {
		if s.srv.log.Enabled(context.Background(), slog.LevelDebug) { // a flood of TLS garbage must not pay for the logger
			s.logger().Debug("TLS handshake failed", "err", err)
		}
		return err
	}
	s.conn, s.tls = tc, true
	return nil
}

func (s *session) setReader() {
	br := bufio.NewReaderSize(s.conn, preauthBuffer)
	s.rd = imapwire.NewReader(br, s.cfg.Limits.MaxLine, s.cfg.Limits.MaxLiteral)
	s.rd.Continue = func(int64) error {
		if err := s.write("+ Ready for literal data\r\n"); err != nil {
			return err
		}
		s.armLine() // the literal is a new wait, begun by the "+"
		return nil
	}
}

// preauthLifetimes bounds the whole pre-auth phase to this many
// preauth_timeouts: the per-line deadline alone would let a client sending one
// short command just under preauth_timeout hold a session for days.
const preauthLifetimes = 5

// armLine starts a wait for the client: a command, a synchronizing literal after
// its "+", a SASL response after its challenge. The client has preauth_timeout
// from now to send all of it, however it spreads the bytes: a deadline re-armed
// on every read would let one byte every few seconds hold the session (issue
// 10.2). The deadline is capped by the pre-auth phase's total lifetime.
func (s *session) armLine() {
	s.conn.SetReadDeadline(s.lineDeadline())
	if s.srv.ctx.Err() != nil {
		// interrupt ran before the deadline above replaced its own.
		s.conn.SetReadDeadline(time.Now())
	}
}

// lineDeadline is preauth_timeout from now, capped by the pre-auth lifetime.
func (s *session) lineDeadline() time.Time {
	timeout := s.cfg.Limits.PreauthTimeout.Duration
	deadline := time.Now().Add(timeout)
	if end := s.since.Add(preauthLifetimes * timeout); end.Before(deadline) {
		deadline = end
	}
	return deadline
}

// write sends a reply. A failed write ends the session: a client that does not
// read its replies must not be answered command by command from the buffer,
// one preauth_timeout each.
func (s *session) write(str string) error {
	s.conn.SetWriteDeadline(time.Now().Add(s.cfg.Limits.PreauthTimeout.Duration))
	_, err := io.WriteString(s.conn, str)
	if err != nil {
		s.raw.Close()
	}
	return err
}

func (s *session) writef(format string, args ...any) error {
	return s.write(fmt.Sprintf(format, args...))
}

func (s *session) greet() error {
	return s.writef("* OK [CAPABILITY %s] %s ready\r\n", s.capabilities(), s.cfg.Server.Hostname)
}

// capabilities are what the gateway itself offers before login. The backend's
// own list is given to the client in the tagged OK of its login.
func (s *session) capabilities() string {
	caps := "IMAP4rev1 SASL-IR LITERAL+ ID"
	if !s.tls {
		return caps + " STARTTLS LOGINDISABLED"
	}
	return caps + " AUTH=" + strings.Join(s.mechanisms(), " AUTH=")
}

// loop reads and answers commands until the client logs in (true: the relay
// owns the connections now), leaves, errs or is told to.
func (s *session) loop() bool {
	for {
		s.armLine()
		cmd, err := s.rd.ReadCommand()
		if err != nil {
			if s.readFailed(err) {
				return false
			}
			continue
		}
		first := s.first
		s.first = false
		if first && !isIMAPCommand(cmd.Name) {
			s.bye("This is an IMAP server")
			s.logger().Info("not IMAP: closed", "command", sanitize(cmd.Name, 32))
			return false
		}
		next, done := s.dispatch(cmd)
		if done {
			return next
		}
	}
}

// readFailed answers a command that could not be read. It reports whether the
// session is over.
func (s *session) readFailed(err error) bool {
	var se *imapwire.SyntaxError
	switch {
	case s.srv.ctx.Err() != nil:
		s.bye("Server shutting down")
		return true
	case errors.Is(err, imapwire.ErrLineTooLong):
		s.bye("Line too long")
		return true
	case errors.Is(err, imapwire.ErrLiteralTooLarge):
		s.bye("Literal too large")
		return true
	case errors.As(err, &se):
		if s.first || se.Tag == "" {
			// Not IMAP at all (an HTTP request, TLS bytes on the plain port) or a
			// line with no tag: there is nothing to answer but BYE.
			s.bye("This is an IMAP server")
			s.logger().Info("not IMAP: closed", "err", se.Msg)
			return true
		}
		s.writef("%s BAD %s\r\n", se.Tag, se.Msg)
		return false
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.bye("Autologout; idle for too long")
		return true
	default:
		return true // EOF or reset: nobody to answer
	}
}

func (s *session) bye(text string) {
	if s.writef("* BYE %s\r\n", text) == nil {
		s.saidBye = true
	}
}

// dispatch runs one command. done reports that the loop must stop; relaying
// that the relay now owns the session.
func (s *session) dispatch(cmd *imapwire.Command) (relaying, done bool) {
	switch cmd.Name {
	case "CAPABILITY":
		s.writef("* CAPABILITY %s\r\n%s OK CAPABILITY completed\r\n", s.capabilities(), cmd.Tag)
	case "NOOP":
		s.writef("%s OK NOOP completed\r\n", cmd.Tag)
	case "LOGOUT":
		if s.writef("* BYE Logging out\r\n%s OK LOGOUT completed\r\n", cmd.Tag) == nil {
			s.saidBye = true // pipelined input after LOGOUT must not reset the reply away
		}
		return false, true
	case "ID":
		s.writef("* ID (\"name\" \"imapgw\")\r\n%s OK ID completed\r\n", cmd.Tag)
	case "STARTTLS":
		return false, !s.startTLS(cmd)
	case "LOGIN":
		return s.login(cmd)
	case "AUTHENTICATE":
		return s.authenticate(cmd)
	default:
		if isIMAPCommand(cmd.Name) {
			s.writef("%s BAD Log in first\r\n", cmd.Tag)
		} else {
			s.writef("%s BAD Unknown command\r\n", cmd.Tag)
		}
	}
	return false, false
}

// startTLS upgrades a STARTTLS listener's connection. Bytes the client sent after
// the command, before the handshake, are discarded: executing them would let an
// attacker on the path inject commands into the protected session (CVE-2011-0411
// class). It reports whether the session goes on.
func (s *session) startTLS(cmd *imapwire.Command) bool {
	if s.tls {
		s.writef("%s BAD TLS is already active\r\n", cmd.Tag)
		return true
	}
	if len(cmd.Args) != 0 {
		s.writef("%s BAD STARTTLS takes no arguments\r\n", cmd.Tag)
		return true
	}
	if n := s.rd.Buffered(); n > 0 {
		s.logger().Warn("bytes pipelined after STARTTLS discarded", "bytes", n)
	}
	if err := s.writef("%s OK Begin TLS negotiation now\r\n", cmd.Tag); err != nil {
		return false
	}
	if err := s.handshake(); err != nil {
		return false
	}
	s.setReader() // a new buffer: nothing read before the handshake survives
	return true
}
