package proxy

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func TestParseXOAuth2(t *testing.T) {
	cases := []struct {
		msg, user, token string
		ok               bool
	}{
		{"user=alice@example.com\x01auth=Bearer ya29.a0Af\x01\x01", "alice@example.com", "ya29.a0Af", true},
		{"auth=Bearer tok\x01user=bob\x01\x01", "bob", "tok", true}, // any order
		{"user=bob\x01auth=bearer tok\x01\x01", "bob", "tok", true}, // scheme case-insensitive
		{"user=bob\x01auth=Bearer tok", "bob", "tok", true},         // no trailing ^A^A: Dovecot takes it
		{"user=bob\x01x-extra=1\x01auth=Bearer tok\x01\x01", "bob", "tok", true},
		{"auth=Bearer tok\x01\x01", "", "tok", true},                         // no user: keyed by the token
		{"user=bob\x01user=alice\x01auth=Bearer tok\x01\x01", "", "", false}, // which one would the backend log in?
		{"user=bob\x01auth=Bearer a\x01auth=Bearer b\x01\x01", "", "", false},
		{"user=bob\x01auth=Basic Ym9iOnB3\x01\x01", "", "", false},
		{"user=bob\x01auth=Bearer \x01\x01", "", "", false},
		{"user=bob\x01\x01", "", "", false},
		{"user=bob\x01auth=Bearer t\x00k\x01\x01", "", "", false},
		{"user=bob\x01auth=Bearer t\r\nk\x01\x01", "", "", false},
	}
	for _, tc := range cases {
		m, err := parseXOAuth2([]byte(tc.msg))
		if (err == nil) != tc.ok || err == nil && (m.user != tc.user || string(m.token) != tc.token) {
			t.Errorf("parseXOAuth2(%q) = %q, %q, %v, want %q, %q, ok %v", tc.msg, m.user, m.token, err, tc.user, tc.token, tc.ok)
		}
	}
}

func TestParseOAuthBearer(t *testing.T) {
	cases := []struct {
		msg, user, token string
		ok               bool
	}{
		// RFC 7628 section 4.1's example.
		{"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01",
			"user@example.com", "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==", true},
		{"n,,\x01auth=Bearer tok\x01\x01", "", "tok", true}, // no authzid
		{"y,a=bob,\x01auth=Bearer tok\x01\x01", "bob", "tok", true},
		{"n,a=a=2Cb=3Dc,\x01auth=Bearer tok\x01\x01", "a,b=c", "tok", true},
		{"n,a=bob,\x01auth=Bearer tok", "bob", "tok", true},
		{"p=tls-unique,a=bob,\x01auth=Bearer tok\x01\x01", "", "", false}, // channel binding
		{"n,a=bob\x01auth=Bearer tok\x01\x01", "", "", false},
		{"n,a=bob,x\x01auth=Bearer tok\x01\x01", "", "", false},
		{"n,a=,\x01auth=Bearer tok\x01\x01", "", "", false},
		{"n,a=b=41,\x01auth=Bearer tok\x01\x01", "", "", false},
		{"n,a=bob,\x01auth=Bearer a\x01auth=Bearer b\x01\x01", "", "", false},
		{"n,a=bob,\x01host\x01auth=Bearer tok\x01\x01", "", "", false},
		{"n,a=bob,\x01host=h\x01\x01", "", "", false},
		{"n,a=bob,auth=Bearer tok", "", "", false},
		{"user=bob\x01auth=Bearer tok\x01\x01", "", "", false}, // XOAUTH2 sent as OAUTHBEARER
	}
	for _, tc := range cases {
		m, err := parseOAuthBearer([]byte(tc.msg))
		if (err == nil) != tc.ok || err == nil && (m.user != tc.user || string(m.token) != tc.token) {
			t.Errorf("parseOAuthBearer(%q) = %q, %q, %v, want %q, %q, ok %v", tc.msg, m.user, m.token, err, tc.user, tc.token, tc.ok)
		}
	}
}

func TestOAuthChunks(t *testing.T) {
	raw := "dXNlcj1ib2IBYXV0aD1CZWFyZXIgdG9rAQE="
	c := creds{user: "bob", password: []byte("tok"), mech: "XOAUTH2", oauth: &oauthCreds{raw: raw}}
	cases := []struct {
		caps string
		want []string
	}{
		{"IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=XOAUTH2", []string{"gwl AUTHENTICATE XOAUTH2 " + raw + "\r\n"}},
		{"IMAP4rev1 AUTH=XOAUTH2", []string{"gwl AUTHENTICATE XOAUTH2\r\n", raw + "\r\n"}},
	}
	for _, tc := range cases {
		bc := &backendConn{caps: strings.Fields(tc.caps)}
		if got, err := bc.loginChunks(c); err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("loginChunks(%q, XOAUTH2) = %q, %v, want %q", tc.caps, got, err, tc.want)
		}
	}
	bc := &backendConn{caps: []string{"IMAP4rev1", "SASL-IR", "AUTH=PLAIN", "AUTH=OAUTHBEARER"}}
	if _, err := bc.loginChunks(c); err == nil {
		t.Errorf("loginChunks(XOAUTH2) to a backend without AUTH=XOAUTH2: no error")
	}
}

func TestTokenKey(t *testing.T) {
	k := tokenKey([]byte("secret-token"))
	if strings.Contains(k, "secret") || k != tokenKey([]byte("secret-token")) || k == tokenKey([]byte("other")) {
		t.Errorf("tokenKey = %q: want a stable hash that differs per token and hides it", k)
	}
}

// FuzzOAuth feeds the SASL OAuth parsers arbitrary client messages. Whatever
// they accept carries a non-empty token found verbatim in the message, with
// no byte a backend would choke on, and a user the message names.
func FuzzOAuth(f *testing.F) {
	for _, s := range []string{
		"user=alice@example.com\x01auth=Bearer ya29.a0Af\x01\x01",
		"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01",
		"n,,\x01auth=Bearer tok\x01\x01",
		"n,a=a=2Cb=3Dc,\x01auth=Bearer tok\x01\x01",
		"p=tls-unique,a=bob,\x01auth=Bearer tok\x01\x01",
		"user=bob\x01user=alice\x01auth=Bearer tok\x01\x01",
		"\x01\x01", "", "n,a=", "auth=Bearer ",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		for name, parse := range map[string]func([]byte) (oauthMsg, error){"XOAUTH2": parseXOAuth2, "OAUTHBEARER": parseOAuthBearer} {
			m, err := parse(msg)
			if err != nil {
				if m.user != "" || m.token != nil {
					t.Fatalf("%s(%q) failed but returned %q, %q", name, msg, m.user, m.token)
				}
				continue
			}
			if len(m.token) == 0 || !bytes.Contains(msg, m.token) || bytes.ContainsAny(m.token, "\x00\r\n\x01") {
				t.Fatalf("%s(%q): token %q", name, msg, m.token)
			}
			if name == "XOAUTH2" && m.user != "" && !bytes.Contains(msg, []byte("user="+m.user+"\x01")) && !bytes.HasSuffix(msg, []byte("user="+m.user)) {
				t.Fatalf("%s(%q): user %q not in the message", name, msg, m.user)
			}
			if name == "OAUTHBEARER" && m.user != "" {
				esc := strings.NewReplacer("=", "=3D", ",", "=2C").Replace(m.user)
				if !bytes.Contains(msg, []byte(",a="+esc+",")) {
					t.Fatalf("%s(%q): user %q not in the message", name, msg, m.user)
				}
			}
		}
	})
}
