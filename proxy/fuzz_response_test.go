package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"reflect"
	"strings"
	"testing"

	"github.com/imapgw/imapgw/backend"
)

// responseSeeds are whole backend sides of a login as the gateway sees them:
// greeting, the CAPABILITY answer when the greeting has none, the login reply
// and the post-login CAPABILITY answer. Dovecot 2.3.19 as the testbed runs it,
// Exchange 2013-2019 from the forms in /work/shared/NOTES.md, and hostile
// replies (issue 11.3).
var responseSeeds = []string{
	// Dovecot: capabilities in the greeting and in the tagged OK.
	"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN AUTH=LOGIN] Dovecot (Debian) ready.\r\n" +
		"gwl OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE] Logged in\r\n",
	"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN AUTH=LOGIN] Dovecot (Debian) ready.\r\n" +
		"gwl NO [AUTHENTICATIONFAILED] Authentication failed.\r\n",
	"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot ready.\r\n" +
		"* ID (\"name\" \"Dovecot\")\r\ngwi OK ID completed (0.001 + 0.000 secs).\r\n" +
		"gwl NO [UNAVAILABLE] Temporary authentication failure. [mail:2026-12-01-21:00:00]\r\n",
	"* OK [CAPABILITY IMAP4rev1 SASL-IR ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot ready.\r\n" +
		"* ID (\"name\" {7}\r\nDovecot \"version\" \"2.3.19\")\r\ngwi OK ID completed.\r\n" +
		"gwl OK Logged in\r\n* CAPABILITY IMAP4rev1 IDLE MOVE\r\ngwc OK Capability completed.\r\n",
	"* OK [CAPABILITY IMAP4rev1 SASL-IR ID ENABLE IDLE LITERAL+ STARTTLS LOGINDISABLED] Dovecot ready.\r\n",
	"* OK [CAPABILITY IMAP4rev1 ID AUTH=PLAIN] ready.\r\n+ \r\ngwl NO [EXPIRED] Password expired\r\n",
	"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] ready.\r\ngwl OK [CAPABILITY IMAP4rev1] Logged in\r\n* BYE Disconnected for inactivity.\r\n",
	// Exchange: no capabilities in the greeting or the tagged OK.
	"* OK The Microsoft Exchange IMAP4 service is ready.\r\n" +
		"* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=NTLM AUTH=GSSAPI SASL-IR UIDPLUS MOVE ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+\r\ngwc OK CAPABILITY completed.\r\n" +
		"gwl OK AUTHENTICATE completed.\r\n" +
		"* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=NTLM AUTH=GSSAPI SASL-IR UIDPLUS MOVE ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+\r\ngwc OK CAPABILITY completed.\r\n",
	"* OK The Microsoft Exchange IMAP4 service is ready. [TQBXADIAUABSADAANQBDAEEAMAAwADEANAAuAG4AYQBtAHAAcgBkADAANQAuAHAAcgBvAGQALgBvAHUAdABsAG8AbwBrAC4AYwBvAG0A]\r\n" +
		"* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+\r\ngwc OK CAPABILITY completed.\r\n" +
		"gwl NO AUTHENTICATE failed.\r\n",
	"* OK The Microsoft Exchange IMAP4 service is ready.\r\n" +
		"* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=NTLM AUTH=GSSAPI UIDPLUS MOVE ID CHILDREN IDLE NAMESPACE LITERAL+\r\ngwc OK CAPABILITY completed.\r\n" +
		"gwl NO LOGIN failed.\r\n* BYE Connection is closed. 14\r\n",
	"* OK The Microsoft Exchange IMAP4 service is ready.\r\n" +
		"* CAPABILITY IMAP4 IMAP4rev1 LOGINDISABLED STARTTLS UIDPLUS MOVE ID CHILDREN IDLE NAMESPACE LITERAL+\r\ngwc OK CAPABILITY completed.\r\n",
	"* OK The Microsoft Exchange IMAP4 service is ready.\r\n" +
		"* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=NTLM UIDPLUS ID CHILDREN IDLE NAMESPACE\r\ngwc OK CAPABILITY completed.\r\n" +
		"+\r\n+\r\ngwl NO Server Unavailable. 15\r\n* BYE Connection closed.\r\n",
	"* OK The Microsoft Exchange IMAP4 service is ready.\r\n" +
		"* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN UIDPLUS ID\r\ngwc OK CAPABILITY completed.\r\n" +
		"gwl BAD User is authenticated but not connected.\r\n",
	"* BYE Connection is closed. 13\r\n",
	// Hostile.
	"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n* OK {9223372036854775807}\r\n\x00\x00\x00\x00",
	"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n* OK {18446744073709551616+}\r\nAAAA",
	"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n* OK {-1}\r\n* OK {}\r\n* OK {+5}\r\ngwl OK done\r\n",
	"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n" + strings.Repeat("* OK still there\r\n", backend.MaxReplyLines+1) + "gwl OK done\r\n",
	"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n" + strings.Repeat("+\r\n", backend.MaxReplyLines+1),
	"* OK hi\r\n* CAPABILITY {60000}\r\nIMAP4rev1 ",
	"* OK hi\r\n* CAPABILITY\r\n*  CAPABILITY x\r\n* capability AUTH=PLAIN SASL-IR\r\ngwc OK\r\ngwl OK [CAPABILITY] x\r\n",
	"* OK [CAPABILITY IMAP4rev1] x\r\ngwl OK [CAPABILITY {3}\r\na\r\n] Logged in\r\n",
	"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] " + strings.Repeat("x", 5000) + " {3}\r\nabc\r\ngwl OK\r\n",
}

// FuzzResponse feeds arbitrary bytes as everything a backend says during one
// login, through the gateway's own steps (greeting, CAPABILITY if needed, the
// login reply, the post-login CAPABILITY). Invariants: no panic; the gateway
// reads at most backend.MaxReplyBytes per command and keeps at most backend.MaxReplyLines
// untagged responses and backend.MaxReplyBytes of them; the outcome agrees with the
// reply; the same input gives the same result. No sockets, clocks or shared
// state: an input's result depends on its bytes only, so every crasher
// reproduces.
func FuzzResponse(f *testing.F) {
	for _, s := range responseSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		a := replayBackend(t, in)
		if b := replayBackend(t, in); !reflect.DeepEqual(a, b) {
			t.Fatalf("two runs over the same replies differ:\n%+v\n%+v", a, b)
		}
	})
}

// replayed is what one login over the given replies came to.
type replayed struct {
	stage    string
	err      string
	outcome  string
	st       status
	caps     string
	untagged []string
	wrote    string
	read     int
}

// commandsPerLogin is how many commands' answers one login reads: greeting,
// CAPABILITY, login, post-login CAPABILITY.
const commandsPerLogin = 4

func replayBackend(t *testing.T, in []byte) replayed {
	src := &countingReader{r: bytes.NewReader(in)}
	w := &recordConn{}
	bc := &backendConn{conn: w, br: bufio.NewReaderSize(src, 4096)}
	var r replayed
	defer func() {
		r.wrote, r.read = w.b.String(), src.n
		if limit := commandsPerLogin*backend.MaxReplyBytes + 4096; r.read > limit {
			t.Fatalf("read %d bytes of the backend's %d, want at most %d", r.read, len(in), limit)
		}
	}()
	err := bc.greeting()
	if r.stage = "greeting"; err == nil && bc.caps == nil {
		r.stage, err = "capability", bc.capability()
	}
	if err != nil {
		r.err = err.Error()
		return r
	}
	chunks, err := bc.loginChunks(creds{user: `user@dom\shared@dom`, password: []byte("p\xc3\xa4ss word")})
	if err != nil {
		r.stage, r.err = "chunks", err.Error()
		return r
	}
	if _, err := w.Write([]byte(chunks[0])); err != nil {
		t.Fatal(err)
	}
	r.stage = "login"
	res := bc.loginReply(chunks[1:])
	checkLoginResult(t, res)
	if res.outcome == outcomeOK {
		res.caps = bc.postLoginCaps(&res)
	}
	r.outcome, r.st, r.caps, r.untagged = res.outcome, res.st, res.caps, res.untagged
	if res.err != nil {
		r.err = res.err.Error()
	}
	return r
}

func checkLoginResult(t *testing.T, res loginResult) {
	t.Helper()
	kept := 0
	for _, u := range res.untagged {
		kept += len(u)
	}
	if len(res.untagged) > backend.MaxReplyLines || kept > backend.MaxReplyBytes {
		t.Fatalf("kept %d untagged responses, %d bytes; want at most %d and %d", len(res.untagged), kept, backend.MaxReplyLines, backend.MaxReplyBytes)
	}
	switch res.outcome {
	case outcomeOK, outcomeFailed, outcomeRejected:
		if res.st.Tag != "gwl" || res.err != nil {
			t.Fatalf("outcome %s from %+v, err %v: want the login's tagged reply and no error", res.outcome, res.st, res.err)
		}
	case outcomeUnavailable:
		if res.err == nil {
			t.Fatalf("outcome %s without a reason", res.outcome)
		}
	default:
		t.Fatalf("outcome %q", res.outcome)
	}
	if res.outcome == outcomeOK && res.st.Kind != "OK" || res.outcome == outcomeFailed && res.st.Kind != "NO" {
		t.Fatalf("outcome %s from a tagged %s", res.outcome, res.st.Kind)
	}
}

type countingReader struct {
	r *bytes.Reader
	n int
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += n
	return n, err
}

// recordConn stands for the backend connection in FuzzResponse: the login code
// only writes to it (commands, continuation answers). A real socket would make
// every input depend on the scheduler and cost a round trip.
type recordConn struct {
	net.Conn // nil: any other method panics, so a new use shows at once
	b        bytes.Buffer
}

func (c *recordConn) Write(p []byte) (int, error) {
	if c.b.Len() < 1<<20 {
		c.b.Write(p)
	}
	return len(p), nil
}

// greeting reads the greeting as backend.Dial does (the dialer moved to package
// backend; FuzzResponse keeps feeding the whole login's replies through one
// reader, so it reads the greeting here the same way).
func (bc *backendConn) greeting() error {
	line, err := backend.NewReplyReader(bc.br).Next()
	if err != nil {
		return fmt.Errorf("reading backend greeting: %w", err)
	}
	st := parseStatus(line)
	if st.Tag != "*" || st.Kind != "OK" {
		return fmt.Errorf("%w: greeting %q", errBackend, sanitize(line, 120))
	}
	if st.Code == "CAPABILITY" {
		bc.caps = strings.Fields(st.Args)
	}
	return nil
}
