package backend

import (
	"bufio"
	"encoding/base64"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

const (
	testUser = "bench"
	testPass = "pa ss\"w"
)

func startServer(t *testing.T, msg string) *Server {
	t.Helper()
	s := New(testUser, testPass, []byte(msg))
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// client is a raw conversation with the server.
type client struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dial(t *testing.T, s *Server) *client {
	t.Helper()
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	cl := &client{t: t, c: c, br: bufio.NewReader(c)}
	cl.expect("* OK [CAPABILITY " + preauthCaps + "]")
	return cl
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatal(err)
	}
}

// expect reads one line and checks its beginning.
func (c *client) expect(prefix string) string {
	c.t.Helper()
	line, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reading, want %q: %v", prefix, err)
	}
	if !strings.HasPrefix(line, prefix) {
		c.t.Fatalf("read %q, want %q…", line, prefix)
	}
	return line
}

func TestLogin(t *testing.T) {
	plain := base64.StdEncoding.EncodeToString([]byte("\x00" + testUser + "\x00" + testPass))
	wrong := base64.StdEncoding.EncodeToString([]byte("\x00" + testUser + "\x00nope"))
	tests := []struct {
		name string
		talk []string // alternately what the client sends and the line it expects
	}{
		{"quoted", []string{`a LOGIN "bench" "pa ss\"w"` + "\r\n", "a OK [CAPABILITY " + authedCaps + "]"}},
		{"wrong password", []string{"a LOGIN bench nope\r\n", "a NO [AUTHENTICATIONFAILED]"}},
		{"synchronizing literals, as nginx sends them", []string{
			"1 LOGIN {5}\r\n", "+ ",
			"bench {7}\r\n", "+ ",
			"pa ss\"w\r\n", "1 OK",
		}},
		{"non-synchronizing literals", []string{"a LOGIN {5+}\r\nbench {7+}\r\npa ss\"w\r\n", "a OK"}},
		{"AUTHENTICATE PLAIN with SASL-IR", []string{"a AUTHENTICATE PLAIN " + plain + "\r\n", "a OK"}},
		{"AUTHENTICATE PLAIN after a continuation", []string{"a AUTHENTICATE PLAIN\r\n", "+ ", plain + "\r\n", "a OK"}},
		{"AUTHENTICATE PLAIN wrong", []string{"a AUTHENTICATE PLAIN " + wrong + "\r\n", "a NO [AUTHENTICATIONFAILED]"}},
		{"ID then LOGIN", []string{"i ID (\"x-originating-ip\" \"127.0.0.9\")\r\n", "* ID NIL", "", "i OK", "a LOGIN bench \"pa ss\\\"w\"\r\n", "a OK"}},
		{"FETCH before login", []string{"a FETCH 1 BODY[]\r\n", "a BAD"}},
		{"literal too large", []string{"a LOGIN {99999}\r\n", "a BAD"}},
	}
	s := startServer(t, "hello")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, s)
			for i := 0; i < len(tt.talk); i += 2 {
				if tt.talk[i] != "" {
					c.send(tt.talk[i])
				}
				c.expect(tt.talk[i+1])
			}
		})
	}
}

func TestSessionAfterLogin(t *testing.T) {
	const msg = "Subject: x\r\n\r\nbody\r\n"
	s := startServer(t, msg)
	c := dial(t, s)
	c.send("a LOGIN bench \"pa ss\\\"w\"\r\n")
	c.expect("a OK")

	c.send("f FETCH 1 BODY[]\r\n")
	c.expect("* 1 FETCH (BODY[] {20}\r\n")
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c.br, got); err != nil || string(got) != msg {
		t.Fatalf("FETCH literal = %q, %v, want %q", got, err, msg)
	}
	c.expect(")\r\n")
	c.expect("f OK")

	c.send("i IDLE\r\n")
	c.expect("+ idling")
	c.send("DONE\r\n")
	c.expect("i OK")

	c.send("z LOGOUT\r\n")
	c.expect("* BYE")
	c.expect("z OK")
	if _, err := c.br.ReadByte(); err != io.EOF {
		t.Fatalf("after LOGOUT: read error %v, want EOF", err)
	}
}

func TestCloseEndsSessions(t *testing.T) {
	s := New(testUser, testPass, nil)
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	c := dial(t, s)
	if n := s.Sessions(); n != 1 {
		t.Fatalf("Sessions() = %d, want 1", n)
	}
	s.Close()
	if _, err := c.br.ReadByte(); err == nil {
		t.Fatal("a session survived Close")
	}
	if n := s.Sessions(); n != 0 {
		t.Fatalf("Sessions() after Close = %d, want 0", n)
	}
}

// TestAddUsers: added users log in with the shared password, others do not,
// and Logins counts only the successes.
func TestAddUsers(t *testing.T) {
	s := New(testUser, "secret", nil)
	s.AddUsers("user01@bench.localhost", "user02@bench.localhost")
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for _, tc := range []struct{ user, pass, want string }{
		{"user01@bench.localhost", "secret", "a OK"},
		{"bench", "secret", "a OK"},
		{"user03@bench.localhost", "secret", "a NO [AUTHENTICATIONFAILED]"},
		{"user02@bench.localhost", "wrong", "a NO [AUTHENTICATIONFAILED]"},
	} {
		c := dial(t, s)
		c.send("a LOGIN \"" + tc.user + "\" " + tc.pass + "\r\n")
		c.expect(tc.want)
	}
	if n := s.Logins(); n != 2 {
		t.Errorf("Logins() = %d, want 2", n)
	}
}
