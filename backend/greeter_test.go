package backend

import (
	"bufio"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"testing"

	proxyproto "github.com/pires/go-proxyproto"
)

// greeter is a tiny IMAP server on a real loopback socket: it greets (or
// not), answers CAPABILITY, STARTTLS and LOGOUT, and records what it saw.
type greeter struct {
	ln    net.Listener
	proxy bool        // every connection starts with a PROXY header
	tls   *tls.Config // offers STARTTLS with it; nil: no STARTTLS

	mu       sync.Mutex
	greeting string // "" : accept and never greet
	headers  []*proxyproto.Header
	commands []string
	conns    []net.Conn
}

// newGreeter starts a greeter; setup runs before it accepts.
func newGreeter(t *testing.T, greeting string, setup ...func(*greeter)) *greeter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &greeter{ln: ln, greeting: greeting}
	for _, f := range setup {
		f(g)
	}
	t.Cleanup(g.close)
	go g.serve()
	return g
}

func (g *greeter) addr() string { return g.ln.Addr().String() }

func (g *greeter) setGreeting(s string) {
	g.mu.Lock()
	g.greeting = s
	g.mu.Unlock()
}

func (g *greeter) close() {
	g.ln.Close()
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range g.conns {
		c.Close()
	}
}

func (g *greeter) serve() {
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return
		}
		g.mu.Lock()
		g.conns = append(g.conns, c)
		g.mu.Unlock()
		go g.handle(c)
	}
}

// accepted is how many connections the greeter took.
func (g *greeter) accepted() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.conns)
}

func (g *greeter) seen() ([]*proxyproto.Header, []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]*proxyproto.Header(nil), g.headers...), append([]string(nil), g.commands...)
}

func (g *greeter) handle(c net.Conn) {
	br := bufio.NewReader(c)
	if g.proxy {
		h, err := proxyproto.Read(br)
		if err != nil {
			c.Close()
			return
		}
		g.mu.Lock()
		g.headers = append(g.headers, h)
		g.mu.Unlock()
	}
	g.mu.Lock()
	greeting := g.greeting
	g.mu.Unlock()
	if greeting == "" {
		return // holds the connection open until close
	}
	if _, err := c.Write([]byte(greeting + "\r\n")); err != nil {
		return
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		tag, cmd, _ := strings.Cut(strings.TrimSpace(line), " ")
		g.mu.Lock()
		g.commands = append(g.commands, cmd)
		g.mu.Unlock()
		switch strings.ToUpper(cmd) {
		case "CAPABILITY":
			caps := "IMAP4rev1 AUTH=PLAIN"
			if _, ok := c.(*tls.Conn); !ok && g.tls != nil {
				caps += " STARTTLS"
			}
			c.Write([]byte("* CAPABILITY " + caps + "\r\n" + tag + " OK done\r\n"))
		case "STARTTLS":
			c.Write([]byte(tag + " OK begin TLS\r\n"))
			tc := tls.Server(c, g.tls)
			if tc.Handshake() != nil {
				c.Close()
				return
			}
			c, br = tc, bufio.NewReader(tc)
		case "LOGOUT":
			c.Write([]byte("* BYE bye\r\n" + tag + " OK done\r\n"))
			c.Close()
			return
		default:
			c.Write([]byte(tag + " BAD unknown\r\n"))
		}
	}
}

func withProxy(g *greeter) { g.proxy = true }

func withTLS(c *tls.Config) func(*greeter) { return func(g *greeter) { g.tls = c } }
