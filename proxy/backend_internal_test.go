package proxy

import (
	"reflect"
	"strings"
	"testing"
)

func TestLoginChunks(t *testing.T) {
	cases := []struct {
		caps string
		c    creds
		want []string
	}{
		{"IMAP4rev1 AUTH=PLAIN SASL-IR", creds{user: "alice", password: []byte("pw")},
			[]string{"gwl AUTHENTICATE PLAIN AGFsaWNlAHB3\r\n"}},
		{"IMAP4rev1 AUTH=PLAIN", creds{authzid: "admin", user: "alice", password: []byte("pw")},
			[]string{"gwl AUTHENTICATE PLAIN\r\n", "YWRtaW4AYWxpY2UAcHc=\r\n"}},
		{"IMAP4rev1", creds{user: "alice", password: []byte(`p"w\`)},
			[]string{"gwl LOGIN \"alice\" \"p\\\"w\\\\\"\r\n"}},
		{"IMAP4rev1 LITERAL+", creds{user: "carol", password: []byte("pä")},
			[]string{"gwl LOGIN \"carol\" {3+}\r\npä\r\n"}},
		{"IMAP4rev1", creds{user: "carol", password: []byte("pä")},
			[]string{"gwl LOGIN \"carol\" {3}\r\n", "pä\r\n"}},
		{"IMAP4rev1", creds{user: "ü", password: []byte("pä")},
			[]string{"gwl LOGIN {2}\r\n", "ü {3}\r\n", "pä\r\n"}},
	}
	for _, tc := range cases {
		bc := &backendConn{caps: strings.Fields(tc.caps)}
		got, err := bc.loginChunks(tc.c)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("loginChunks(%q, %q) = %q, %v, want %q", tc.caps, tc.c.user, got, err, tc.want)
		}
	}
	bc := &backendConn{caps: []string{"IMAP4rev1", "LOGINDISABLED"}}
	if _, err := bc.loginChunks(creds{user: "a", password: []byte("b")}); err == nil {
		t.Errorf("loginChunks with LOGINDISABLED and no AUTH=PLAIN: no error")
	}
}

func TestClassify(t *testing.T) {
	cases := []struct{ line, want string }{
		{"gwl OK [CAPABILITY IMAP4rev1 IDLE] Logged in", outcomeOK},
		{"gwl NO [AUTHENTICATIONFAILED] Authentication failed.", outcomeFailed},
		{"gwl NO Login failed", outcomeFailed},
		{"gwl NO [UNAVAILABLE] Temporary authentication failure", outcomeUnavailable},
		{"gwl NO [SERVERBUG] oops", outcomeUnavailable},
		{"gwl NO [EXPIRED] Password expired", outcomeRejected},
		{"gwl NO [CONTACTADMIN] Call us", outcomeRejected},
		{"gwl BAD Error in IMAP command", outcomeUnavailable},
		// Exchange: no codes, so the text tells a password from an outage.
		{"gwl NO LOGIN failed.", outcomeFailed},
		{"gwl NO AUTHENTICATE failed.", outcomeFailed},
		{"gwl NO Server Unavailable. 15", outcomeUnavailable},
		{"gwl NO server unavailable. 21", outcomeUnavailable},
		{"gwl NO The AUTH protocol exchange was canceled by the client.", outcomeUnavailable},
		{"gwl BAD User is authenticated but not connected.", outcomeUnavailable},
	}
	for _, tc := range cases {
		if got := classify(parseStatus(tc.line)); got != tc.want {
			t.Errorf("classify(%q) = %s, want %s", tc.line, got, tc.want)
		}
	}
}

func TestParseStatus(t *testing.T) {
	st := parseStatus("a1 ok [CAPABILITY IMAP4rev1 IDLE] Logged in")
	want := status{Tag: "a1", Kind: "OK", Code: "CAPABILITY", Args: "IMAP4rev1 IDLE", Text: "Logged in"}
	if st != want {
		t.Errorf("parseStatus = %+v, want %+v", st, want)
	}
}

// TestMailboxRoutesByAuthzid: the pool routes by the mailbox's owner, the
// authorization identity when one is given, else the user.
func TestMailboxRoutesByAuthzid(t *testing.T) {
	if got := (creds{user: "alice"}).mailbox(); got != "alice" {
		t.Errorf("mailbox() = %q, want alice", got)
	}
	if got := (creds{authzid: "alice", user: "admin"}).mailbox(); got != "alice" {
		t.Errorf("mailbox() with authzid alice, user admin = %q, want alice", got)
	}
}
