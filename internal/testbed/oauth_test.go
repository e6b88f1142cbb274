package testbed

import (
	"bufio"
	"encoding/base64"
	"net"
	"strings"
	"testing"
	"time"
)

// TestDovecotOAuth checks the oauth2 passdb against the introspection
// endpoint, spoken to directly: a granted token logs in with XOAUTH2 and
// OAUTHBEARER; a revoked one, or one presented for another user, gets the
// error challenge and then NO [AUTHENTICATIONFAILED].
func TestDovecotOAuth(t *testing.T) {
	in := StartIntrospection(t)
	in.Grant("tok-alice", "alice")
	d := StartDovecot(t, DovecotOptions{OAuth: in})
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	cases := []struct {
		name, cmd, answer, want string
	}{
		{"xoauth2 good", "AUTHENTICATE XOAUTH2 " + b64("user=alice\x01auth=Bearer tok-alice\x01\x01"), "", "a OK"},
		{"oauthbearer good", "AUTHENTICATE OAUTHBEARER " + b64("n,a=alice,\x01host=localhost\x01port=143\x01auth=Bearer tok-alice\x01\x01"), "", "a OK"},
		{"xoauth2 revoked", "AUTHENTICATE XOAUTH2 " + b64("user=alice\x01auth=Bearer tok-old\x01\x01"), "", "a NO [AUTHENTICATIONFAILED]"},
		{"oauthbearer revoked", "AUTHENTICATE OAUTHBEARER " + b64("n,a=alice,\x01auth=Bearer tok-old\x01\x01"), "AQ==", "a NO [AUTHENTICATIONFAILED]"},
		{"other user", "AUTHENTICATE XOAUTH2 " + b64("user=bob\x01auth=Bearer tok-alice\x01\x01"), "", "a NO [AUTHENTICATIONFAILED]"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Each case from its own address: Dovecot's auth penalty for one
			// address's failures would delay the next case by seconds.
			dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(20+i))}}
			conn, err := dialer.Dial("tcp", d.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(15 * time.Second))
			br := bufio.NewReader(conn)
			br.ReadString('\n') // greeting
			conn.Write([]byte("a " + tc.cmd + "\r\n"))
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("reading: %v", err)
				}
				line = strings.TrimRight(line, "\r\n")
				if strings.HasPrefix(line, "+ ") {
					challenge, _ := base64.StdEncoding.DecodeString(line[2:])
					if !strings.Contains(string(challenge), `"status"`) {
						t.Errorf("challenge %q decodes to %q, want Dovecot's JSON error", line, challenge)
					}
					t.Logf("challenge: %s", challenge)
					conn.Write([]byte(tc.answer + "\r\n"))
					continue
				}
				if strings.HasPrefix(line, "a ") {
					if !strings.HasPrefix(line, tc.want) {
						t.Fatalf("reply %q, want %q", line, tc.want)
					}
					return
				}
			}
		})
	}
	if strings.Contains(d.Log(), "tok-") {
		t.Errorf("a token is in Dovecot's log:\n%s", d.Log())
	}
}
