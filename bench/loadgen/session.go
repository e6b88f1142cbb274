// Package loadgen drives IMAP clients against a proxy for the benchmarks: login
// cycles with a full TLS handshake each (no session resumption), FETCHes of one
// big message, sessions parked in IDLE, and floods of bare connections. It
// measures counts, bytes and latencies; it knows nothing of the proxy in front
// of it, and it is not a general IMAP client (it parses replies only as far as
// finding the tagged status and skipping literals).
package loadgen

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"
)

// Target is where sessions connect and how.
type Target struct {
	Addr     string       // host:port of the proxy (or a backend, with TLS nil)
	TLS      *tls.Config  // nil: plain TCP; its ClientSessionCache must stay nil for full handshakes
	Sources  []netip.Addr // local addresses, taken in turn per connection; none: the kernel's choice
	User     string
	Users    []string // when set, LoginCycle takes these in turn instead of User
	Password string
	Timeout  time.Duration // bound on each step (dial, handshake, each reply); 0: 10s

	next     atomic.Uint64
	nextUser atomic.Uint64
}

// user is the account of the next login cycle.
func (t *Target) user() string {
	if len(t.Users) == 0 {
		return t.User
	}
	return t.Users[t.nextUser.Add(1)%uint64(len(t.Users))]
}

func (t *Target) timeout() time.Duration {
	if t.Timeout <= 0 {
		return 10 * time.Second
	}
	return t.Timeout
}

// source returns the next local address, or the zero Addr for the kernel's choice.
func (t *Target) source() netip.Addr {
	if len(t.Sources) == 0 {
		return netip.Addr{}
	}
	return t.Sources[t.next.Add(1)%uint64(len(t.Sources))]
}

// dialTCP connects from src (zero: any) to addr.
func dialTCP(addr string, src netip.Addr, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	if src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
		d.Control = bindNoPort
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return c, nil
}

// Session is one client connection.
type Session struct {
	conn    net.Conn
	br      *bufio.Reader
	timeout time.Duration
	tag     int
	state   tls.ConnectionState
}

// Open connects, completes the TLS handshake (when the target has TLS) and
// reads the greeting.
func (t *Target) Open() (*Session, error) {
	s, err := t.connect()
	if err != nil {
		return nil, err
	}
	if err := s.greeting(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// connect dials and handshakes, without reading anything.
func (t *Target) connect() (*Session, error) {
	c, err := dialTCP(t.Addr, t.source(), t.timeout())
	if err != nil {
		return nil, err
	}
	s := &Session{conn: c, timeout: t.timeout()}
	if t.TLS != nil {
		tc := tls.Client(c, t.TLS)
		tc.SetDeadline(time.Now().Add(s.timeout))
		if err := tc.Handshake(); err != nil {
			c.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		s.conn, s.state = tc, tc.ConnectionState()
	}
	s.br = bufio.NewReaderSize(s.conn, 2048)
	return s, nil
}

// TLSState is the negotiated TLS connection state (zero without TLS).
func (s *Session) TLSState() tls.ConnectionState { return s.state }

// Close closes the connection.
func (s *Session) Close() error { return s.conn.Close() }

func (s *Session) greeting() error {
	s.conn.SetDeadline(time.Now().Add(s.timeout))
	line, err := s.readLine()
	if err != nil {
		return fmt.Errorf("reading greeting: %w", err)
	}
	if !bytes.HasPrefix(line, []byte("* OK")) {
		return fmt.Errorf("greeting: %q", clip(line))
	}
	return nil
}

// Login sends LOGIN with the target's credentials as quoted strings.
func (s *Session) Login(user, password string) error {
	_, err := s.command("LOGIN " + quote(user) + " " + quote(password))
	return err
}

// Logout sends LOGOUT and waits for its tagged OK.
func (s *Session) Logout() error {
	_, err := s.command("LOGOUT")
	return err
}

// Fetch asks for message 1 and returns the literal bytes received.
func (s *Session) Fetch() (int64, error) {
	return s.command("FETCH 1 BODY[]")
}

// Idle enters IDLE and returns once the server's continuation arrived. The
// session then stays idle until closed.
func (s *Session) Idle() error {
	tag := s.nextTag()
	if err := s.send(tag + " IDLE\r\n"); err != nil {
		return err
	}
	for {
		line, err := s.readLine()
		if err != nil {
			return fmt.Errorf("IDLE: %w", err)
		}
		switch {
		case bytes.HasPrefix(line, []byte("+")):
			return nil
		case bytes.HasPrefix(line, []byte(tag+" ")):
			return fmt.Errorf("IDLE refused: %q", clip(line))
		}
	}
}

func (s *Session) nextTag() string {
	s.tag++
	return "b" + strconv.Itoa(s.tag)
}

func (s *Session) send(line string) error {
	s.conn.SetDeadline(time.Now().Add(s.timeout))
	if _, err := s.conn.Write([]byte(line)); err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	return nil
}

// command sends one command and reads up to its tagged reply, skipping
// literals in the untagged ones. It returns the literal bytes seen.
func (s *Session) command(cmd string) (int64, error) {
	tag := s.nextTag()
	if err := s.send(tag + " " + cmd + "\r\n"); err != nil {
		return 0, err
	}
	var literals int64
	for {
		s.conn.SetDeadline(time.Now().Add(s.timeout))
		line, err := s.readLine()
		if err != nil {
			return literals, fmt.Errorf("%s: %w", verb(cmd), err)
		}
		if n, ok := literalSize(line); ok {
			if err := s.discard(n); err != nil {
				return literals, fmt.Errorf("%s: literal: %w", verb(cmd), err)
			}
			literals += n
			continue
		}
		if rest, ok := bytes.CutPrefix(line, []byte(tag+" ")); ok {
			if !bytes.HasPrefix(rest, []byte("OK")) {
				return literals, fmt.Errorf("%s: %q", verb(cmd), clip(line))
			}
			return literals, nil
		}
	}
}

// readLine returns one line without CRLF, valid until the next read.
func (s *Session) readLine() ([]byte, error) {
	line, err := s.br.ReadSlice('\n')
	if err != nil {
		return nil, err
	}
	return bytes.TrimRight(line, "\r\n"), nil
}

// bulkReader is the client's read buffer on a relay session: a mail app
// reading a big message through a 64 KB bufio.Reader (issue 16's setup).
const bulkReader = 64 << 10

// bulk moves the session to a bulkReader-sized buffer, for relay sessions
// only: login cycles and idle sessions keep the small one.
func (s *Session) bulk() {
	if s.br.Buffered() == 0 {
		s.br = bufio.NewReaderSize(s.conn, bulkReader)
	}
}

// discard skips n literal bytes through the session's reader, a megabyte at a
// time under a fresh deadline.
func (s *Session) discard(n int64) error {
	for n > 0 {
		s.conn.SetReadDeadline(time.Now().Add(s.timeout))
		k, err := s.br.Discard(int(min(n, 1<<20)))
		n -= int64(k)
		if err != nil && n > 0 {
			return err
		}
	}
	return nil
}

// literalSize reports a line ending in a literal announcement "{n}".
func literalSize(line []byte) (int64, bool) {
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, false
	}
	open := bytes.LastIndexByte(line, '{')
	if open < 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(line[open+1:len(line)-1]), 10, 64)
	return n, err == nil && n >= 0
}

func quote(s string) string {
	return strconv.Quote(s) // the benchmark credentials are plain ASCII, where Go and IMAP quoting agree
}

func verb(cmd string) string {
	v, _, _ := bytes.Cut([]byte(cmd), []byte(" "))
	return string(v)
}

// clip keeps error messages short.
func clip(b []byte) string {
	if len(b) > 120 {
		b = b[:120]
	}
	return string(b)
}

var errNotRefused = errors.New("the connection was not refused")
