package proxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/imapgw/imapgw/conf"
)

// OAuth 2.0 logins (issue 14): AUTHENTICATE XOAUTH2 (Google's and Microsoft's
// de facto mechanism) and OAUTHBEARER (RFC 7628). The gateway reads the
// client's message only to learn the user for its policy; the backend gets the
// client's base64 text byte for byte and judges the token itself.

// oauthCreds is what creds carry for an OAuth login besides user and token.
type oauthCreds struct {
	raw string // the client's base64 message, exactly as sent
}

// oauthMsg is what the gateway reads from a client's OAuth message.
type oauthMsg struct {
	user  string // "" when the message names none (OAUTHBEARER's a= is optional)
	token []byte // the bearer token: a secret, never logged
}

// parseXOAuth2 reads "user=" u ^A "auth=Bearer " token ^A ^A. Unknown fields
// are ignored as Dovecot ignores them; a field given twice is refused, since
// servers differ on which one wins and the policy must count the user the
// backend logs in.
func parseXOAuth2(msg []byte) (oauthMsg, error) {
	var m oauthMsg
	var haveUser bool
	for f := range bytes.SplitSeq(msg, []byte{1}) {
		switch {
		case bytes.HasPrefix(f, []byte("user=")):
			if haveUser {
				return oauthMsg{}, errBadSASL
			}
			m.user, haveUser = string(f[5:]), true
		case bytes.HasPrefix(f, []byte("auth=")):
			if m.token != nil {
				return oauthMsg{}, errBadSASL
			}
			t, err := bearer(f[5:])
			if err != nil {
				return oauthMsg{}, err
			}
			m.token = t
		}
	}
	if err := checkOAuth(msg, m); err != nil {
		return oauthMsg{}, err
	}
	return m, nil
}

// parseOAuthBearer reads RFC 7628's client response: a GS2 header
// ("n," or "y," then an optional "a=" authzid, then ","), then ^A-separated
// key=value pairs (auth, host, port, …) ended by ^A^A. Channel binding ("p=")
// is refused: no server behind a TLS-terminating gateway could bind to the
// client's channel.
func parseOAuthBearer(msg []byte) (oauthMsg, error) {
	header, rest, ok := bytes.Cut(msg, []byte{1})
	if !ok {
		return oauthMsg{}, errBadSASL
	}
	user, err := gs2Header(header)
	if err != nil {
		return oauthMsg{}, err
	}
	m := oauthMsg{user: user}
	for f := range bytes.SplitSeq(rest, []byte{1}) {
		key, val, found := bytes.Cut(f, []byte("="))
		switch {
		case len(f) == 0:
		case !found || len(key) == 0:
			return oauthMsg{}, errBadSASL
		case string(key) == "auth":
			if m.token != nil {
				return oauthMsg{}, errBadSASL
			}
			if m.token, err = bearer(val); err != nil {
				return oauthMsg{}, err
			}
		}
	}
	if err := checkOAuth(msg, m); err != nil {
		return oauthMsg{}, err
	}
	return m, nil
}

// gs2Header returns the authzid of "n,a=user," (RFC 5801 section 4, with
// "=2C" and "=3D" escapes), "" for "n,,".
func gs2Header(h []byte) (string, error) {
	parts := bytes.Split(h, []byte(","))
	if len(parts) != 3 || len(parts[2]) != 0 || (string(parts[0]) != "n" && string(parts[0]) != "y") {
		return "", errBadSASL
	}
	a := parts[1]
	if len(a) == 0 {
		return "", nil
	}
	if !bytes.HasPrefix(a, []byte("a=")) || len(a) == 2 {
		return "", errBadSASL
	}
	var out strings.Builder
	for i := 2; i < len(a); i++ {
		if a[i] != '=' {
			out.WriteByte(a[i])
			continue
		}
		switch {
		case i+2 < len(a) && a[i+1] == '2' && a[i+2] == 'C':
			out.WriteByte(',')
		case i+2 < len(a) && a[i+1] == '3' && a[i+2] == 'D':
			out.WriteByte('=')
		default:
			return "", errBadSASL
		}
		i += 2
	}
	return out.String(), nil
}

// bearer returns the token of "Bearer <token>" (the scheme is
// case-insensitive, RFC 6750 section 2.1).
func bearer(v []byte) ([]byte, error) {
	const scheme = "bearer "
	if len(v) <= len(scheme) || !strings.EqualFold(string(v[:len(scheme)]), scheme) {
		return nil, errBadSASL
	}
	return v[len(scheme):], nil
}

// checkOAuth refuses a message without a token, and bytes no server takes in
// one (NUL, CR, LF): the backend would refuse them anyway, uncounted.
func checkOAuth(msg []byte, m oauthMsg) error {
	if len(m.token) == 0 || bytes.ContainsAny(msg, "\x00\r\n") {
		return errBadSASL
	}
	return nil
}

// tokenKey names a login whose message names no user, for the policy (its
// account counters, spray detection) and the log: a hash of the token, never
// the token. Unkeyed, so every node of a cluster names it alike.
func tokenKey(token []byte) string {
	sum := sha256.Sum256(token)
	return "oauth-token:" + hex.EncodeToString(sum[:8])
}

// saslOAuth reads an XOAUTH2 or OAUTHBEARER message: the initial response, or
// the answer to an empty challenge.
func (s *session) saslOAuth(mech string, ir []byte, hasIR bool) (creds, error) {
	line, err := s.saslLine("", ir, hasIR)
	if err != nil {
		return creds{}, err
	}
	msg, err := base64.StdEncoding.DecodeString(string(line))
	if err != nil || len(msg) == 0 {
		return creds{}, errBadSASL
	}
	parse := parseXOAuth2
	if mech == conf.MechOAuthBearer {
		parse = parseOAuthBearer
	}
	m, err := parse(msg)
	if err != nil {
		return creds{}, err
	}
	c := creds{user: m.user, password: m.token, mech: mech, oauth: &oauthCreds{raw: string(line)}}
	if c.user == "" {
		c.user = tokenKey(m.token)
	}
	return c, nil
}

// mechanisms are the SASL mechanisms offered after TLS: [auth] mechanisms,
// or by default PLAIN, LOGIN and the OAuth ones the backend advertises.
func (s *session) mechanisms() []string {
	if len(s.cfg.Auth.Mechanisms) > 0 {
		mechs := make([]string, len(s.cfg.Auth.Mechanisms))
		for i, m := range s.cfg.Auth.Mechanisms {
			mechs[i] = strings.ToUpper(m)
		}
		return mechs
	}
	mechs := []string{conf.MechPlain, conf.MechLogin}
	backend, _ := s.srv.pool.AuthMechanisms()
	for _, m := range conf.OAuthMechanisms {
		if slices.Contains(backend, m) {
			mechs = append(mechs, m)
		}
	}
	return mechs
}

// accepts reports whether AUTHENTICATE mech may go on. By default an OAuth
// mechanism is also tried while the backend's capabilities are unknown (the
// first login after a start), and the backend decides.
func (s *session) accepts(mech string) bool {
	if len(s.cfg.Auth.Mechanisms) > 0 {
		return slices.ContainsFunc(s.cfg.Auth.Mechanisms, func(m string) bool { return strings.EqualFold(m, mech) })
	}
	if mech == conf.MechPlain || mech == conf.MechLogin {
		return true
	}
	backend, known := s.srv.pool.AuthMechanisms()
	return slices.Contains(conf.OAuthMechanisms, mech) && (!known || slices.Contains(backend, mech))
}

// maxChallenge bounds the backend's error challenge relayed to the client
// (Dovecot's JSON is under 200 bytes; Google's and Microsoft's too).
const maxChallenge = 1024

// errNoChallengeAnswer is the reason logged when the client never answered
// the backend's error challenge: the token was refused all the same.
var errNoChallengeAnswer = errors.New("client did not answer the error challenge")

// relayChallenge passes a backend's continuation during an OAuth login (the
// error challenge: base64 JSON saying why the token was refused) to the
// client, and returns the client's answer for the backend: its empty line
// (XOAUTH2), "AQ==" (OAUTHBEARER's ^A) or "*". Anything else becomes "*":
// the exchange is over either way.
func (s *session) relayChallenge(text string) (string, error) {
	if len(text) > maxChallenge || !isBase64Text(text) {
		text = ""
	}
	if err := s.writef("+ %s\r\n", text); err != nil {
		return "", err
	}
	s.armLine() // the answer is a new wait, begun by the challenge
	ans, err := s.rd.ReadLine()
	if err != nil {
		return "", err
	}
	if string(ans) != "*" && !isBase64Text(string(ans)) {
		return "*\r\n", nil
	}
	return string(ans) + "\r\n", nil
}

// isBase64Text: only base64 alphabet bytes (the empty string too).
func isBase64Text(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '=') {
			return false
		}
	}
	return true
}

// oauthChunks replays an OAuth login with the client's own base64 text: as an
// initial response when the backend takes SASL-IR, else after its "+".
func (bc *backendConn) oauthChunks(c creds) ([]string, error) {
	if !bc.has("AUTH=" + c.mech) {
		return nil, fmt.Errorf("%w: backend lacks AUTH=%s", errBackend, c.mech)
	}
	if bc.has("SASL-IR") {
		return []string{"gwl AUTHENTICATE " + c.mech + " " + c.oauth.raw + "\r\n"}, nil
	}
	return []string{"gwl AUTHENTICATE " + c.mech + "\r\n", c.oauth.raw + "\r\n"}, nil
}

// answerChallenge is loginReply's part of the failure dance: the backend
// asked for more after the whole OAuth message, which is how a server says
// the token was refused. The client's answer goes back, and the backend's
// deadline starts again (the client had its own, preauth_timeout).
func (bc *backendConn) answerChallenge(text string) error {
	ans, err := bc.challenge(text)
	bc.challenge = nil
	if err != nil {
		return errNoChallengeAnswer
	}
	bc.conn.SetDeadline(time.Now().Add(bc.server.LoginTimeout))
	_, err = bc.conn.Write([]byte(ans))
	return err
}
