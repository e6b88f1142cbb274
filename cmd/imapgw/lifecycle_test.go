package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imapgw/imapgw/internal/testbed"
	"github.com/imapgw/imapgw/limiter"
)

// TestReadyzWhileDraining: after SIGTERM, `imapgw run` answers 503 on /readyz
// from the start of the drain, before its listener closes, while a relayed
// session goes on; /healthz says alive until the process exits, which it does
// (status 0) as soon as the last session ends, well before drain_timeout.
func TestReadyzWhileDraining(t *testing.T) {
	be := startDemoBackend(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "imapgw.toml")
	procConfig{backend: be.Addr, state: filepath.Join(dir, "state"), drain: "60s"}.write(t, path)
	p := startProcess(t, path)

	s, err := openSession(p.imaps, nil)
	if err != nil {
		t.Fatalf("login before SIGTERM: %v", err)
	}
	defer s.conn.Close()
	p.signal(t, syscall.SIGTERM)

	// Probe the IMAP port, then /readyz, until the port is closed and /readyz
	// says 503. A refused port followed by a 200 would be a closed listener on
	// a node still announced ready.
	p.eventually(t, "the IMAP port closed and /readyz 503 after SIGTERM", func() bool {
		c, err := net.DialTimeout("tcp", p.imaps, time.Second)
		closed := err != nil
		if err == nil {
			c.Close()
		}
		code, _, err := p.get("/readyz")
		if err != nil {
			t.Fatalf("GET /readyz while draining: %v", err)
		}
		if closed && code != 503 {
			t.Fatalf("the IMAP port refuses connections but /readyz = %d, want 503 from the start of the drain", code)
		}
		return closed && code == 503
	})
	if code, body, err := p.get("/readyz"); code != 503 || !strings.Contains(body, "draining") {
		t.Errorf("GET /readyz while draining = %d %q %v, want 503 saying draining", code, body, err)
	}

	// The session drains: it is still relayed, and the process still alive.
	if err := s.cmd("NOOP"); err != nil {
		t.Errorf("NOOP of the session opened before SIGTERM, while draining: %v", err)
	}
	if code, _, err := p.get("/healthz"); code != 200 {
		t.Errorf("GET /healthz while draining = %d %v, want 200 (alive)", code, err)
	}
	if code, _, err := p.get("/readyz"); code != 503 {
		t.Errorf("GET /readyz later in the drain = %d %v, want 503", code, err)
	}
	if p.exited() {
		t.Fatalf("imapgw run exited with a session still open (drain_timeout 60s): %v", p.err)
	}

	if err := s.logout(); err != nil {
		t.Errorf("LOGOUT while draining: %v", err)
	}
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Errorf("imapgw run after SIGTERM exited %d, want 0", code)
	}
	if !strings.Contains(p.logs.String(), "msg=stopped") {
		t.Errorf("no \"stopped\" line at exit")
	}
	if _, _, err := p.get("/healthz"); err == nil {
		t.Errorf("GET /healthz after exit answered; want the endpoint gone")
	}
}

// TestSIGHUP: `imapgw run` re-reads its file on SIGHUP and applies it (a new
// bans.ban, seen as the default length of a ban added through the admin API)
// while a session opened before goes on; a file made invalid is refused on
// the next SIGHUP with a log line naming the file and key, and the running
// configuration keeps serving.
func TestSIGHUP(t *testing.T) {
	be := startDemoBackend(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "imapgw.toml")
	c := procConfig{backend: be.Addr, state: filepath.Join(dir, "state"), drain: "5s", bans: `ban = "15m"`}
	c.write(t, path)
	p := startProcess(t, path)
	s, err := openSession(p.imaps, nil)
	if err != nil {
		t.Fatalf("login before SIGHUP: %v", err)
	}
	defer s.conn.Close()
	wantBanFor(t, p, "192.0.2.1", 15*time.Minute)

	c.bans = `ban = "2h"`
	c.write(t, path)
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, "configuration reloaded", 1)
	wantBanFor(t, p, "192.0.2.2", 2*time.Hour)

	c.bans = `ban = "soon"`
	c.write(t, path)
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, "reload rejected", 1)
	line := logLine(p.logs.String(), "reload rejected")
	if !strings.Contains(line, path) || !strings.Contains(line, "bans.ban") || !strings.Contains(line, "level=ERROR") {
		t.Errorf("the rejected reload's log line = %q, want an error naming %s and bans.ban", line, path)
	}
	wantBanFor(t, p, "192.0.2.3", 2*time.Hour) // the running configuration stays
	if n := strings.Count(p.logs.String(), "configuration reloaded"); n != 1 {
		t.Errorf("%d \"configuration reloaded\" lines after one good and one bad SIGHUP, want 1", n)
	}

	if err := s.cmd("NOOP"); err != nil {
		t.Errorf("NOOP of the session opened before both SIGHUPs: %v", err)
	}
	if err := s.logout(); err != nil {
		t.Errorf("LOGOUT after both SIGHUPs: %v", err)
	}
	if err := tryLoginFrom("127.0.0.1", p.imaps, "demo", "demo"); err != nil {
		t.Errorf("a new login after the rejected reload: %v", err)
	}
	if code, _, err := p.get("/readyz"); code != 200 {
		t.Errorf("GET /readyz after the rejected reload = %d %v, want 200", code, err)
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Errorf("imapgw run exited %d after SIGTERM, want 0", code)
	}
}

// wantBanFor adds a ban on ip through the admin API without a duration and
// checks it lasts d, the running bans.ban.
func wantBanFor(t *testing.T, p *process, ip string, d time.Duration) {
	t.Helper()
	code, body := p.mustDo(t, "POST", "/api/v1/bans", `{"ip": "`+ip+`"}`)
	if code != 201 {
		t.Fatalf("POST /api/v1/bans %s = %d %s, want 201", ip, code, body)
	}
	var b limiter.Ban
	decode(t, body, &b)
	if got := b.Until.Sub(b.Since); got < d-time.Second || got > d+time.Second {
		t.Errorf("a ban on %s without a duration lasts %v, want %v (bans.ban)", ip, got, d)
	}
}

// logLine returns the first line of log containing s.
func logLine(log, s string) string {
	for l := range strings.Lines(log) {
		if strings.Contains(l, s) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// TestCertificateFilesReload: with tls.certificate = "files", a gateway
// reload makes the next TLS handshake on the IMAP port present the new
// certificate while a session opened with the first one keeps working: new
// paths in the file with SIGHUP (the file poller watches the old paths, so
// only the reload can load them), then the same paths rewritten with POST
// /api/v1/reload, then a broken pair that makes the reload fail with the
// reason while the last good certificate stays; repaired, the file poller
// loads it from the paths the reload set.
func TestCertificateFilesReload(t *testing.T) {
	be := startDemoBackend(t)
	ca := testbed.NewCA(t)
	roots := ca.Pool()
	dir := t.TempDir()
	path := filepath.Join(dir, "imapgw.toml")
	filesTLS := func(cert, key string) string {
		return fmt.Sprintf("certificate = \"files\"\ncert_file = %q\nkey_file = %q", cert, key)
	}
	first, second := filepath.Join(dir, "first"), filepath.Join(dir, "second")
	must(t, os.Mkdir(first, 0o700))
	must(t, os.Mkdir(second, 0o700))
	leaf1 := ca.Leaf(t, "localhost", "127.0.0.1")
	cert, key := testbed.WriteLeafPEM(t, first, leaf1)
	c := procConfig{backend: be.Addr, state: filepath.Join(dir, "state"), drain: "5s", tls: filesTLS(cert, key)}
	c.write(t, path)
	p := startProcess(t, path)
	wantPresented(t, p, roots, leaf1, "at start")

	s, err := openSession(p.imaps, &tls.Config{RootCAs: roots, ServerName: "localhost"})
	if err != nil {
		t.Fatalf("login with the first certificate: %v", err)
	}
	defer s.conn.Close()

	// New paths, SIGHUP.
	leaf2 := ca.Leaf(t, "localhost", "127.0.0.1")
	cert, key = testbed.WriteLeafPEM(t, second, leaf2)
	c.tls = filesTLS(cert, key)
	c.write(t, path)
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, "configuration reloaded", 1)
	wantPresented(t, p, roots, leaf2, "after SIGHUP with new cert_file and key_file")
	if err := s.cmd("NOOP"); err != nil {
		t.Errorf("NOOP of the session opened with the first certificate, after SIGHUP: %v", err)
	}

	// The same paths rewritten, POST /api/v1/reload.
	leaf3 := ca.Leaf(t, "localhost", "127.0.0.1")
	testbed.WriteLeafPEM(t, second, leaf3)
	if code, body := p.mustDo(t, "POST", "/api/v1/reload", ""); code != 200 {
		t.Fatalf("POST /api/v1/reload = %d %s, want 200", code, body)
	}
	wantPresented(t, p, roots, leaf3, "right after POST /api/v1/reload with the files replaced")
	if err := s.cmd("NOOP"); err != nil {
		t.Errorf("NOOP of the session opened with the first certificate, after the API reload: %v", err)
	}

	// A certificate whose key is not in key_file: the reload is refused with
	// the reason, leaf3 stays.
	leaf4 := ca.Leaf(t, "localhost", "127.0.0.1")
	cert4, _ := testbed.WriteLeafPEM(t, t.TempDir(), leaf4)
	data, err := os.ReadFile(cert4)
	must(t, err)
	must(t, os.WriteFile(cert, data, 0o644))
	code, body := p.mustDo(t, "POST", "/api/v1/reload", "")
	if code == 200 || !strings.Contains(body, "key_file") {
		t.Errorf("POST /api/v1/reload with a certificate not matching key_file = %d %s, want an error naming key_file", code, body)
	}
	p.waitLog(t, "reload rejected", 1)
	if line := logLine(p.logs.String(), "reload rejected"); !strings.Contains(line, "level=ERROR") || !strings.Contains(line, key) {
		t.Errorf("the rejected reload's log line = %q, want an error naming %s", line, key)
	}
	if n := strings.Count(p.logs.String(), "configuration reloaded"); n != 2 {
		t.Errorf("%d \"configuration reloaded\" lines after two good reloads and a rejected one, want 2", n)
	}
	wantPresented(t, p, roots, leaf3, "after a reload with a certificate that does not match key_file")

	// Repaired in place without a reload: the file poller, now watching the
	// paths the SIGHUP set, loads them.
	leaf5 := ca.Leaf(t, "localhost", "127.0.0.1")
	testbed.WriteLeafPEM(t, second, leaf5)
	p.eventually(t, "the poller to load the repaired pair at the reloaded paths", func() bool {
		got, err := presented(p.imaps, roots)
		return err == nil && got.SerialNumber.Cmp(leaf5.Leaf.SerialNumber) == 0
	})

	if err := s.cmd("NOOP"); err != nil {
		t.Errorf("NOOP of the session opened with the first certificate, after three reloads: %v", err)
	}
	if err := s.logout(); err != nil {
		t.Errorf("LOGOUT: %v", err)
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Errorf("imapgw run exited %d after SIGTERM, want 0", code)
	}
}

// wantPresented checks that a new handshake on the IMAP port shows want.
func wantPresented(t *testing.T, p *process, roots *x509.CertPool, want tls.Certificate, when string) {
	t.Helper()
	got, err := presented(p.imaps, roots)
	if err != nil {
		t.Fatalf("TLS handshake %s: %v", when, err)
	}
	if got.SerialNumber.Cmp(want.Leaf.SerialNumber) != 0 {
		t.Errorf("certificate presented %s: serial %x, want %x", when, got.SerialNumber, want.Leaf.SerialNumber)
	}
}
