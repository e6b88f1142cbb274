package proxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/demo"
	"github.com/imapgw/imapgw/internal/testbed"
	"github.com/imapgw/imapgw/limiter"
	"github.com/imapgw/imapgw/proxy"
)

// Per-input time bounds. The fuzzing engine kills a worker whose fuzz
// function runs over 10 s ("deadlocked!"), which go test then reports as a
// crash of the input at hand, whatever the cause: so one input, on a loaded
// machine, must stay well under that. Timing bounds proper (slowloris,
// half-closed clients) are tested in hostile_test.go, not here.
const (
	// fuzzPreauth is each gateway's preauth_timeout. The client half-closes
	// after its bytes, so a session normally ends at once on EOF; this bounds
	// an input that leaves the gateway waiting on something else.
	fuzzPreauth = time.Second
	// fuzzInputBound is how long after the client's last byte its session may
	// still be open, and the gateway's session table non-empty, before the
	// input counts as a hang: preauth_timeout plus slack for a loaded machine.
	fuzzInputBound = fuzzPreauth + 4*time.Second
)

// fuzzCheckUser logs in after every input to prove the gateway still serves.
// No seed names it, so fuzzed failures never touch its account.
const (
	fuzzCheckUser = "fuzzcheck"
	fuzzCheckPass = "fuzzcheck-secret"
)

// sessionSeeds are whole pre-auth conversations: RFC 9051 and RFC 2971
// examples, what real clients send (the same forms as clientForms, as bytes),
// and hostile openings. Each runs on the plain STARTTLS listener and after a
// STARTTLS handshake.
var sessionSeeds = []string{
	"abcd CAPABILITY\r\n",
	"a002 NOOP\r\n",
	"A023 LOGOUT\r\n",
	"a001 STARTTLS\r\n",
	"a001 login SMITH SESAME\r\n",
	"A001 AUTHENTICATE GSSAPI\r\nYIIB+wYJKoZIhvcSAQICAQBuggHqMIIB5qADAgEFoQMCAQ6iBw==\r\n",
	"A001 AUTHENTICATE PLAIN\r\nAGZyZWQAdGlnZXI=\r\n",
	"A001 LOGIN {11}\r\nFRED FOOBAR {7}\r\nfat man\r\n",
	"A001 LOGIN {11+}\r\nFRED FOOBAR {7+}\r\nfat man\r\n",
	"a023 ID (\"name\" \"sodr\" \"version\" \"19.34\" \"vendor\" \"Pink Floyd Music Limited\")\r\n",
	"A142 SELECT INBOX\r\n",
	// Thunderbird, iOS Mail, Outlook, K-9, JavaMail, Evolution, mutt, curl, a Dovecot proxy.
	"1 capability\r\n2 login \"alice\" \"alice-secret\"\r\n3 select INBOX\r\n4 logout\r\n",
	"A1 AUTHENTICATE PLAIN AGFsaWNlAGFsaWNlLXNlY3JldA==\r\nA2 SELECT INBOX\r\n",
	"A2 LOGIN alice alice-secret\r\nA3 FETCH 1:* (FLAGS)\r\n",
	"A01 ID (\"name\" \"Microsoft Outlook\" \"version\" \"16.0\")\r\nA02 AUTHENTICATE PLAIN\r\nAGFsaWNlAGFsaWNlLXNlY3JldA==\r\nA03 SELECT INBOX\r\n",
	"3 AUTHENTICATE PLAIN\r\nAGNhcm9sAHDDpHNzd8O2cmQtw7w=\r\n",
	"A1 LOGIN {5}\r\ncarol {13}\r\np\xc3\xa4ssw\xc3\xb6rd-\xc3\xbc\r\n",
	"A1 LOGIN {5+}\r\ncarol {13+}\r\np\xc3\xa4ssw\xc3\xb6rd-\xc3\xbc\r\nA2 IDLE\r\nDONE\r\n",
	"a0 AUTHENTICATE PLAIN\r\nYWxpY2UAYWxpY2UAYWxpY2Utc2VjcmV0\r\n",
	"B AUTHENTICATE LOGIN YWxpY2U=\r\nYWxpY2Utc2VjcmV0\r\n",
	"c1 AUTHENTICATE PLAIN\r\n*\r\nc2 LOGIN alice \"alice-secret\"\r\n",
	"f1 LOGIN alice wrong-password\r\nf2 LOGIN alice wrong\r\nf3 LOGIN alice x\r\nf4 NOOP\r\n",
	"P1 ID (\"x-session-ext-id\" \"abc\")\r\nP2 CAPABILITY\r\nP3 LOGIN bob {22}\r\nbob secret with spaces\r\n",
	// Hostile openings.
	"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
	"EHLO mail.example.com\r\n",
	"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
	"a LOGIN {2147483648+}\r\n",
	"a LOGIN \"al\x00ice\" x\r\n",
	"a CAPABILITY\r\nb LOGIN \"a\\\"b\" {3}\r\nxyz\r\nc\x1b[31m NOOP\r\n",
	"a AUTHENTICATE PLAIN !!!!\r\nb AUTHENTICATE PLAIN\r\n\x00\x01\x02\r\n",
	"s1 STARTTLS\r\nx1 LOGIN alice alice-secret\r\n",
	"a ID ((((((((((((((((x))))))))))))))))\r\n",
	"\r\n\r\n\n\n a NOOP\r\n",
}

// FuzzSession feeds arbitrary bytes to a whole pre-auth session on the STARTTLS
// listener, before or after the TLS handshake, of a gateway in front of the
// in-memory backend. Invariants: no panic; every pre-auth reply line is IMAP
// (untagged, continuation, or tagged with a tag the client sent) in printable
// ASCII, so nothing unparsed is reflected; the session ends after the
// client's last byte and leaves no session behind; and a fresh client still
// logs in. Each input gets its own backend, limiter and gateway, so its result
// depends on its bytes only (a crasher found after a million inputs replays
// alone), and no input waits on another's sessions.
func FuzzSession(f *testing.F) {
	env := newFuzzEnv(f)
	for _, s := range sessionSeeds {
		f.Add(false, []byte(s))
		f.Add(true, []byte(s))
	}
	f.Fuzz(func(t *testing.T, afterTLS bool, data []byte) {
		g := env.start(t)
		g.session(t, afterTLS, data)
		if n := g.srv.Panics(); n != 0 {
			t.Fatalf("%v panics recovered; log tail:\n%s", n, g.logs.String())
		}
		g.stillServes(t)
	})
}

// fuzzEnv is what every input's gateway shares: nothing that holds state
// across inputs.
type fuzzEnv struct {
	users  map[string]string
	server *tls.Config // the gateway's
	client *tls.Config // the client's; no session cache, so every handshake is full
}

func newFuzzEnv(f *testing.F) *fuzzEnv {
	users := testbed.DefaultUsers()
	users[fuzzCheckUser] = fuzzCheckPass
	ca := testbed.NewCA(f)
	leaf := ca.Leaf(f, "localhost", "127.0.0.1", "127.0.0.2")
	return &fuzzEnv{
		users:  users,
		server: &tls.Config{Certificates: []tls.Certificate{leaf}, NextProtos: []string{"imap"}},
		client: &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"},
	}
}

// fuzzGateway is one input's gateway.
type fuzzGateway struct {
	env      *fuzzEnv
	srv      *proxy.Server
	implicit string
	starttls string
	logs     *tailBuffer
}

// start builds what startGateway and startDemo build, stopped by t's cleanup.
func (e *fuzzEnv) start(t *testing.T) *fuzzGateway {
	be, err := demo.Start("127.0.0.1:0", e.users)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	cfg := testConfig(be.Addr)
	cfg.Backend.ClientIP = conf.ClientIPNone
	cfg.Limits.PreauthTimeout = conf.D(fuzzPreauth)
	cfg.Limits.MaxLine = 1024 // small, so the fuzzer reaches the limits
	cfg.Limits.MaxLiteral = 1024
	g := &fuzzGateway{env: e, logs: &tailBuffer{max: 64 << 10}}
	log := slog.New(slog.NewTextHandler(g.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	lim, err := limiter.New(cfg.Bans, cfg.Limits, limiter.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.New(cfg, proxy.Options{Policy: lim, Certs: staticCerts{e.server}, Logger: log})
	if err == nil {
		err = srv.Start()
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	addrs := srv.Addrs()
	g.srv, g.implicit, g.starttls = srv, addrs[0].String(), addrs[1].String()
	return g
}

// session sends data in one go, half-closes, and reads every reply.
func (g *fuzzGateway) session(t *testing.T, afterTLS bool, data []byte) {
	c := dialRaw(t, g.starttls, nil)
	greeting(t, c)
	if afterTLS {
		c.starttls(g.env.client)
	}
	// Written beside the reads: a gateway blocked on a reply we do not read
	// would otherwise look like a hang. Joined before returning, so nothing
	// of this input outlives it.
	wrote := make(chan time.Time, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.conn.SetWriteDeadline(time.Now().Add(fuzzInputBound))
		c.conn.Write(data) // the gateway may close first: BYE on bad input
		closeWrite(c.conn)
		wrote <- time.Now()
	}()
	lines, err := readReplies(c, wrote)
	<-done
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("session still open %v after the client's last byte (replies %q)", fuzzInputBound, lines)
	}
	checkReplies(t, data, lines)
}

// readReplies reads lines until the gateway closes, with a deadline of
// fuzzInputBound after the client finished writing.
func readReplies(c *rawClient, wrote <-chan time.Time) ([]string, error) {
	c.conn.SetReadDeadline(time.Now().Add(2 * fuzzInputBound))
	var lines []string
	var total int
	for {
		select {
		case at := <-wrote:
			c.conn.SetReadDeadline(at.Add(fuzzInputBound))
		default:
		}
		l, err := c.br.ReadString('\n')
		if l != "" && total < 1<<20 { // the backend's replies after login can be long
			lines = append(lines, l)
			total += len(l)
		}
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) || isReset(err) {
			return lines, nil
		}
		return lines, err
	}
}

// checkReplies applies the line invariants to what the gateway itself said:
// everything up to its tagged OK of a login, after which the backend speaks.
func checkReplies(t *testing.T, in []byte, lines []string) {
	t.Helper()
	for i, l := range lines {
		if !strings.HasSuffix(l, "\r\n") {
			if i == len(lines)-1 {
				return // cut by a reset: the gateway closed with input unread
			}
			t.Fatalf("reply %q does not end in CRLF", l)
		}
		l = strings.TrimSuffix(l, "\r\n")
		if err := replyOK(in, l); err != "" {
			t.Fatalf("reply %q: %s (all replies %q)", l, err, lines)
		}
		if tag, rest, _ := strings.Cut(l, " "); tag != "*" && strings.HasPrefix(rest, "OK") && strings.HasSuffix(l, "Logged in") {
			return
		}
	}
}

// replyOK returns why a pre-auth reply line is not well-formed IMAP, or "".
func replyOK(in []byte, l string) string {
	for i := 0; i < len(l); i++ {
		if c := l[i]; c < ' ' || c >= 0x7f {
			return "a control or 8-bit byte"
		}
	}
	if l == "+" || strings.HasPrefix(l, "+ ") || strings.HasPrefix(l, "* ") {
		return ""
	}
	tag, rest, ok := strings.Cut(l, " ")
	switch {
	case !ok || !isTag(tag):
		return "neither untagged, continuation, nor tagged"
	case !bytes.Contains(in, []byte(tag)):
		return "its tag is not one the client sent"
	case !strings.HasPrefix(rest, "OK") && !strings.HasPrefix(rest, "NO") && !strings.HasPrefix(rest, "BAD"):
		return "a tagged reply that is not OK, NO or BAD"
	}
	return ""
}

// isTag is RFC 9051's tag: ASTRING-CHAR except "+", 7-bit. Written out here so
// the test does not check the parser against itself.
func isTag(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`(){"\%*+`, c) >= 0 {
			return false
		}
	}
	return s != ""
}

// stillServes waits for the input's session to be gone from the gateway (none
// may leak), then logs in through the implicit listener.
func (g *fuzzGateway) stillServes(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(fuzzInputBound)
	for len(g.srv.Sessions()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions left %v after their clients went away: %+v", len(g.srv.Sessions()), fuzzInputBound, g.srv.Sessions())
		}
		time.Sleep(5 * time.Millisecond)
	}
	c := dialRaw(t, g.implicit, g.env.client)
	greeting(t, c)
	c.send("ok1 LOGIN " + fuzzCheckUser + " " + fuzzCheckPass + "\r\nok2 NOOP\r\n")
	c.expect("ok1 OK")
	c.expect("ok2 OK")
}

// tailBuffer keeps the last max bytes written: the log tail for a failure.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (w *tailBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b = append(w.b, p...)
	if over := len(w.b) - w.max; over > 0 {
		w.b = append(w.b[:0], w.b[over:]...)
	}
	return len(p), nil
}

func (w *tailBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.b)
}

// TestReplyOK checks the fuzz target's own judge, so that a passing fuzz run
// means something.
func TestReplyOK(t *testing.T) {
	in := []byte("a1 NOOP\r\nb.2 FROB\r\n")
	cases := []struct {
		line string
		ok   bool
	}{
		{"* OK [CAPABILITY IMAP4rev1] localhost ready", true},
		{"+ Ready for literal data", true},
		{"+", true},
		{"a1 OK NOOP completed", true},
		{"b.2 BAD Unknown command", true},
		{"zz OK NOOP completed", false},  // a tag the client never sent
		{"a1 MAYBE", false},              // not a status
		{"a1 BAD \x1b[31m", false},       // a control byte
		{"a1 BAD caf\xc3\xa9", false},    // 8-bit
		{"NOOP", false},                  // no tag
		{"a+1 OK NOOP completed", false}, // not a tag
	}
	for _, tc := range cases {
		if got := replyOK(in, tc.line) == ""; got != tc.ok {
			t.Errorf("replyOK(%q) = %v, want %v", tc.line, got, tc.ok)
		}
	}
}
