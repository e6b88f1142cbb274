package proxy_test

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/imapgw/imapgw/internal/testbed"
)

// recordingRelay sits between the gateway and Dovecot: it records what the
// gateway sends, and with hideSASLIR rewrites Dovecot's SASL-IR capability
// away, so that the gateway must replay a login as a continuation.
type recordingRelay struct {
	addr string
	mu   sync.Mutex
	sent bytes.Buffer
}

func startRecordingRelay(t *testing.T, backend string, hideSASLIR bool) *recordingRelay {
	t.Helper()
	r := &recordingRelay{}
	r.addr = startTestRelay(t, backend, func(in, out net.Conn) {
		go r.down(in, out, hideSASLIR)
		go r.up(in, out)
	})
	return r
}

// down copies Dovecot's lines to the gateway.
func (r *recordingRelay) down(in, out net.Conn, hideSASLIR bool) {
	defer in.Close()
	br := bufio.NewReader(out)
	for {
		line, err := br.ReadString('\n')
		if hideSASLIR {
			line = strings.ReplaceAll(line, " SASL-IR", "")
		}
		if _, werr := io.WriteString(in, line); werr != nil || err != nil {
			return
		}
	}
}

// up copies and records the gateway's bytes to Dovecot.
func (r *recordingRelay) up(in, out net.Conn) {
	defer out.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := in.Read(buf)
		r.mu.Lock()
		r.sent.Write(buf[:n])
		r.mu.Unlock()
		if _, werr := out.Write(buf[:n]); werr != nil || err != nil {
			return
		}
	}
}

func (r *recordingRelay) Sent() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sent.String()
}

// oauthTranscripts are the pre-auth conversations of real clients logging in
// with OAuth, byte for byte as their source code writes them (tags, case,
// message layout, the answer to the error challenge). "good" and "old" are
// placeholders for a granted and a revoked token; each step sends its bytes
// and expects a reply starting with its prefix.
//
// Thunderbird (mozilla/releases-comm-central, mailnews/imap/src/nsImapProtocol.cpp
// AuthLogin, Capability, StartTLS, IncrementCommandTagNumber and
// SendDataParseIMAPandCheckForNewMail; mailnews/base/src/OAuth2Module.sys.mjs):
// numeric tags from a random start, lowercase "capability", always SASL-IR
// XOAUTH2; to the error challenge it sends its whole command line again.
//
// MailKit (jstedfast/MailKit, MailKit/Net/Imap/ImapCommand.cs tag
// "{0}{1:D8}" with prefix A; MailKit/Security/SaslMechanismOAuth2.cs and
// SaslMechanismOAuthBearer.cs): SASL-IR when offered, OAUTHBEARER with host and
// port; answers the challenge with an empty response (XOAUTH2) or ^A (AQ==).
//
// K-9 Mail / Thunderbird for Android (thunderbird/thunderbird-android,
// mail/protocols/imap/.../RealImapConnection.kt authenticate, attemptOAuth,
// handleOAuthUntaggedResponse, handleTemporaryOAuthFailure; OAuthBearer.kt):
// tags from 0, SASL-IR required, OAUTHBEARER preferred without host and port,
// an empty line to the challenge, then one retry with a fresh token on the same
// connection.
var oauthTranscripts = []struct {
	name     string
	starttls string      // the STARTTLS command's tag on port 143; "" on 993
	steps    [][2]string // bytes to send (with "good"/"old" tokens), reply prefix
	ok       bool        // the last step logged in
}{
	{"thunderbird XOAUTH2", "", [][2]string{
		{"42 AUTHENTICATE XOAUTH2 {xoauth2:good}\r\n", "42 OK"},
	}, true},
	{"thunderbird STARTTLS XOAUTH2", "42", [][2]string{
		{"43 capability\r\n", "43 OK"},
		{"44 AUTHENTICATE XOAUTH2 {xoauth2:good}\r\n", "44 OK"},
	}, true},
	{"thunderbird expired token", "", [][2]string{
		{"17 AUTHENTICATE XOAUTH2 {xoauth2:old}\r\n", "+ eyJ"},
		{"17 AUTHENTICATE XOAUTH2 {xoauth2:old}\r\n", "17 NO [AUTHENTICATIONFAILED]"},
	}, false},
	{"mailkit XOAUTH2", "", [][2]string{
		{"A00000000 AUTHENTICATE XOAUTH2 {xoauth2:good}\r\n", "A00000000 OK"},
	}, true},
	{"mailkit STARTTLS OAUTHBEARER", "A00000000", [][2]string{
		{"A00000001 CAPABILITY\r\n", "A00000001 OK"},
		{"A00000002 AUTHENTICATE OAUTHBEARER {mailkit-bearer:good}\r\n", "A00000002 OK"},
	}, true},
	{"mailkit OAUTHBEARER revoked", "", [][2]string{
		{"A00000000 AUTHENTICATE OAUTHBEARER {mailkit-bearer:old}\r\n", "+ eyJ"},
		{"AQ==\r\n", "A00000000 NO [AUTHENTICATIONFAILED]"},
	}, false},
	{"mailkit XOAUTH2 revoked", "", [][2]string{
		{"A00000000 AUTHENTICATE XOAUTH2 {xoauth2:old}\r\n", "+ eyJ"},
		{"\r\n", "A00000000 NO [AUTHENTICATIONFAILED]"},
	}, false},
	{"k9 OAUTHBEARER", "", [][2]string{
		{"0 AUTHENTICATE OAUTHBEARER {k9-bearer:good}\r\n", "0 OK"},
	}, true},
	{"k9 STARTTLS OAUTHBEARER", "0", [][2]string{
		{"1 CAPABILITY\r\n", "1 OK"},
		{"2 AUTHENTICATE OAUTHBEARER {k9-bearer:good}\r\n", "2 OK"},
	}, true},
	{"k9 expired token, then a fresh one", "", [][2]string{
		{"0 AUTHENTICATE OAUTHBEARER {k9-bearer:old}\r\n", "+ eyJ"},
		{"\r\n", "0 NO [AUTHENTICATIONFAILED]"},
		{"1 AUTHENTICATE OAUTHBEARER {k9-bearer:good}\r\n", "1 OK"},
	}, true},
}

// transcriptBytes fills a step's placeholders with real messages.
func transcriptBytes(s, good, old string) (string, []string) {
	var msgs []string
	for _, tok := range []struct{ name, token string }{{"good", good}, {"old", old}} {
		for _, form := range []struct {
			name string
			msg  string
		}{
			{"xoauth2", xoauth2("alice", tok.token)},
			{"mailkit-bearer", b64("n,a=alice,\x01host=localhost\x01port=993\x01auth=Bearer " + tok.token + "\x01\x01")},
			{"k9-bearer", b64("n,a=alice,\x01auth=Bearer " + tok.token + "\x01\x01")},
		} {
			ph := "{" + form.name + ":" + tok.name + "}"
			if strings.Contains(s, ph) {
				s = strings.ReplaceAll(s, ph, form.msg)
				msgs = append(msgs, form.msg)
			}
		}
	}
	return s, msgs
}

// TestOAuthClientTranscripts replays real clients' OAuth logins through the
// gateway to Dovecot, and checks that Dovecot received each client message
// byte for byte, as an initial response (Dovecot offers SASL-IR) or, behind a
// relay hiding SASL-IR, as the answer to the "+".
func TestOAuthClientTranscripts(t *testing.T) {
	in := testbed.StartIntrospection(t)
	const good, old = "ya29.good-token_for-alice", "ya29.expired-token"
	in.Grant(good, "alice")
	d := testbed.StartDovecot(t, testbed.DovecotOptions{OAuth: in})
	for _, hide := range []bool{false, true} {
		relay := startRecordingRelay(t, d.Addr, hide)
		g := startGateway(t, relay.addr, nil)
		g.runChecks(t)
		waitFor(t, "the backend's AUTH= capabilities", func() bool { _, known := g.pool.AuthMechanisms(); return known })
		for i, tr := range oauthTranscripts {
			name := tr.name
			if hide {
				name += " (backend without SASL-IR)"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel() // the failures each wait out Dovecot's failure delay
				src := "127.0.1." + string(rune('0'+i))
				if hide {
					src = "127.0.2." + string(rune('0'+i))
				}
				var c *rawClient
				if tr.starttls != "" {
					c = dialRawFrom(t, src, g.starttls, nil)
					greeting(t, c)
					c.send(tr.starttls + " STARTTLS\r\n")
					c.expect(tr.starttls + " OK")
					tc := tlsClient(c.conn, g.clientTLS())
					if err := tc.Handshake(); err != nil {
						t.Fatalf("STARTTLS handshake: %v", err)
					}
					c.conn, c.br = tc, newReader(tc)
				} else {
					c = oauthSource(t, g, src)
				}
				for _, step := range tr.steps {
					data, msgs := transcriptBytes(step[0], good, old)
					c.send(data)
					l := c.line()
					for strings.HasPrefix(l, "* ") {
						l = c.line()
					}
					if !strings.HasPrefix(l, step[1]) {
						t.Fatalf("after %q: reply %q, want %q", strings.TrimSpace(step[0]), l, step[1])
					}
					for _, m := range msgs {
						if !strings.Contains(step[0], " AUTHENTICATE ") {
							continue
						}
						want := " " + m + "\r\n" // SASL-IR
						if hide {
							want = "\r\n" + m + "\r\n" // after the "+"
						}
						if !strings.Contains(relay.Sent(), want) {
							t.Errorf("Dovecot did not receive the client's message as sent")
						}
					}
				}
				if tr.ok {
					c.send("Z1 SELECT INBOX\r\n")
					c.expect("Z1 OK")
				}
				c.send("Z2 LOGOUT\r\n")
				c.until("Z2 OK")
			})
		}
	}
	t.Cleanup(func() { assertNoTokens(t, d.Log(), good, old) })
}
