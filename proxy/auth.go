package proxy

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/proxy/imapwire"
)

// creds are what the client offered. The password leaves the session only
// towards the backend, and as a keyed hash towards the policy.
type creds struct {
	authzid  string
	user     string
	password []byte
	mech     string      // "LOGIN", "PLAIN", "AUTHENTICATE LOGIN", "XOAUTH2" or "OAUTHBEARER": for the log
	oauth    *oauthCreds // XOAUTH2, OAUTHBEARER: password is the token
}

// mailbox is the user whose mail the session opens, which the backend pool
// routes by: the authorization identity when one is given (a master or admin
// user logging in as alice works on alice's mailbox, on alice's server).
func (c creds) mailbox() string {
	if c.authzid != "" {
		return c.authzid
	}
	return c.user
}

// notBeforeTLS refuses credentials on a STARTTLS listener before the handshake
// (LOGINDISABLED, RFC 9051 section 6.2.3). They were exposed already; they are
// never forwarded.
func (s *session) notBeforeTLS(tag string) bool {
	if s.tls {
		return false
	}
	s.writef("%s NO [PRIVACYREQUIRED] Use STARTTLS first\r\n", tag)
	return true
}

func (s *session) login(cmd *imapwire.Command) (relaying, done bool) {
	if s.notBeforeTLS(cmd.Tag) {
		return false, false
	}
	if len(cmd.Args) != 2 || !cmd.Args[0].IsString() || !cmd.Args[1].IsString() {
		s.writef("%s BAD LOGIN takes a user name and a password\r\n", cmd.Tag)
		return false, false
	}
	c := creds{user: string(cmd.Args[0].Bytes), password: cmd.Args[1].Bytes, mech: "LOGIN"}
	return s.tryLogin(cmd.Tag, c)
}

func (s *session) authenticate(cmd *imapwire.Command) (relaying, done bool) {
	if s.notBeforeTLS(cmd.Tag) {
		return false, false
	}
	if len(cmd.Args) < 1 || len(cmd.Args) > 2 || cmd.Args[0].Kind != imapwire.Atom {
		s.writef("%s BAD AUTHENTICATE takes a mechanism and an optional initial response\r\n", cmd.Tag)
		return false, false
	}
	var ir []byte
	hasIR := len(cmd.Args) == 2
	if hasIR {
		if cmd.Args[1].Kind != imapwire.Atom {
			s.writef("%s BAD Invalid initial response\r\n", cmd.Tag)
			return false, false
		}
		ir = cmd.Args[1].Bytes
	}
	var c creds
	var err error
	mech := strings.ToUpper(string(cmd.Args[0].Bytes))
	if !s.accepts(mech) {
		s.writef("%s NO Unsupported authentication mechanism\r\n", cmd.Tag)
		return false, false
	}
	switch mech {
	case conf.MechXOAuth2, conf.MechOAuthBearer:
		c, err = s.saslOAuth(mech, ir, hasIR)
	case "PLAIN":
		c, err = s.saslPlain(ir, hasIR)
	case "LOGIN":
		c, err = s.saslLogin(ir, hasIR)
	default:
		s.writef("%s NO Unsupported authentication mechanism\r\n", cmd.Tag)
		return false, false
	}
	if err != nil {
		return s.saslFailed(cmd.Tag, err)
	}
	return s.tryLogin(cmd.Tag, c)
}

var (
	errCancelled = errors.New("Authentication cancelled")
	errBadSASL   = errors.New("Invalid SASL response")
)

// saslFailed answers a SASL exchange that produced no credentials. A response
// that could not be read ends the session as a command that could not be:
// BYE for a line too long, a timeout or a shutdown.
func (s *session) saslFailed(tag string, err error) (relaying, done bool) {
	if errors.Is(err, errCancelled) || errors.Is(err, errBadSASL) {
		s.writef("%s BAD %s\r\n", tag, err.Error())
		return false, false
	}
	s.readFailed(err)
	return false, true
}

// saslResponse returns the initial response if there was one, else asks for a
// response with the (base64) challenge and reads it. "=" is an empty initial
// response (RFC 4959); "*" cancels (RFC 9051 section 6.2.2).
func (s *session) saslResponse(challenge string, ir []byte, hasIR bool) ([]byte, error) {
	line, err := s.saslLine(challenge, ir, hasIR)
	if err != nil {
		return nil, err
	}
	out, err := base64.StdEncoding.DecodeString(string(line))
	if err != nil {
		return nil, errBadSASL
	}
	return out, nil
}

// saslLine returns the client's response as sent (base64; an initial
// response "=" is the empty one): the initial response, or the line answering
// the challenge. "*" cancels.
func (s *session) saslLine(challenge string, ir []byte, hasIR bool) ([]byte, error) {
	line := ir
	if !hasIR {
		if err := s.writef("+ %s\r\n", challenge); err != nil {
			return nil, err
		}
		s.armLine() // the response is a new wait, begun by the challenge
		var err error
		if line, err = s.rd.ReadLine(); err != nil {
			return nil, err
		}
		if string(line) == "*" {
			return nil, errCancelled
		}
	} else if string(line) == "=" {
		return []byte{}, nil
	}
	return line, nil
}

// saslPlain: message = [authzid] NUL authcid NUL passwd (RFC 4616).
func (s *session) saslPlain(ir []byte, hasIR bool) (creds, error) {
	msg, err := s.saslResponse("", ir, hasIR)
	if err != nil {
		return creds{}, err
	}
	parts := bytes.Split(msg, []byte{0})
	if len(parts) != 3 || len(parts[1]) == 0 {
		return creds{}, errBadSASL
	}
	c := creds{authzid: string(parts[0]), user: string(parts[1]), password: parts[2], mech: "PLAIN"}
	if c.authzid == c.user {
		c.authzid = "" // mutt sends its user as authzid: the same login
	}
	return c, nil
}

// saslLogin is the obsolete but common LOGIN mechanism: "Username:" and
// "Password:" challenges; curl sends the user name as the initial response.
func (s *session) saslLogin(ir []byte, hasIR bool) (creds, error) {
	user, err := s.saslResponse("VXNlcm5hbWU6", ir, hasIR)
	if err != nil {
		return creds{}, err
	}
	pass, err := s.saslResponse("UGFzc3dvcmQ6", nil, false)
	if err != nil {
		return creds{}, err
	}
	if len(user) == 0 || bytes.IndexByte(user, 0) >= 0 || bytes.IndexByte(pass, 0) >= 0 {
		return creds{}, errBadSASL
	}
	return creds{user: string(user), password: pass, mech: "AUTHENTICATE LOGIN"}, nil
}
