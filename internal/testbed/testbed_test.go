package testbed

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/pires/go-proxyproto"
)

// login logs user in on c with the password Dovecot knows, then logs out.
func login(t *testing.T, c *imapclient.Client, d *Dovecot, user string) {
	t.Helper()
	defer c.Close()
	if err := c.Login(user, d.Users[user]).Wait(); err != nil {
		t.Fatalf("Login(%q) = %v, want nil", user, err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatalf("Logout() = %v, want nil", err)
	}
}

// dialAs connects to the PROXY listener claiming to be ip.
func dialAs(t *testing.T, d *Dovecot, ip string) *imapclient.Client {
	t.Helper()
	conn, err := net.Dial("tcp", d.ProxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	claimed := &net.TCPAddr{IP: net.ParseIP(ip), Port: 40007}
	if _, err := proxyproto.HeaderProxyFromAddrs(2, claimed, conn.RemoteAddr()).WriteTo(conn); err != nil {
		t.Fatalf("writing PROXY header: %v", err)
	}
	return imapclient.New(conn, nil)
}

func dialPlain(t *testing.T, addr string) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatalf("DialInsecure(%s) = %v", addr, err)
	}
	return c
}

func TestDovecot(t *testing.T) {
	t.Parallel()
	d := StartDovecot(t, DovecotOptions{TLS: true, AuthFailureDelay: -1, NoAuthPenalty: true,
		Why: "checks that AuthFailureDelay and NoAuthPenalty take effect"})

	t.Run("plain", func(t *testing.T) {
		for user := range d.Users {
			login(t, dialPlain(t, d.Addr), d, user)
		}
	})
	t.Run("implicit TLS", func(t *testing.T) {
		// Both names in the certificate: a DNS name and an IP address.
		for _, name := range []string{"localhost", "127.0.0.1"} {
			opts := &imapclient.Options{TLSConfig: &tls.Config{RootCAs: d.CA.Pool(), ServerName: name}}
			c, err := imapclient.DialTLS(d.TLSAddr, opts)
			if err != nil {
				t.Fatalf("DialTLS(%s, ServerName %s) = %v", d.TLSAddr, name, err)
			}
			login(t, c, d, "carol")
		}
	})
	t.Run("STARTTLS", func(t *testing.T) {
		opts := &imapclient.Options{TLSConfig: &tls.Config{RootCAs: d.CA.Pool(), ServerName: "localhost"}}
		c, err := imapclient.DialStartTLS(d.Addr, opts)
		if err != nil {
			t.Fatalf("DialStartTLS(%s) = %v", d.Addr, err)
		}
		login(t, c, d, "bob")
	})
	t.Run("PROXY v2", func(t *testing.T) {
		login(t, dialAs(t, d, "127.0.0.7"), d, "alice")
		line := d.WaitLog(t, "rip=127.0.0.7", 5*time.Second)
		if !strings.Contains(line, "Login: user=<alice>") {
			t.Errorf("log line with rip=127.0.0.7 = %q, want a Login of alice", line)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		c := dialPlain(t, d.Addr)
		defer c.Close()
		start := time.Now()
		err := c.Login("alice", "not-alices-password").Wait()
		var ierr *imap.Error
		if !errors.As(err, &ierr) || ierr.Type != imap.StatusResponseTypeNo || ierr.Code != imap.ResponseCodeAuthenticationFailed {
			t.Fatalf("Login(alice, wrong) = %v, want NO [AUTHENTICATIONFAILED]", err)
		}
		// AuthFailureDelay -1 must have replaced Dovecot's 2s default.
		if elapsed := time.Since(start); elapsed >= 1500*time.Millisecond {
			t.Errorf("failed login answered after %v, want under 1.5s with no failure delay", elapsed)
		}
		d.WaitLog(t, "Password mismatch", 5*time.Second)

		// With the auth penalty off, the same address logs in at once.
		start = time.Now()
		login(t, dialPlain(t, d.Addr), d, "alice")
		if elapsed := time.Since(start); elapsed >= 1500*time.Millisecond {
			t.Errorf("login after a failure took %v, want under 1.5s without the auth penalty", elapsed)
		}
	})
	t.Run("big message round trip", func(t *testing.T) {
		appendAndFetch(t, d, Message(300_000))
	})
	t.Run("passwords stay out of the log", func(t *testing.T) {
		log := d.Log()
		for _, secret := range []string{d.Users["alice"], d.Users["bob"], d.Users["carol"], "not-alices-password"} {
			if strings.Contains(log, secret) {
				t.Errorf("dovecot log contains a password")
			}
		}
	})
}

// appendAndFetch stores msg in bob's INBOX and checks Dovecot returns it intact,
// which shows both that Message is valid for a real server and that mail is
// writable.
func appendAndFetch(t *testing.T, d *Dovecot, msg []byte) {
	t.Helper()
	c := dialPlain(t, d.Addr)
	defer c.Close()
	if err := c.Login("bob", d.Users["bob"]).Wait(); err != nil {
		t.Fatalf("Login(bob) = %v", err)
	}
	ac := c.Append("INBOX", int64(len(msg)), nil)
	if _, err := ac.Write(msg); err != nil {
		t.Fatalf("APPEND write: %v", err)
	}
	if err := ac.Close(); err != nil {
		t.Fatalf("APPEND close: %v", err)
	}
	if _, err := ac.Wait(); err != nil {
		t.Fatalf("APPEND = %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT INBOX = %v", err)
	}
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{RFC822Size: true, BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("FETCH 1 = %d messages, %v; want 1, nil", len(msgs), err)
	}
	if msgs[0].RFC822Size != int64(len(msg)) {
		t.Errorf("RFC822.SIZE = %d, want %d", msgs[0].RFC822Size, len(msg))
	}
	if got := msgs[0].FindBodySection(section); !bytes.Equal(got, msg) {
		t.Errorf("BODY[] = %d bytes differing from the %d appended", len(got), len(msg))
	}
}

func TestDovecotPlainOnly(t *testing.T) {
	t.Parallel()
	users := map[string]string{"dave@example.com": "dave pass"}
	d := StartDovecot(t, DovecotOptions{Users: users})
	if d.TLSAddr != "" || d.CA != nil {
		t.Errorf("without TLS: TLSAddr = %q, CA = %v; want empty, nil", d.TLSAddr, d.CA)
	}
	c := dialPlain(t, d.Addr)
	defer c.Close()
	if err := c.WaitGreeting(); err != nil {
		t.Fatal(err)
	}
	if c.Caps().Has(imap.CapStartTLS) {
		t.Errorf("without TLS Dovecot offers STARTTLS")
	}
	start := time.Now()
	if err := c.Login("dave@example.com", "wrong").Wait(); err == nil {
		t.Fatalf("Login with a wrong password = nil, want an error")
	}
	// Dovecot's default 2s delay, in its whole-second granularity: 1 to 2.5 s.
	if elapsed := time.Since(start); elapsed < time.Second {
		t.Errorf("failed login answered after %v, want at least 1s with the default delay", elapsed)
	}
	login(t, dialPlain(t, d.Addr), d, "dave@example.com")
}

func TestDovecotStopStart(t *testing.T) {
	t.Parallel()
	d := StartDovecot(t, DovecotOptions{})
	addr := d.Addr
	tests := []struct {
		name    string
		halt    func()
		wantBYE bool
	}{
		{"Stop", d.Stop, true},
		{"Kill", d.Kill, false},
	}
	for _, tt := range tests {
		// A session open when Dovecot goes away must be cut, at once.
		conn := rawLogin(t, d, "alice")
		tt.halt()
		if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		rest, err := io.ReadAll(conn)
		conn.Close()
		if err != nil {
			t.Fatalf("reading the session after %s = %v, want EOF within 5s", tt.name, err)
		}
		if got := bytes.Contains(rest, []byte("* BYE")); got != tt.wantBYE {
			t.Errorf("session after %s got %q, want BYE %v", tt.name, rest, tt.wantBYE)
		}
		if err := refusedSoon(addr, 2*time.Second); err != nil {
			t.Fatalf("dial %s after %s: %v", addr, tt.name, err)
		}
		tt.halt() // a second call does nothing

		d.Start()
		if d.Addr != addr {
			t.Errorf("Addr after %s and Start = %s, want %s", tt.name, d.Addr, addr)
		}
		login(t, dialPlain(t, d.Addr), d, "alice")
	}
}

// refusedSoon waits until a dial to addr is refused. Children of a killed
// Dovecot close their copies of the listening socket a moment after the group
// is signalled, so the first dial may still connect. With nothing listening on
// an ephemeral-range port, the kernel may also pick that port as the source and
// connect the socket to itself (TCP simultaneous open): that counts as refused.
func refusedSoon(addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return nil
		}
		self := c.LocalAddr().String() == c.RemoteAddr().String()
		c.Close()
		if self {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still accepting connections %v after the halt, want refused", within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDovecotStartWhilePortBusy covers a restart racing with another socket on
// the port: Start retries until the port is free.
func TestDovecotStartWhilePortBusy(t *testing.T) {
	t.Parallel()
	d := StartDovecot(t, DovecotOptions{})
	d.Stop()
	l, err := net.Listen("tcp", d.Addr)
	if err != nil {
		t.Fatalf("taking %s: %v", d.Addr, err)
	}
	// Release the port once Dovecot has failed to bind it (not after a fixed
	// time: on a loaded machine Dovecot may reach its bind late), so the test
	// always exercises the retry.
	logStart, outStart := len(d.Log()), len(readFile(d.outFile))
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		defer l.Close()
		deadline := time.After(30 * time.Second)
		for !strings.Contains(d.Log()[logStart:]+readFile(d.outFile)[outStart:], "Address already in use") {
			select {
			case <-stop:
				return
			case <-deadline:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	d.Start()
	if !strings.Contains(d.Log(), "Address already in use") {
		t.Errorf("dovecot log shows no bind failure; the test did not exercise the retry")
	}
	login(t, dialPlain(t, d.Addr), d, "demo")
}

// rawLogin logs user in over a bare connection, so that a test sees every byte
// the server sends afterwards.
func rawLogin(t *testing.T, d *Dovecot, user string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", d.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatalf("reading greeting: %v", err)
	}
	if _, err := fmt.Fprintf(conn, "a LOGIN %q %q\r\n", user, d.Users[user]); err != nil {
		t.Fatal(err)
	}
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "a OK") {
		t.Fatalf("LOGIN %s = %q, %v; want a OK", user, line, err)
	}
	if r.Buffered() > 0 {
		t.Fatalf("unexpected data after LOGIN OK")
	}
	return conn
}

// TestDovecotAuthPenalty shows Dovecot's default auth penalty: after a failure,
// Dovecot delays the next attempt from the same client address, and only from it.
func TestDovecotAuthPenalty(t *testing.T) {
	t.Parallel()
	d := StartDovecot(t, DovecotOptions{AuthFailureDelay: -1, Why: "times the penalty alone, without the failure delay"})
	c := dialAs(t, d, "127.0.0.20")
	if err := c.Login("bob", "wrong").Wait(); err == nil {
		t.Fatalf("Login(bob, wrong) = nil, want an error")
	}
	c.Close()

	tests := []struct {
		ip       string
		min, max time.Duration
	}{
		{"127.0.0.21", 0, 1500 * time.Millisecond}, // another address: no penalty
		{"127.0.0.20", 3 * time.Second, 6 * time.Second},
	}
	for _, tt := range tests {
		start := time.Now()
		login(t, dialAs(t, d, tt.ip), d, "bob")
		if elapsed := time.Since(start); elapsed < tt.min || elapsed > tt.max {
			t.Errorf("login from %s after a failure from 127.0.0.20 took %v, want %v to %v", tt.ip, elapsed, tt.min, tt.max)
		}
	}
}

// TestDovecotNoDelayFrom: with NoDelayFrom, logins over a connection from the
// gateway's address are answered at once whatever client address they carry,
// and raise no penalty; a client connecting from elsewhere keeps both the
// failure delay and the penalty; wrong passwords fail on both paths.
func TestDovecotNoDelayFrom(t *testing.T) {
	t.Parallel()
	d := StartDovecot(t, DovecotOptions{NoDelayFrom: "127.0.0.1/32", Why: "the per-gateway setting README gives"})
	timeLogin := func(c *imapclient.Client, user, pass string) (time.Duration, error) {
		defer c.Close()
		start := time.Now()
		err := c.Login(user, pass).Wait()
		return time.Since(start), err
	}
	// Through the "gateway" (a PROXY header from 127.0.0.1 naming 127.0.0.40).
	// Stock Dovecot would answer these three failures after at least 1 + 4 + 8 s
	// (failure delay, then the penalty); with nodelay each takes a few hundred
	// ms. The bound is on their sum, so one slow answer on a loaded machine
	// does not fail the test while any delay or penalty still would.
	var failing time.Duration
	for i := range 3 {
		took, err := timeLogin(dialAs(t, d, "127.0.0.40"), "bob", fmt.Sprint("wrong-", i))
		failing += took
		if err == nil {
			t.Errorf("wrong password %d through the gateway = nil error after %v, want a failure", i, took)
		}
	}
	if failing > 3*time.Second {
		t.Errorf("3 wrong passwords through the gateway took %v, want under 3s (no failure delay, no penalty)", failing)
	}
	if took, err := timeLogin(dialAs(t, d, "127.0.0.40"), "nobody", "x"); err == nil {
		t.Errorf("unknown user through the gateway = nil error after %v, want a failure", took)
	}
	// Stock Dovecot would hold this one for its 15 s penalty.
	if took, err := timeLogin(dialAs(t, d, "127.0.0.40"), "bob", d.Users["bob"]); err != nil || took > 2*time.Second {
		t.Errorf("bob through the gateway after 4 failures = %v after %v, want OK within 2s (no penalty)", err, took)
	}
	if n := d.AuthFailures("127.0.0.40"); n != 4 {
		t.Errorf("AuthFailures(127.0.0.40) = %d, want 4", n)
	}
	// Directly from 127.0.0.5: Dovecot's defaults apply.
	took, err := timeLogin(dialFrom(t, "127.0.0.5", d.Addr), "bob", "wrong")
	if err == nil || took < time.Second {
		t.Errorf("direct wrong password = %v after %v, want a failure after auth_failure_delay (1 to 2.5s)", err, took)
	}
	took, err = timeLogin(dialFrom(t, "127.0.0.5", d.Addr), "bob", d.Users["bob"])
	if err != nil || took < 3*time.Second {
		t.Errorf("direct login after a direct failure = %v after %v, want OK after the 4s penalty", err, took)
	}
}

// dialFrom connects to addr from the local address src, as a client of Dovecot's
// own (not behind the gateway).
func dialFrom(t *testing.T, src, addr string) *imapclient.Client {
	t.Helper()
	dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	conn, err := dialer.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return imapclient.New(conn, nil)
}
