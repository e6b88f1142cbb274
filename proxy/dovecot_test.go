package proxy_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
)

// startDovecot runs a real Dovecot with TLS listeners and its default failure
// delay and auth penalty, as operators run it.
func startDovecot(t *testing.T) *testbed.Dovecot {
	t.Helper()
	return testbed.StartDovecot(t, testbed.DovecotOptions{TLS: true})
}

// TestDovecotClientForms runs every real client's login form through both
// listeners against a real Dovecot.
func TestDovecotClientForms(t *testing.T) {
	d := startDovecot(t)
	g := startGateway(t, d.Addr, nil)
	for _, f := range clientForms {
		t.Run(f.name, func(t *testing.T) { runForm(t, g, f.starttls, f.user, f.script) })
	}
	assertNoPasswords(t, g.logs.String()+d.Log())
}

// TestDovecotSession logs in with go-imap's client and uses the mailbox:
// SELECT, APPEND and FETCH of a 10 MB message, IDLE.
func TestDovecotSession(t *testing.T) {
	d := startDovecot(t)
	g := startGateway(t, d.Addr, nil)
	for _, listener := range []string{"implicit", "starttls"} {
		t.Run(listener, func(t *testing.T) {
			var c *imapclient.Client
			var err error
			opts := &imapclient.Options{TLSConfig: g.clientTLS()}
			if listener == "implicit" {
				c, err = imapclient.DialTLS(g.implicit, opts)
			} else {
				c, err = imapclient.DialStartTLS(g.starttls, opts)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			useMailbox(t, c, "alice", testPasswords["alice"])
		})
	}
}

func useMailbox(t *testing.T, c *imapclient.Client, user, pass string) {
	t.Helper()
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatalf("Login: %v", err)
	}
	if !c.Caps().Has(imap.CapIdle) {
		t.Errorf("post-login capabilities %v lack IDLE", c.Caps())
	}
	msg := testbed.Message(10 << 20)
	ap := c.Append("INBOX", int64(len(msg)), nil)
	if _, err := ap.Write(msg); err != nil {
		t.Fatalf("APPEND write: %v", err)
	}
	if err := ap.Close(); err != nil {
		t.Fatalf("APPEND close: %v", err)
	}
	if _, err := ap.Wait(); err != nil {
		t.Fatalf("APPEND: %v", err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.SeqSetNum(sel.NumMessages), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		t.Fatalf("FETCH: %v", err)
	}
	if len(msgs) != 1 || !bytes.Equal(msgs[0].FindBodySection(section), msg) {
		t.Fatalf("FETCH returned %d messages, not the 10 MB message appended", len(msgs))
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatalf("IDLE: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if err := idle.Close(); err != nil {
		t.Fatalf("IDLE done: %v", err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatalf("IDLE: %v", err)
	}
	if err := c.Noop().Wait(); err != nil {
		t.Fatalf("NOOP after IDLE: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatalf("LOGOUT: %v", err)
	}
}

// TestDovecotSeesClientAddress connects from 127.0.0.7 and checks that Dovecot
// logs that address (rip), not the gateway's, with ID and with PROXY v2 / v1.
func TestDovecotSeesClientAddress(t *testing.T) {
	d := startDovecot(t)
	cases := []struct {
		mode, backend string
	}{
		{conf.ClientIPID, d.Addr},
		{conf.ClientIPProxyV2, d.ProxyAddr},
		{conf.ClientIPProxyV1, d.ProxyAddr},
	}
	for i, tc := range cases {
		t.Run(tc.mode, func(t *testing.T) {
			g := startGateway(t, tc.backend, func(c *conf.Config) { c.Backend.ClientIP = tc.mode })
			from := fmt.Sprintf("127.0.0.%d", 7+i)
			c := dialRawFrom(t, from, g.implicit, g.clientTLS())
			greeting(t, c)
			c.send("a LOGIN bob " + quote(testPasswords["bob"]) + "\r\n")
			c.expect("a OK")
			line := d.WaitLog(t, "rip="+from, 5*time.Second)
			if !strings.Contains(line, "user=<bob>") {
				t.Errorf("Dovecot log line %q lacks user=<bob>", line)
			}
		})
	}
}

// TestDovecotBackendTLS logs in over implicit TLS and STARTTLS to the backend,
// verified against the backend's CA.
func TestDovecotBackendTLS(t *testing.T) {
	d := startDovecot(t)
	caFile := d.CA.WritePEM(t, t.TempDir())
	cases := []struct{ mode, addr string }{
		{conf.TLSImplicit, d.TLSAddr},
		{conf.TLSStartTLS, d.Addr},
	}
	for _, tc := range cases {
		t.Run(tc.mode, func(t *testing.T) {
			g := startGateway(t, tc.addr, func(c *conf.Config) {
				c.Backend.TLS = tc.mode
				c.Backend.TLSCAFile = caFile
				c.Backend.TLSServerName = "localhost"
			})
			c, err := imapclient.DialTLS(g.implicit, &imapclient.Options{TLSConfig: g.clientTLS()})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.Login("alice", testPasswords["alice"]).Wait(); err != nil {
				t.Fatalf("Login over backend TLS %s: %v", tc.mode, err)
			}
			if _, err := c.Select("INBOX", nil).Wait(); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("unverifiable certificate", func(t *testing.T) {
		g := startGateway(t, d.TLSAddr, func(c *conf.Config) { c.Backend.TLS = conf.TLSImplicit })
		c := dialRaw(t, g.implicit, g.clientTLS())
		greeting(t, c)
		c.send("a LOGIN alice alice-secret\r\n")
		c.expect("a NO [UNAVAILABLE]")
		if !strings.Contains(g.logs.String(), "certificate") {
			t.Errorf("the log does not say the backend's certificate failed:\n%s", g.logs.String())
		}
	})
}

// TestRealClients logs in and reads mail with Python's imaplib and curl.
func TestRealClients(t *testing.T) {
	testbed.Need(t, "python3", "curl")
	d := startDovecot(t)
	g := startGateway(t, d.Addr, nil)
	dir := t.TempDir()
	caFile := g.ca.WritePEM(t, dir)
	_, port, _ := strings.Cut(g.implicit, ":")
	_, sport, _ := strings.Cut(g.starttls, ":")

	// Put one message in alice's INBOX for the clients to read.
	c, err := imapclient.DialTLS(g.implicit, &imapclient.Options{TLSConfig: g.clientTLS()})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login("alice", testPasswords["alice"]).Wait(); err != nil {
		t.Fatal(err)
	}
	msg := []byte("Subject: hello from imapgw\r\n\r\nbody\r\n")
	ap := c.Append("INBOX", int64(len(msg)), nil)
	ap.Write(msg)
	ap.Close()
	if _, err := ap.Wait(); err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()

	py := filepath.Join(dir, "client.py")
	os.WriteFile(py, []byte(`import imaplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
m = imaplib.IMAP4_SSL("localhost", int(sys.argv[2]), ssl_context=ctx)
m.login("alice", "alice-secret")
typ, data = m.select("INBOX")
assert typ == "OK", data
typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
print(data[0][1].decode().strip())
m.logout()
s = imaplib.IMAP4("127.0.0.2", int(sys.argv[3]))
s.starttls(ssl_context=ctx)
s.login("alice", "alice-secret")
typ, data = s.select("INBOX", readonly=True)
assert typ == "OK", data
print("starttls messages:", data[0].decode())
s.logout()
`), 0o644)
	out, err := exec.Command("python3", py, caFile, port, sport).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "hello from imapgw") || !strings.Contains(string(out), "starttls messages: 1") {
		t.Errorf("imaplib: %v\n%s", err, out)
	}

	out, err = exec.Command("curl", "-sS", "--max-time", "20", "--cacert", caFile,
		"--resolve", "localhost:"+port+":127.0.0.1", "imaps://localhost:"+port+"/INBOX;UID=1;SECTION=HEADER.FIELDS%20(SUBJECT)", "-u", "alice:alice-secret").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "hello from imapgw") {
		t.Errorf("curl imaps: %v\n%s", err, out)
	}
	out, err = exec.Command("curl", "-sS", "--max-time", "20", "--cacert", caFile, "--ssl-reqd",
		"--resolve", "localhost:"+sport+":127.0.0.2", "imap://localhost:"+sport+"/INBOX", "-u", "alice:alice-secret").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "* LIST") && !strings.Contains(string(out), "INBOX") {
		t.Errorf("curl STARTTLS: %v\n%s", err, out)
	}
	assertNoPasswords(t, g.logs.String())
}
