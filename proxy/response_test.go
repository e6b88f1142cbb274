package proxy_test

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
)

// TestHostileBackendReplies: a backend (or anyone on the path to one with
// backend.tls = "none") answers with replies no IMAP server sends, over a real
// loopback socket, to several logins at once. Each login ends promptly as a
// backend error (NO [UNAVAILABLE], the reason in the auth line), the
// gateway's heap stays bounded, and the sessions and the gateway go on
// (issue 11.3).
func TestHostileBackendReplies(t *testing.T) {
	const (
		connectTimeout = 3 * time.Second
		logins         = 4
		// prompt is well under connectTimeout, up to which the replies
		// above kept a login reading before the fix, and far above the few
		// milliseconds the logins take now: slack for a loaded machine.
		prompt    = 1500 * time.Millisecond
		heapBound = 8 << 20
	)
	greet := "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] hi\r\n"
	// loginReply greets, waits for the login and answers it with head, then
	// with unit for as long as the gateway reads.
	loginReply := func(head, unit string) func(net.Conn, *bufio.Reader) {
		return func(c net.Conn, br *bufio.Reader) {
			io.WriteString(c, greet)
			br.ReadString('\n')
			flood(c, br, head, unit)
		}
	}
	// capReply greets without capabilities, so the gateway asks CAPABILITY,
	// and answers that.
	capReply := func(head, unit string) func(net.Conn, *bufio.Reader) {
		return func(c net.Conn, br *bufio.Reader) {
			io.WriteString(c, "* OK hi\r\n")
			br.ReadString('\n')
			flood(c, br, head, unit)
		}
	}
	cases := []struct {
		name   string
		serve  func(net.Conn, *bufio.Reader)
		within time.Duration
		log    string // in the auth line's reason
	}{
		{"literal size near MaxInt64", loginReply("* OK {9223372036854775807}\r\n", strings.Repeat("\x00", 4096)), prompt, "too long"},
		{"literal size past int64", loginReply("* OK {18446744073709551616}\r\n", strings.Repeat("A", 4096)), prompt, "too long"},
		{"literal size of 400 digits", loginReply("* OK {"+strings.Repeat("9", 400)+"}\r\n", strings.Repeat("A", 4096)), prompt, "too long"},
		{"negative literal size, then no line end", loginReply("* OK {-1}\r\n* OK ", "x"), prompt, "too long"},
		{"endless untagged lines", loginReply("", "* OK still there\r\n"), prompt, "too many responses"},
		{"endless blank lines", loginReply("", "\r\n"), prompt, "too many responses"},
		{"endless continuation requests", loginReply("", "+ more\r\n"), prompt, "too many responses"},
		{"endless long untagged lines", loginReply("", "* OK "+strings.Repeat("y", 4000)+"\r\n"), prompt, "too long"},
		{"endless literals", loginReply("", "* X {3000}\r\n"+strings.Repeat("z", 3000)+"\r\n"), prompt, "too long"},
		{"endless untagged lines answering CAPABILITY", capReply("", "* OK still there\r\n"), prompt, "too many responses"},
		{"literal size near MaxInt64 answering CAPABILITY", capReply("* CAPABILITY {9223372036854775807}\r\n", strings.Repeat("\x00", 4096)), prompt, "too long"},
		{"a literal that never ends", capReply("* CAPABILITY {60000}\r\nIMAP4rev1 ", ""), connectTimeout + prompt, "timeout"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			be := fakeBackend(t, tc.serve)
			g := startGateway(t, be, func(c *conf.Config) {
				c.Backend.ConnectTimeout = conf.D(connectTimeout)
				c.Backend.ClientIP = conf.ClientIPNone
			})
			clients := make([]*rawClient, logins)
			for i := range clients {
				clients[i] = dialRaw(t, g.implicit, g.clientTLS())
				greeting(t, clients[i])
			}
			base := heapInuse()
			peak := watchHeap()
			start := time.Now()
			for _, c := range clients {
				c.send("a LOGIN alice alice-secret\r\n")
			}
			for _, c := range clients {
				c.expect("a NO [UNAVAILABLE]")
			}
			took, grew := time.Since(start), int64(peak())-int64(base)
			t.Logf("%d logins answered in %v; heap in use grew by at most %d KB", logins, took.Round(time.Millisecond), grew>>10)
			if took > tc.within {
				t.Errorf("%d logins answered after %v, want within %v", logins, took, tc.within)
			}
			if grew > heapBound {
				t.Errorf("heap in use grew by %d MB during %d logins, want under %d MB", grew>>20, logins, heapBound>>20)
			}
			if line := authLine(g.logs.String()); !strings.Contains(line, "outcome=error") || !strings.Contains(line, tc.log) {
				t.Errorf("auth line %q: want outcome=error and the reason (%q)", line, tc.log)
			}
			for _, c := range clients {
				c.send("b NOOP\r\n")
				c.expect("b OK")
			}
			fresh := dialRaw(t, g.implicit, g.clientTLS())
			greeting(t, fresh)
			fresh.send("c CAPABILITY\r\n")
			fresh.until("c OK")
		})
	}
}

// flood writes head, then unit again and again until the gateway stops
// reading (or 10 s pass), reading and dropping what the gateway sends back.
// An empty unit writes head and waits for the gateway to hang up.
func flood(c net.Conn, br *bufio.Reader, head, unit string) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, head); err != nil || unit == "" {
		io.Copy(io.Discard, br)
		return
	}
	go io.Copy(io.Discard, br)
	b := []byte(strings.Repeat(unit, max(1, 16384/len(unit))))
	for {
		if _, err := c.Write(b); err != nil {
			return
		}
	}
}
