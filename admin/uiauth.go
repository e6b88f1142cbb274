package admin

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The status page's authentication (issue 17). A browser cannot send the
// bearer token by itself, so the page asks for it once and hands back a
// session cookie instead: HttpOnly (no script reads it), SameSite=Strict (no
// other site's page sends it), Secure when the endpoint serves TLS. The cookie
// holds a random id and an expiry, signed with a key made at start, not the
// token: a copied cookie expires, a restart ends every session, and the token
// never sits in the browser. Each state-changing form carries a CSRF token
// derived from the session id, so a form on another page cannot forge one.
const (
	sessionCookie = "imapgw_session"
	flashCookie   = "imapgw_flash"
	sessionTTL    = 12 * time.Hour
	sidLen        = 16
)

// newUIKey makes the key that signs session cookies and CSRF tokens.
func newUIKey() []byte {
	k := make([]byte, 32)
	rand.Read(k) // never fails (crypto/rand, Go 1.24+)
	return k
}

func (s *Server) mac(kind string, data []byte) []byte {
	m := hmac.New(sha256.New, s.ui.key)
	m.Write([]byte(kind))
	m.Write([]byte{0})
	m.Write(data)
	return m.Sum(nil)
}

// newSession returns a session cookie valid until now+sessionTTL and its id.
func (s *Server) newSession(now time.Time) (*http.Cookie, string) {
	raw := make([]byte, sidLen+8)
	rand.Read(raw[:sidLen])
	binary.BigEndian.PutUint64(raw[sidLen:], uint64(now.Add(sessionTTL).Unix()))
	val := b64(raw) + "." + b64(s.mac("session", raw))
	return s.cookie(sessionCookie, val, sessionTTL), b64(raw[:sidLen])
}

// session returns the id of r's valid, unexpired session cookie.
func (s *Server) session(r *http.Request) (string, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return "", false
	}
	body, sig, ok := strings.Cut(c.Value, ".")
	if !ok {
		return "", false
	}
	raw, err1 := base64.RawURLEncoding.DecodeString(body)
	mac, err2 := base64.RawURLEncoding.DecodeString(sig)
	if err1 != nil || err2 != nil || len(raw) != sidLen+8 || !hmac.Equal(mac, s.mac("session", raw)) {
		return "", false
	}
	if s.o.Now().Unix() >= int64(binary.BigEndian.Uint64(raw[sidLen:])) {
		return "", false
	}
	return b64(raw[:sidLen]), true
}

// csrfToken is the token the forms of session sid carry.
func (s *Server) csrfToken(sid string) string { return b64(s.mac("csrf", []byte(sid))) }

func (s *Server) validCSRF(sid, got string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(s.csrfToken(sid))) == 1
}

// cookie is a cookie of the page with the attributes every one of them gets.
func (s *Server) cookie(name, value string, maxAge time.Duration) *http.Cookie {
	return &http.Cookie{
		Name: name, Value: value, Path: "/",
		MaxAge:   int(maxAge / time.Second),
		HttpOnly: true,
		SameSite: http.SameSiteStrictMode,
		Secure:   s.o.TLS != nil,
	}
}

func (s *Server) clearCookie(w http.ResponseWriter, name string) {
	c := s.cookie(name, "", 0)
	c.MaxAge = -1
	http.SetCookie(w, c)
}

// tokenMatches compares a token typed into the login form with the
// configured one, in constant time as the bearer check does.
func (s *Server) tokenMatches(tok string) bool {
	return s.token != nil && subtle.ConstantTimeCompare(digest(strings.TrimSpace(tok)), s.token) == 1
}

// sameOrigin refuses a request whose Origin header names another origin:
// browsers send it on every POST, so this stops a cross-site form even
// before the CSRF token is compared. No Origin (curl, old browsers) passes.
func sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && strings.EqualFold(u.Host, r.Host)
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// flash is a one-time message shown on the page after an action redirects
// back to it (Post/Redirect/Get, so a reload never repeats the action).
type flash struct {
	Kind string // "ok" or "error"
	Text string
}

func (s *Server) setFlash(w http.ResponseWriter, f flash) {
	http.SetCookie(w, s.cookie(flashCookie, b64([]byte(f.Kind+"|"+f.Text)), time.Minute))
}

// takeFlash reads and clears the flash cookie.
func (s *Server) takeFlash(w http.ResponseWriter, r *http.Request) *flash {
	c, err := r.Cookie(flashCookie)
	if err != nil {
		return nil
	}
	s.clearCookie(w, flashCookie)
	raw, err := base64.RawURLEncoding.DecodeString(c.Value)
	if err != nil {
		return nil
	}
	kind, text, ok := strings.Cut(string(raw), "|")
	if !ok || (kind != "ok" && kind != "error") || len(text) > 300 {
		return nil
	}
	return &flash{Kind: kind, Text: text}
}
