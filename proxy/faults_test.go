package proxy_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/demo"
	proxyproto "github.com/pires/go-proxyproto"
)

// TestBackendDown: a refusing backend answers the login at once, a silent one
// after connect_timeout, and both with NO [UNAVAILABLE]; the client may retry.
func TestBackendDown(t *testing.T) {
	refusing := closedPort(t)
	silent, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never greets
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	cases := []struct {
		name    string
		backend string
		within  time.Duration
	}{
		{"refusing", refusing, 500 * time.Millisecond},
		{"silent", silent.Addr().String(), 1500 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := startGateway(t, tc.backend, func(c *conf.Config) { c.Backend.ConnectTimeout = conf.D(time.Second) })
			c := dialRaw(t, g.implicit, g.clientTLS())
			greeting(t, c)
			start := time.Now()
			c.send("a LOGIN alice alice-secret\r\n")
			c.expect("a NO [UNAVAILABLE]")
			if d := time.Since(start); d > tc.within {
				t.Errorf("answered after %v, want within %v", d, tc.within)
			}
			c.send("b NOOP\r\n") // the session goes on
			c.expect("b OK")
		})
	}
}

func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestPipelinedAfterLogin: commands sent in the same write as the login are
// forwarded to the backend first, in order.
func TestPipelinedAfterLogin(t *testing.T) {
	be := startDemo(t)
	g := startGateway(t, be.Addr, nil)
	c := dialRaw(t, g.implicit, g.clientTLS())
	greeting(t, c)
	c.send("a LOGIN alice alice-secret\r\nb SELECT INBOX\r\nc NOOP\r\nd LOGOUT\r\n")
	c.expect("a OK")
	_, untagged := c.expect("b OK")
	if !strings.Contains(strings.Join(untagged, "\n"), fmt.Sprintf("* %d EXISTS", demo.Messages)) {
		t.Errorf("SELECT's untagged replies %q lack %d EXISTS", untagged, demo.Messages)
	}
	c.expect("c OK")
	c.expect("* BYE")
	c.expect("d OK")
	c.expectClosed()
}

// TestLoginReplayWithLiterals: a backend without SASL-IR gets LOGIN, with
// literals for 8-bit passwords, synchronizing or LITERAL+.
func TestLoginReplayWithLiterals(t *testing.T) {
	for _, literalPlus := range []bool{false, true} {
		t.Run(fmt.Sprintf("literal+=%v", literalPlus), func(t *testing.T) {
			be, err := demo.StartWithCaps("127.0.0.1:0", testPasswords, demo.Caps{SASLIR: false, LiteralPlus: literalPlus})
			if err != nil {
				t.Fatal(err)
			}
			defer be.Close()
			g := startGateway(t, be.Addr, func(c *conf.Config) { c.Backend.ClientIP = conf.ClientIPNone })
			for user, pass := range testPasswords {
				c, err := imapclient.DialTLS(g.implicit, &imapclient.Options{TLSConfig: g.clientTLS()})
				if err != nil {
					t.Fatal(err)
				}
				if err := c.Login(user, pass).Wait(); err != nil {
					t.Errorf("Login(%s): %v", user, err)
				}
				c.Close()
			}
		})
	}
}

// TestInboundProxyProtocol: a listener with proxy_protocol believes the header
// from trusted_proxies only, and closes anything else.
func TestInboundProxyProtocol(t *testing.T) {
	be := startDemo(t)
	g := startGateway(t, be.Addr, func(c *conf.Config) {
		c.Listen = []conf.Listen{{Address: "127.0.0.1:0", TLS: conf.TLSImplicit, ProxyProtocol: true}}
		c.Server.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.3/32")}
		c.Bans.Allow = nil
	})
	header := func(src string) *proxyproto.Header {
		return proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP(src), Port: 4321}, &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 993})
	}
	t.Run("trusted", func(t *testing.T) {
		conn := dialPlainFrom(t, "127.0.0.3", g.implicit)
		header("192.0.2.44").WriteTo(conn)
		c := upgrade(t, conn, g)
		greeting(t, c)
		c.send("a LOGIN alice alice-secret\r\n")
		c.expect("a OK")
		if !strings.Contains(g.logs.String(), "ip=192.0.2.44") {
			t.Errorf("the auth line does not name the real client 192.0.2.44")
		}
	})
	t.Run("untrusted", func(t *testing.T) {
		// The accept loop resets an untrusted peer at once: the reset may
		// reach the dial itself, which is the refusal too.
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.4")}}
		conn, err := d.Dial("tcp", g.implicit)
		if err != nil && isReset(err) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		header("192.0.2.45").WriteTo(conn)
		expectEOF(t, conn)
	})
	t.Run("missing header", func(t *testing.T) {
		conn := dialPlainFrom(t, "127.0.0.3", g.implicit)
		conn.Write([]byte("a CAPABILITY\r\n"))
		expectEOF(t, conn)
	})
}

func dialPlainFrom(t *testing.T, from, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func upgrade(t *testing.T, conn net.Conn, g *gateway) *rawClient {
	t.Helper()
	tc := tlsClient(conn, g.clientTLS())
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	return &rawClient{t: t, conn: tc, br: newReader(tc)}
}

// expectRefused asserts the gateway refuses a connection from src at accept:
// the dial itself is reset (the gateway answers a refused source with RST, which
// can beat connect's completion on loopback), or the connection ends with
// nothing sent.
func expectRefused(t *testing.T, src, addr string) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		if !isReset(err) {
			t.Fatalf("dial from %s: %v, want success or a reset", src, err)
		}
		return
	}
	defer c.Close()
	expectEOF(t, c)
}

// expectEOF asserts the gateway closes conn without sending a byte.
func expectEOF(t *testing.T, conn net.Conn) {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	n, err := conn.Read(b[:])
	if n != 0 || err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("Read = %d, %v; want the connection closed with nothing sent", n, err)
	}
}

// TestShutdown: pre-auth sessions get BYE at once; a relayed session may go on
// until drain_timeout and is then closed.
func TestShutdown(t *testing.T) {
	be := startDemo(t)
	g := startGateway(t, be.Addr, func(c *conf.Config) { c.Server.DrainTimeout = conf.D(600 * time.Millisecond) })
	pre := dialRaw(t, g.implicit, g.clientTLS())
	greeting(t, pre)
	relayed := dialRaw(t, g.implicit, g.clientTLS())
	greeting(t, relayed)
	relayed.send("a LOGIN alice alice-secret\r\n")
	relayed.expect("a OK")

	done := make(chan struct{})
	start := time.Now()
	go func() {
		g.srv.Shutdown(context.Background())
		close(done)
	}()
	pre.expect("* BYE")
	pre.expectClosed()
	relayed.send("b NOOP\r\n") // still served during the drain
	relayed.expect("b OK")
	<-done
	if d := time.Since(start); d < 500*time.Millisecond || d > 5*time.Second {
		t.Errorf("Shutdown took %v, want about drain_timeout (600ms)", d)
	}
	relayed.expectClosed()
	if _, err := net.DialTimeout("tcp", g.implicit, time.Second); err == nil {
		t.Errorf("the listener still accepts after Shutdown")
	}
}

// TestHalfClose: when the client half-closes, the backend sees EOF and the
// session ends on both sides.
func TestHalfClose(t *testing.T) {
	be := startDemo(t)
	g := startGateway(t, be.Addr, nil)
	c := dialRaw(t, g.implicit, g.clientTLS())
	greeting(t, c)
	c.send("a LOGIN alice alice-secret\r\nb NOOP\r\n")
	c.expect("a OK")
	c.expect("b OK")
	if err := closeWrite(c.conn); err != nil {
		t.Fatal(err)
	}
	c.expectClosed()
	deadline := time.Now().Add(5 * time.Second)
	for len(g.srv.Sessions()) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(g.srv.Sessions()); n != 0 {
		t.Errorf("%d sessions left after the client went away", n)
	}
}
