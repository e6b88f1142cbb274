// Package backend is the IMAP server behind every proxy in the benchmarks: one
// account, one message held in memory, answers written in a single write each, so
// that the proxies, not the backend, set the pace.
//
// It speaks just enough IMAP4rev1 (RFC 3501) for the benchmarks and the proxies:
// LOGIN with atoms, quoted strings and literals of both kinds (nginx logs in with
// synchronizing literals), AUTHENTICATE PLAIN with SASL-IR (RFC 4959, what
// imapgw prefers), ID (RFC 2971), CAPABILITY, NOOP, SELECT, IDLE (RFC 2177), FETCH
// and LOGOUT. It is not a mail store: every FETCH returns the same message, and
// it does not check what is asked for.
package backend

import (
	"bufio"
	"bytes"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
)

// Capabilities before and after login.
const (
	preauthCaps = "IMAP4rev1 SASL-IR LITERAL+ ID IDLE AUTH=PLAIN"
	authedCaps  = "IMAP4rev1 LITERAL+ ID IDLE"
)

// maxLine bounds one command line, maxLiteral one literal: the benchmarks send
// short commands only, and a runaway client must not grow the backend.
const (
	maxLine    = 4096
	maxLiteral = 1024
)

var (
	errSyntax  = errors.New("syntax error")
	errTooLong = errors.New("line or literal too long")
)

// Server serves IMAP sessions on a listener until Close.
type Server struct {
	user, password []byte
	fetch          []byte          // the whole untagged FETCH response: built once
	others         map[string]bool // more users with the same password (AddUsers)
	logins         atomic.Int64

	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// New returns a server accepting user and password only, whose FETCH returns
// message as BODY[] of message 1.
func New(user, password string, message []byte) *Server {
	head := fmt.Sprintf("* 1 FETCH (BODY[] {%d}\r\n", len(message))
	fetch := make([]byte, 0, len(head)+len(message)+3)
	fetch = append(append(append(fetch, head...), message...), ")\r\n"...)
	return &Server{user: []byte(user), password: []byte(password), fetch: fetch, conns: map[net.Conn]struct{}{}}
}

// Listen opens addr ("127.0.0.1:0" for a free port) and serves it in the background.
func (s *Server) Listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("backend listen: %w", err)
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	s.wg.Add(1)
	go s.serve(ln)
	return nil
}

// AddUsers accepts these users too, with the same password, so that a pool
// benchmark can spread distinct users over several servers. Call it before Listen.
func (s *Server) AddUsers(users ...string) {
	if s.others == nil {
		s.others = map[string]bool{}
	}
	for _, u := range users {
		s.others[u] = true
	}
}

// Logins reports how many logins succeeded so far.
func (s *Server) Logins() int64 { return s.logins.Load() }

// Addr is the listening address, host:port.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Sessions reports how many connections are open.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Close stops accepting, closes every session and waits for them to end.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	err := s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Server) serve(ln net.Listener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // EMFILE and the like: the load generator sees the failure
		}
		if !s.track(c) {
			c.Close()
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			newConn(s, c).run()
		}()
	}
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// conn is one session.
type conn struct {
	s      *Server
	c      net.Conn
	br     *bufio.Reader
	out    []byte // reply being built; sent in one write
	authed bool
}

func newConn(s *Server, c net.Conn) *conn {
	return &conn{s: s, c: c, br: bufio.NewReaderSize(c, 1024)}
}

func (c *conn) run() {
	c.printf("* OK [CAPABILITY %s] bench backend ready\r\n", preauthCaps)
	if c.flush() != nil {
		return
	}
	for {
		line, err := c.readLine()
		if err != nil {
			return
		}
		tag, name, rest := splitCommand(line)
		if tag == "" {
			c.printf("* BAD no tag\r\n")
		} else if done := c.dispatch(tag, name, rest); done {
			c.flush()
			return
		}
		if c.flush() != nil {
			return
		}
	}
}

// dispatch answers one command into c.out; done ends the session.
func (c *conn) dispatch(tag, name string, rest []byte) (done bool) {
	switch name {
	case "CAPABILITY":
		caps := preauthCaps
		if c.authed {
			caps = authedCaps
		}
		c.printf("* CAPABILITY %s\r\n%s OK CAPABILITY completed\r\n", caps, tag)
	case "NOOP":
		c.printf("%s OK NOOP completed\r\n", tag)
	case "ID":
		c.printf("* ID NIL\r\n%s OK ID completed\r\n", tag)
	case "LOGOUT":
		c.printf("* BYE logging out\r\n%s OK LOGOUT completed\r\n", tag)
		return true
	case "LOGIN":
		return c.login(tag, rest)
	case "AUTHENTICATE":
		return c.authenticate(tag, rest)
	default:
		return c.authedCommand(tag, name)
	}
	return false
}

// authedCommand answers the commands that need a login.
func (c *conn) authedCommand(tag, name string) (done bool) {
	if !c.authed {
		c.printf("%s BAD unknown command or not logged in\r\n", tag)
		return false
	}
	switch name {
	case "SELECT", "EXAMINE":
		c.printf("* 1 EXISTS\r\n* FLAGS (\\Seen)\r\n%s OK [READ-WRITE] SELECT completed\r\n", tag)
	case "FETCH", "UID": // UID FETCH: the benchmarks send no other UID command
		return c.sendMessage(tag)
	case "IDLE":
		return c.idle(tag)
	default:
		c.printf("%s BAD unknown command\r\n", tag)
	}
	return false
}

func (c *conn) login(tag string, rest []byte) (done bool) {
	args, err := c.astrings(rest, 2)
	if err != nil {
		c.printf("%s BAD %v\r\n", tag, err)
		return !errors.Is(err, errSyntax) // a broken connection or a runaway client
	}
	c.loginResult(tag, []byte(args[0]), []byte(args[1]))
	return false
}

// authenticate handles AUTHENTICATE PLAIN, with the initial response on the
// command line (SASL-IR) or after a continuation request.
func (c *conn) authenticate(tag string, rest []byte) (done bool) {
	mech, ir, _ := bytes.Cut(bytes.TrimSpace(rest), []byte(" "))
	if !bytes.EqualFold(mech, []byte("PLAIN")) || c.authed {
		c.printf("%s NO unsupported mechanism\r\n", tag)
		return false
	}
	if len(ir) == 0 {
		c.printf("+ \r\n")
		if c.flush() != nil {
			return true
		}
		line, err := c.readLine()
		if err != nil {
			return true
		}
		ir = line
	}
	raw, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(ir)))
	parts := bytes.Split(raw, []byte{0})
	if err != nil || len(parts) != 3 {
		c.printf("%s BAD bad PLAIN response\r\n", tag)
		return false
	}
	c.loginResult(tag, parts[1], parts[2])
	return false
}

func (c *conn) loginResult(tag string, user, password []byte) {
	if c.authed {
		c.printf("%s BAD already logged in\r\n", tag)
		return
	}
	known := subtle.ConstantTimeCompare(user, c.s.user) == 1 || c.s.others[string(user)]
	if known && subtle.ConstantTimeCompare(password, c.s.password) == 1 {
		c.authed = true
		c.s.logins.Add(1)
		c.printf("%s OK [CAPABILITY %s] Logged in\r\n", tag, authedCaps)
		return
	}
	c.printf("%s NO [AUTHENTICATIONFAILED] Authentication failed\r\n", tag)
}

// sendMessage writes the prebuilt FETCH response straight from memory.
func (c *conn) sendMessage(tag string) (done bool) {
	if c.flush() != nil {
		return true
	}
	if _, err := c.c.Write(c.s.fetch); err != nil {
		return true
	}
	c.printf("%s OK FETCH completed\r\n", tag)
	return false
}

// idle waits for DONE; the session holds no more than its read buffer meanwhile.
func (c *conn) idle(tag string) (done bool) {
	c.printf("+ idling\r\n")
	if c.flush() != nil {
		return true
	}
	line, err := c.readLine()
	if err != nil {
		return true
	}
	if !bytes.EqualFold(bytes.TrimSpace(line), []byte("DONE")) {
		c.printf("%s BAD expected DONE\r\n", tag)
		return false
	}
	c.printf("%s OK IDLE terminated\r\n", tag)
	return false
}

func (c *conn) printf(format string, args ...any) {
	c.out = fmt.Appendf(c.out, format, args...)
}

func (c *conn) flush() error {
	if len(c.out) == 0 {
		return nil
	}
	_, err := c.c.Write(c.out)
	c.out = c.out[:0]
	return err
}

// readLine returns one line without its CRLF, valid until the next read.
func (c *conn) readLine() ([]byte, error) {
	line, err := c.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) || len(line) > maxLine {
		return nil, errTooLong
	}
	if err != nil {
		return nil, err
	}
	return bytes.TrimRight(line, "\r\n"), nil
}

// splitCommand splits "tag NAME rest"; the name is upper-cased.
func splitCommand(line []byte) (tag, name string, rest []byte) {
	t, after, ok := bytes.Cut(line, []byte(" "))
	if !ok || len(t) == 0 {
		return "", "", nil
	}
	n, rest, _ := bytes.Cut(after, []byte(" "))
	return string(t), string(bytes.ToUpper(n)), rest
}

// astrings parses n astrings from line, reading announced literals (and the
// rest of the command after each) from the connection.
func (c *conn) astrings(line []byte, n int) ([]string, error) {
	var out []string
	for len(out) < n {
		line = bytes.TrimLeft(line, " ")
		if len(line) == 0 {
			return nil, errSyntax
		}
		var (
			arg string
			err error
		)
		switch line[0] {
		case '"':
			arg, line, err = quoted(line)
		case '{':
			arg, line, err = c.literal(line)
		default:
			end := bytes.IndexByte(line, ' ')
			if end < 0 {
				end = len(line)
			}
			arg, line = string(line[:end]), line[end:]
		}
		if err != nil {
			return nil, err
		}
		out = append(out, arg)
	}
	return out, nil
}

// quoted parses a quoted string at the start of line (RFC 3501 quoted).
func quoted(line []byte) (string, []byte, error) {
	var b []byte
	for i := 1; i < len(line); i++ {
		switch ch := line[i]; ch {
		case '\\':
			if i+1 == len(line) {
				return "", nil, errSyntax
			}
			i++
			b = append(b, line[i])
		case '"':
			return string(b), line[i+1:], nil
		default:
			b = append(b, ch)
		}
	}
	return "", nil, errSyntax
}

// literal reads the literal announced at the end of line ("{n}" or "{n+}"),
// answering a continuation request for the synchronizing kind, and returns it
// with the next line of the command.
func (c *conn) literal(line []byte) (string, []byte, error) {
	if len(line) < 3 || line[len(line)-1] != '}' {
		return "", nil, errSyntax
	}
	spec := line[1 : len(line)-1]
	sync := true
	if bytes.HasSuffix(spec, []byte("+")) {
		sync, spec = false, spec[:len(spec)-1]
	}
	size, err := strconv.Atoi(string(spec))
	if err != nil || size < 0 {
		return "", nil, errSyntax
	}
	if size > maxLiteral {
		return "", nil, errTooLong
	}
	if sync {
		c.printf("+ go ahead\r\n")
		if err := c.flush(); err != nil {
			return "", nil, err
		}
	}
	buf := make([]byte, size)
	if _, err := io.ReadFull(c.br, buf); err != nil {
		return "", nil, err
	}
	next, err := c.readLine()
	if err != nil {
		return "", nil, err
	}
	return string(buf), next, nil
}
