package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
	"github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"
)

// TestTrickledLine: preauth_timeout is the longest wait for one line, a
// literal after its "+", a SASL response or a TLS handshake, however the client
// spreads its bytes (issue 10.2): one byte every 0.5 s with preauth_timeout 3s
// is closed within preauth_timeout plus a second. A client sending a whole line
// every second, and an IDLE after login, are not cut.
func TestTrickledLine(t *testing.T) {
	const preauth = 3 * time.Second
	const every = 500 * time.Millisecond
	be := startDemo(t)
	g := startGateway(t, be.Addr, func(c *conf.Config) { c.Limits.PreauthTimeout = conf.D(preauth) })
	hello := clientHello(t)

	trickled := []struct {
		name     string
		starttls bool
		opening  string // sent at once
		wait     string // then the reply starting so is read, and the wait begins
		trickle  string // then one byte of it every 0.5 s
	}{
		{"command line", false, "", "", "a LOGIN alice alice-secret"},
		{"command line after STARTTLS", true, "", "", "a LOGIN alice alice-secret"},
		{"literal", false, "a LOGIN {12}\r\n", "+", "alice-secret"},
		{"SASL response", false, "a AUTHENTICATE PLAIN\r\n", "+", b64("\x00alice\x00alice-secret")},
	}
	for _, tc := range trickled {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var c *rawClient
			if tc.starttls {
				c = dialRaw(t, g.starttls, nil)
				greeting(t, c)
				c.starttls(g.clientTLS())
			} else {
				c = dialRaw(t, g.implicit, g.clientTLS())
				greeting(t, c)
			}
			if tc.opening != "" {
				c.send(tc.opening)
				c.expect(tc.wait)
			}
			start := time.Now()
			go trickle(c.conn, []byte(tc.trickle), every, 3*preauth)
			got, err := readToEnd(c, 3*preauth)
			d := time.Since(start)
			if err != nil {
				t.Fatalf("after %v: %v (got %q)", d, err, got)
			}
			if !strings.Contains(got, "* BYE Autologout") {
				t.Errorf("got %q, want * BYE Autologout", got)
			}
			t.Logf("closed %v after the wait began", d.Round(time.Millisecond))
			if d < preauth-every/2 || d > preauth+time.Second {
				t.Errorf("closed %v after the wait began, want preauth_timeout %v (within a second)", d, preauth)
			}
		})
	}
	for _, starttls := range []bool{false, true} {
		t.Run(fmt.Sprintf("TLS handshake, STARTTLS %v", starttls), func(t *testing.T) {
			t.Parallel()
			conn := handshakeConn(t, g, starttls)
			start := time.Now()
			go trickle(conn, hello, every, 3*preauth)
			if closedAfter(conn, 3*preauth) < 0 {
				t.Fatalf("still open after %v", 3*preauth)
			}
			if d := time.Since(start); d < preauth-every/2 || d > preauth+time.Second {
				t.Errorf("a client trickling its ClientHello was closed after %v, want preauth_timeout %v (within a second)", d, preauth)
			}
		})
	}
	t.Run("a line every second", func(t *testing.T) {
		t.Parallel()
		c := dialRaw(t, g.implicit, g.clientTLS())
		greeting(t, c)
		start := time.Now()
		for i := 0; time.Since(start) < 2*preauth+time.Second; i++ {
			c.send(fmt.Sprintf("n%d NOOP\r\n", i))
			c.expect(fmt.Sprintf("n%d OK", i))
			time.Sleep(time.Second) // the pace of this client, not a wait for a state
		}
		c.send("a LOGIN alice alice-secret\r\n")
		c.expect("a OK")
	})
	t.Run("IDLE after login", func(t *testing.T) {
		t.Parallel()
		c := dialRaw(t, g.implicit, g.clientTLS())
		greeting(t, c)
		c.send("a LOGIN alice alice-secret\r\nb SELECT INBOX\r\nc IDLE\r\n")
		c.expect("a OK")
		c.until("b OK")
		c.expect("+")
		time.Sleep(preauth + time.Second) // silent for longer than any pre-auth wait
		c.send("DONE\r\n")
		c.expect("c OK")
	})
}

// readToEnd reads until the gateway closes, for at most limit. A reset after
// the gateway's FIN (it closes a lingering connection while the client still
// writes) is not an error: what was sent before it has been read.
func readToEnd(c *rawClient, limit time.Duration) (string, error) {
	c.conn.SetReadDeadline(time.Now().Add(limit))
	b, err := io.ReadAll(c.br)
	if err != nil && isReset(err) {
		err = nil
	}
	return string(b), err
}

// TestLingeringClose: a client still writing when it is told BYE writes all it
// meant to and reads the BYE (issue 10.3), over implicit TLS, after STARTTLS
// and in plain text: the gateway half-closes and discards the rest instead of
// resetting the connection. The client writes the whole command in a goroutine
// and reads at the same time; a reset used to fail its write about one time in
// three, and a client that writes before it reads (Python's imaplib) then never
// reads the BYE, so each case runs a few times.
func TestLingeringClose(t *testing.T) {
	const rounds = 5
	be := startDemo(t)
	g := startGateway(t, be.Addr, func(c *conf.Config) { c.Limits.MaxLine, c.Limits.MaxLiteral = 8192, 8192 })
	long := "a LOGIN alice " + strings.Repeat("x", 200<<10) + "\r\n"
	cases := []struct {
		name, listen string // "implicit", "starttls" or "plain"
		send, bye    string
	}{
		{"200 KB line, implicit TLS", "implicit", long, "* BYE Line too long"},
		{"200 KB line, STARTTLS", "starttls", long, "* BYE Line too long"},
		{"200 KB line, plain", "plain", long, "* BYE Line too long"},
		{"{999999} sent without waiting", "implicit", "a LOGIN alice {999999}\r\n" + strings.Repeat("x", 999999) + "\r\n", "* BYE Literal too large"},
		{"{999999+}", "implicit", "a LOGIN alice {999999+}\r\n" + strings.Repeat("x", 999999) + "\r\n", "* BYE Literal too large"},
		{"{999999}, waiting for +", "implicit", "a LOGIN alice {999999}\r\n", "* BYE Literal too large"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for range rounds {
				c := dialListener(t, g, tc.listen)
				wrote := make(chan error, 1)
				go func() {
					c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
					_, err := io.WriteString(c.conn, tc.send)
					wrote <- err
				}()
				got, err := readToEnd(c, 10*time.Second)
				if err != nil || !strings.Contains(got, tc.bye) {
					t.Errorf("read %q, %v; want %s, then the end", got, err, tc.bye)
				}
				if err := <-wrote; err != nil {
					t.Errorf("the client's write failed: %v", err)
				}
				c.conn.Close()
			}
		})
	}
	t.Run("Python imaplib", func(t *testing.T) {
		testbed.Need(t, "python3")
		dir := t.TempDir()
		caFile := g.ca.WritePEM(t, dir)
		_, port, _ := strings.Cut(g.implicit, ":")
		py := filepath.Join(dir, "long.py")
		// imaplib sends a command whole, then reads: a reset while it writes
		// loses the reply.
		os.WriteFile(py, []byte(`import imaplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
for i in range(int(sys.argv[3])):
    m = imaplib.IMAP4_SSL("localhost", int(sys.argv[2]), ssl_context=ctx)
    try:
        m.send(b"a LOGIN alice " + b"x" * 200 * 1024 + b"\r\n")
        print(m.readline().decode().strip())
    except OSError as e:
        print("error:", e)
    m.shutdown()
`), 0o644)
		out, err := exec.Command("python3", py, caFile, port, fmt.Sprint(rounds)).CombinedOutput()
		if err != nil || strings.Count(string(out), "* BYE Line too long") != rounds {
			t.Errorf("imaplib, %d times a 200 KB line: %v\n%s", rounds, err, out)
		}
	})
	waitNoSessions(t, g)
	assertServes(t, g)
}

// dialListener connects and reads the greeting: implicit TLS, TLS after
// STARTTLS, or plain text on the STARTTLS listener.
func dialListener(t *testing.T, g *gateway, how string) *rawClient {
	t.Helper()
	if how == "implicit" {
		c := dialRaw(t, g.implicit, g.clientTLS())
		greeting(t, c)
		return c
	}
	c := dialRaw(t, g.starttls, nil)
	greeting(t, c)
	if how == "starttls" {
		c.starttls(g.clientTLS())
	}
	return c
}

// TestLingerBounded: the lingering close holds a connection no longer than its
// bounds (2 s, 1 MiB) whatever the client does, and a shutdown ends it at once.
func TestLingerBounded(t *testing.T) {
	const lingerTime = 2 * time.Second
	// slack: what a loaded CI machine adds to the gateway's 2 s timer and the
	// client's own reads (3.2 s was seen with two test runs on 2 cores). The
	// failure this guards against is a linger with no end (20 s here).
	const slack = 2 * time.Second
	be := startDemo(t)
	g := startGateway(t, be.Addr, nil)
	tooLong := "a " + strings.Repeat("x", 9000) + "\r\n"

	t.Run("a client that never stops writing", func(t *testing.T) {
		c := dialListener(t, g, "implicit")
		wrote := make(chan error, 1)
		go func() {
			chunk := strings.Repeat("x", 64<<10)
			c.conn.SetWriteDeadline(time.Now().Add(20 * time.Second))
			_, err := io.WriteString(c.conn, tooLong)
			for err == nil {
				_, err = io.WriteString(c.conn, chunk)
			}
			wrote <- err
		}()
		got, err := readToEnd(c, 10*time.Second)
		if err != nil || !strings.Contains(got, "* BYE Line too long") {
			t.Fatalf("read %q, %v; want the BYE", got, err)
		}
		bye := time.Now()
		if err := <-wrote; isTimeout(err) {
			t.Fatalf("the gateway still read after 20 s: %v", err)
		}
		d := time.Since(bye)
		t.Logf("the gateway read for %v after the BYE", d.Round(time.Millisecond))
		if d > lingerTime+slack {
			t.Errorf("the gateway read for %v after the BYE, want at most %v", d, lingerTime)
		}
	})
	t.Run("a client that never closes", func(t *testing.T) {
		c := dialListener(t, g, "implicit")
		c.send(tooLong)
		got, err := readToEnd(c, 10*time.Second)
		if err != nil || !strings.Contains(got, "* BYE Line too long") {
			t.Fatalf("read %q, %v; want the BYE, then the gateway's half-close", got, err)
		}
		bye := time.Now()
		waitNoSessions(t, g)
		d := time.Since(bye)
		t.Logf("the session lasted %v after the BYE", d.Round(time.Millisecond))
		if d > lingerTime+slack {
			t.Errorf("the session lasted %v after the BYE, want at most %v", d, lingerTime)
		}
	})
	t.Run("shutdown", func(t *testing.T) {
		var cs []*rawClient
		for range 5 {
			c := dialListener(t, g, "implicit")
			c.send(tooLong)
			c.expect("* BYE Line too long")
			cs = append(cs, c)
		}
		if n := len(g.srv.Sessions()); n != len(cs) {
			t.Fatalf("%d sessions before Shutdown, want the %d lingering", n, len(cs))
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		g.srv.Shutdown(ctx) // only pre-auth sessions: it need not wait for the drain
		d := time.Since(start)
		t.Logf("Shutdown took %v with 5 lingering sessions", d.Round(time.Millisecond))
		if d > 500*time.Millisecond {
			t.Errorf("Shutdown took %v with lingering sessions, want at once", d)
		}
		for _, c := range cs {
			if _, err := readToEnd(c, time.Second); err != nil {
				t.Errorf("a lingering client is not closed after Shutdown: %v", err)
			}
		}
	})
}

// TestUntrustedProxyFlood: connections from a peer not in trusted_proxies to a
// proxy_protocol listener are closed in the accept loop (issue 11.7): 200 of
// them count 200 in imapgw_connections_total and write one log line, and a
// trusted balancer's clients still log in.
func TestUntrustedProxyFlood(t *testing.T) {
	const conns = 200
	be := startDemo(t)
	g := startGateway(t, be.Addr, func(c *conf.Config) {
		c.Listen = []conf.Listen{{Address: "127.0.0.1:0", TLS: conf.TLSImplicit, ProxyProtocol: true}}
		c.Server.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.3/32")}
		c.Bans.Allow = nil
	})
	for range conns { // nc -z: connect, close
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.4")}}
		c, err := d.Dial("tcp", g.implicit)
		if err != nil {
			if isReset(err) { // the gateway's reset can beat connect's completion
				continue
			}
			t.Fatal(err)
		}
		c.Close()
	}
	addr := g.cfg.Listen[0].Address
	deadline := time.Now().Add(10 * time.Second)
	for n := counterValue(t, g.reg, "imapgw_connections_total", "outcome", "refused_untrusted_proxy"); n != conns; n = counterValue(t, g.reg, "imapgw_connections_total", "outcome", "refused_untrusted_proxy") {
		if time.Now().After(deadline) {
			t.Fatalf("imapgw_connections_total{listener=%q,outcome=\"refused_untrusted_proxy\"} = %v, want %d", addr, n, conns)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := strings.Count(g.logs.String(), "not in server.trusted_proxies"); n != 1 {
		t.Errorf("%d log lines about the untrusted peer after %d connections, want 1", n, conns)
	}
	if !strings.Contains(g.logs.String(), "peer=127.0.0.4") {
		t.Errorf("the log line does not name the peer 127.0.0.4")
	}
	if n := len(g.srv.Sessions()); n != 0 {
		t.Errorf("%d sessions, want none", n)
	}

	conn := dialPlainFrom(t, "127.0.0.3", g.implicit)
	h := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP("192.0.2.44"), Port: 4321}, &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 993})
	if _, err := h.WriteTo(conn); err != nil {
		t.Fatal(err)
	}
	c := upgrade(t, conn, g)
	greeting(t, c)
	c.send("a LOGIN alice alice-secret\r\n")
	c.expect("a OK")
}

// counterValue sums the counters (or gauges) of family whose label is value.
func counterValue(t *testing.T, reg *prometheus.Registry, family, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != family {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
				}
			}
		}
	}
	return sum
}
