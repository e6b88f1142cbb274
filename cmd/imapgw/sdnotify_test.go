package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imapgw/imapgw/internal/pebbletest"
)

// notifySocket is the systemd side of the notify protocol: a unixgram socket
// whose datagrams a goroutine hands over, WATCHDOG=1 pings counted apart.
type notifySocket struct {
	path  string
	msgs  chan string
	pings chan time.Time
}

func listenNotify(t *testing.T, path string) *notifySocket {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s := &notifySocket{path: path, msgs: make(chan string, 100), pings: make(chan time.Time, 1000)}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			if msg := string(buf[:n]); msg == "WATCHDOG=1\n" {
				s.pings <- time.Now()
			} else {
				s.msgs <- msg
			}
		}
	}()
	return s
}

// next returns the next notification other than a watchdog ping.
func (s *notifySocket) next(t *testing.T, p *process, what string) string {
	t.Helper()
	select {
	case m := <-s.msgs:
		return m
	case <-time.After(10 * time.Second):
		t.Fatalf("no notification while waiting for %s; log:\n%s", what, p.logs.String())
		return ""
	}
}

// TestSystemdNotify runs `imapgw run` as systemd would for a Type=notify unit
// with WatchdogSec: READY=1 comes when the IMAP port already answers with the
// certificate, RELOADING=1 (with MONOTONIC_USEC) and READY=1 around SIGHUP,
// STOPPING=1 at SIGTERM, and WATCHDOG=1 at half of WATCHDOG_USEC.
func TestSystemdNotify(t *testing.T) {
	be := startDemoBackend(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "imapgw.toml")
	c := procConfig{backend: be.Addr, state: filepath.Join(dir, "state"), drain: "5s"}
	c.write(t, path)
	ns := listenNotify(t, filepath.Join(dir, "notify"))
	const watchdogUsec = 200000
	p := launchProcess(t, path, "NOTIFY_SOCKET="+ns.path, "WATCHDOG_USEC="+strconv.Itoa(watchdogUsec))

	ready := ns.next(t, p, "READY=1")
	// READY=1 must come no earlier than the IMAP port answering a TLS
	// handshake: it is what `systemctl start` waits for.
	if !strings.HasPrefix(ready, "READY=1\n") || !strings.Contains(ready, "STATUS=serving on 127.0.0.1:") {
		t.Fatalf("first notification = %q, want READY=1 with a STATUS", ready)
	}
	// The address from the notification itself: the log lines are written
	// in batches (up to 50 ms late) and need not be out yet.
	imaps := regexpGroup(t, ready, `STATUS=serving on ([^,\s]+)`)
	if _, err := presented(imaps, nil); err == nil || !strings.Contains(err.Error(), "certificate") {
		// A verification error proves the handshake reached the certificate.
		t.Fatalf("TLS to %s right after READY=1: %v, want the self-signed certificate shown", imaps, err)
	}
	p.waitStarted(t)
	s, err := openSession(p.imaps, nil)
	if err != nil {
		t.Fatalf("login after READY=1: %v", err)
	}
	s.logout()

	p.signal(t, syscall.SIGHUP)
	reloading := ns.next(t, p, "RELOADING=1")
	if !strings.HasPrefix(reloading, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Fatalf("after SIGHUP: %q, want RELOADING=1 and MONOTONIC_USEC", reloading)
	}
	usec := regexpGroup(t, reloading, `MONOTONIC_USEC=(\d+)\n`)
	if n, _ := strconv.ParseInt(usec, 10, 64); n <= 0 {
		t.Errorf("MONOTONIC_USEC=%s, want a positive CLOCK_MONOTONIC time", usec)
	}
	if m := ns.next(t, p, "READY=1 after reload"); m != "READY=1\nSTATUS=configuration reloaded\n" {
		t.Fatalf("after the reload: %q, want READY=1", m)
	}
	// A rejected reload: still READY=1 (the old configuration serves), and
	// the errors on one STATUS line.
	c.bans = "spray_accounts = 0\nsource_failures = 0"
	c.write(t, path)
	p.signal(t, syscall.SIGHUP)
	if m := ns.next(t, p, "RELOADING=1"); !strings.HasPrefix(m, "RELOADING=1\n") {
		t.Fatalf("after the second SIGHUP: %q, want RELOADING=1", m)
	}
	m := ns.next(t, p, "READY=1 after a rejected reload")
	if !strings.HasPrefix(m, "READY=1\nSTATUS=reload rejected") || !strings.Contains(m, "bans.spray_accounts") ||
		!strings.Contains(m, "bans.source_failures") || strings.Count(m, "\n") != 2 {
		t.Fatalf("after a rejected reload: %q, want READY=1 and both errors on one STATUS line", m)
	}

	// Pings: at least 4 over the next 4 intervals of WATCHDOG_USEC/2, with no
	// gap as long as WATCHDOG_USEC (systemd would kill the process).
	drainPings(ns)
	last := time.Now()
	for i := 0; i < 4; i++ {
		select {
		case at := <-ns.pings:
			if gap := at.Sub(last); gap >= watchdogUsec*time.Microsecond {
				t.Errorf("watchdog ping %d came %v after the previous one, want < %v", i, gap, watchdogUsec*time.Microsecond)
			}
			last = at
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d WATCHDOG=1 pings", i)
		}
	}

	p.signal(t, syscall.SIGTERM)
	if m := ns.next(t, p, "STOPPING=1"); !strings.HasPrefix(m, "STOPPING=1\n") {
		t.Fatalf("after SIGTERM: %q, want STOPPING=1", m)
	}
	if code := p.wait(t, 15*time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM", code)
	}
	select {
	case m := <-ns.msgs:
		t.Errorf("after STOPPING=1: %q", m)
	default:
	}
}

func drainPings(ns *notifySocket) {
	for {
		select {
		case <-ns.pings:
		default:
			return
		}
	}
}

func TestWatchdogInterval(t *testing.T) {
	cases := []struct {
		usec, pid string
		want      time.Duration
	}{
		{"", "", 0},
		{"30000000", "", 15 * time.Second},
		{"30000000", "42", 15 * time.Second},
		{"30000000", "43", 0}, // inherited from a parent systemd watches
		{"0", "", 0},
		{"soon", "", 0},
		{"-5", "", 0},
	}
	for _, c := range cases {
		if got := watchdogInterval(c.usec, c.pid, 42); got != c.want {
			t.Errorf("watchdogInterval(%q, %q, 42) = %v, want %v", c.usec, c.pid, got, c.want)
		}
	}
}

// TestNotifyAbstractSocket: NOTIFY_SOCKET may name an abstract socket
// ("@name"), as systemd's does for services in some containers.
func TestNotifyAbstractSocket(t *testing.T) {
	name := "@imapgw-test-notify-" + strconv.Itoa(os.Getpid())
	ns := listenNotify(t, name)
	t.Setenv("NOTIFY_SOCKET", name)
	t.Setenv("WATCHDOG_USEC", "")
	n, err := newNotifier()
	if err != nil || n == nil {
		t.Fatalf("newNotifier() = %v, %v", n, err)
	}
	defer n.close()
	n.setReady("up")
	n.setStopping("down")
	n.setReady("too late") // not after STOPPING=1
	for _, want := range []string{"READY=1\nSTATUS=up\n", "STOPPING=1\nSTATUS=down\n"} {
		select {
		case m := <-ns.msgs:
			if m != want {
				t.Errorf("got %q, want %q", m, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no datagram, want %q", want)
		}
	}
	select {
	case m := <-ns.msgs:
		t.Errorf("READY=1 after STOPPING=1: %q", m)
	case <-time.After(100 * time.Millisecond):
	}
}

// regexpGroup returns re's first group in s, failing the test without a match.
func regexpGroup(t *testing.T, s, re string) string {
	t.Helper()
	m := regexp.MustCompile(re).FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("no match for %s in %q", re, s)
	}
	return m[1]
}

// TestSystemdNotifyWaitsForACME: with an ACME certificate still to be issued
// (by a real Pebble CA), the listeners are up long before READY=1; READY=1
// comes once the certificate is there, and the port then serves it.
func TestSystemdNotifyWaitsForACME(t *testing.T) {
	be := startDemoBackend(t)
	port := pebbletest.FreePort(t)
	pb := pebbletest.Start(t, pebbletest.Options{HTTPPort: port})
	host := fmt.Sprintf("notify%d.imapgw.test", time.Now().UnixNano()%100000) // certmagic keeps per-name globals
	dir := t.TempDir()
	imaps := freeAddr(t)
	path := filepath.Join(dir, "imapgw.toml")
	must(t, os.WriteFile(path, []byte(fmt.Sprintf(`[server]
hostname = %q
state_dir = %q

[[listen]]
address = %q

[tls]
certificate = "acme"

[acme]
ca = %q
ca_root = %q
email = "postmaster@imapgw.test"
http_challenge_address = "127.0.0.1:%d"

[backend]
servers = [%q]
client_ip = "none"

[bans]
allow = []

[admin]
address = ""
`, host, filepath.Join(dir, "state"), imaps, pb.DirectoryURL, pb.CAFile, port, be.Addr)), 0o600))
	ns := listenNotify(t, filepath.Join(dir, "notify"))
	p := launchProcess(t, path, "NOTIFY_SOCKET="+ns.path)

	roots := pb.Roots(t)
	withoutCert := 0 // handshakes refused while the port was already up
	deadline := time.After(60 * time.Second)
	for {
		select {
		case m := <-ns.msgs:
			if !strings.HasPrefix(m, "READY=1\n") {
				t.Fatalf("first notification %q, want READY=1", m)
			}
			if _, err := presentedTo(imaps, host, roots); err != nil {
				t.Fatalf("READY=1 sent, yet the port does not serve the ACME certificate: %v", err)
			}
			t.Logf("READY=1 after %d refused handshakes on the already-open port", withoutCert)
			return
		case <-deadline:
			t.Fatalf("no READY=1 in 60 s; log:\n%s", p.logs.String())
		case <-time.After(50 * time.Millisecond):
			if p.exited() {
				t.Fatalf("imapgw run exited: %v", p.err)
			}
			if c, err := net.DialTimeout("tcp", imaps, time.Second); err == nil {
				c.Close()
				if _, err := presentedTo(imaps, host, roots); err != nil {
					withoutCert++
				}
			}
		}
	}
}

// presentedTo does a TLS handshake with addr for the name host, verifying
// against roots.
func presentedTo(addr, host string, roots *x509.CertPool) (*x509.Certificate, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{RootCAs: roots, ServerName: host})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}
