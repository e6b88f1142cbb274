package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/backend"
	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/demo"
	"github.com/imapgw/imapgw/internal/testbed"
	"github.com/imapgw/imapgw/limiter"
	"github.com/imapgw/imapgw/proxy"
	"github.com/prometheus/client_golang/prometheus"
)

// gateway is a running gateway for one test, with its log captured.
type gateway struct {
	srv      *proxy.Server
	lim      *limiter.Limiter
	cfg      *conf.Config
	implicit string // address of the implicit-TLS listener
	starttls string // address of the STARTTLS listener
	ca       *testbed.CA
	logs     *testbed.LogBuffer
	reg      *prometheus.Registry // the gateway's metrics
	pool     *backend.Pool        // its backend servers; health checks run only after runChecks
}

type staticCerts struct{ conf *tls.Config }

func (c staticCerts) TLSConfig() *tls.Config { return c.conf }

// testConfig is a gateway config with two loopback listeners and fast limits.
func testConfig(backend string) *conf.Config {
	c := conf.Default()
	c.Server.Hostname = "localhost"
	c.Server.StateDir = ""
	c.Server.DrainTimeout = conf.D(2 * time.Second)
	c.Listen = []conf.Listen{{Address: "127.0.0.1:0", TLS: conf.TLSImplicit}, {Address: "127.0.0.2:0", TLS: conf.TLSStartTLS}}
	c.TLS.Certificate = conf.CertSelfSigned
	c.Backend.Servers = []string{backend}
	c.Backend.ConnectTimeout = conf.D(2 * time.Second)
	c.Limits.PreauthTimeout = conf.D(5 * time.Second)
	c.Bans.FailureDelay = conf.D(0)
	return c
}

// startGateway runs a gateway in front of backend; edit may change the config.
func startGateway(t *testing.T, server string, edit func(*conf.Config)) *gateway {
	t.Helper()
	cfg := testConfig(server)
	if edit != nil {
		edit(cfg)
	}
	g := &gateway{cfg: cfg, ca: testbed.NewCA(t), logs: &testbed.LogBuffer{}, reg: prometheus.NewRegistry()}
	log := slog.New(slog.NewTextHandler(g.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	lim, err := limiter.New(cfg.Bans, cfg.Limits, limiter.Options{Logger: log, StateDir: cfg.Server.StateDir})
	if err != nil {
		t.Fatal(err)
	}
	g.lim = lim
	leaf := g.ca.Leaf(t, "localhost", "127.0.0.1", "127.0.0.2")
	certs := staticCerts{&tls.Config{Certificates: []tls.Certificate{leaf}, NextProtos: []string{"imap"}}}
	pool, err := backend.New(cfg.Backend, backend.Options{Logger: log, Registerer: g.reg})
	if err != nil {
		t.Fatal(err)
	}
	g.pool = pool
	t.Cleanup(pool.Close) // its warm connections (a pool never Run is its owner's to close)
	srv, err := proxy.New(cfg, proxy.Options{Policy: lim, Certs: certs, Logger: log, Registerer: g.reg, Backends: pool})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	g.srv = srv
	addrs := srv.Addrs()
	g.implicit = addrs[0].String()
	if len(addrs) > 1 {
		g.starttls = addrs[1].String()
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if n := srv.Panics(); n != 0 {
			t.Errorf("%v panics recovered; log:\n%s", n, g.logs.String())
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", g.logs.String())
		}
	})
	return g
}

// runChecks runs the pool's health checks until the test ends. Tests of one
// server leave them off: a check's connection must not count as a client's.
func (g *gateway) runChecks(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); g.pool.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func (g *gateway) clientTLS() *tls.Config {
	return &tls.Config{RootCAs: g.ca.Pool(), ServerName: "localhost"}
}

// startDemo runs the in-memory backend with the usual test users.
func startDemo(t *testing.T) *demo.Backend {
	t.Helper()
	b, err := demo.Start("127.0.0.1:0", testbed.DefaultUsers())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// rawClient is a line-level IMAP client: the test writes exact bytes, as real
// clients send them, and reads exact replies.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func dialRaw(t *testing.T, addr string, tlsConf *tls.Config) *rawClient {
	return dialRawFrom(t, "", addr, tlsConf)
}

// dialRawFrom dials from a chosen loopback address, to play several sources.
func dialRawFrom(t *testing.T, from, addr string, tlsConf *tls.Config) *rawClient {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	if tlsConf != nil {
		tc := tls.Client(c, tlsConf)
		if err := tc.Handshake(); err != nil {
			t.Fatalf("TLS handshake with %s: %v", addr, err)
		}
		c = tc
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawClient{t: t, conn: c, br: bufio.NewReader(c)}
	return rc
}

func (c *rawClient) send(s string) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("write %q: %v", s, err)
	}
}

// line reads one line without CRLF.
func (c *rawClient) line() string {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	l, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, l)
	}
	return strings.TrimRight(l, "\r\n")
}

// expect reads lines until one starts with prefix, and returns it; untagged
// lines before it are returned too, for assertions.
func (c *rawClient) expect(prefix string) (string, []string) {
	c.t.Helper()
	var before []string
	for {
		l := c.line()
		if strings.HasPrefix(l, prefix) {
			return l, before
		}
		if !strings.HasPrefix(l, "* ") && !strings.HasPrefix(l, "+") {
			c.t.Fatalf("want a line starting %q, got %q (after %q)", prefix, l, before)
		}
		before = append(before, l)
	}
}

// until reads lines until one starts with prefix, skipping the others.
func (c *rawClient) until(prefix string) string {
	c.t.Helper()
	for {
		if l := c.line(); strings.HasPrefix(l, prefix) {
			return l
		}
	}
}

// expectClosed asserts the server closes the connection (after optional lines).
func (c *rawClient) expectClosed() {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, err := io.ReadAll(c.br)
	if err != nil && !isReset(err) {
		c.t.Fatalf("want the connection closed, got %v after %q", err, rest)
	}
}

func isReset(err error) bool {
	return strings.Contains(err.Error(), "reset by peer")
}

// starttls upgrades a raw client on the STARTTLS listener.
func (c *rawClient) starttls(tlsConf *tls.Config) {
	c.t.Helper()
	c.send("s1 STARTTLS\r\n")
	c.expect("s1 OK")
	tc := tls.Client(c.conn, tlsConf)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("STARTTLS handshake: %v", err)
	}
	c.conn, c.br = tc, bufio.NewReader(tc)
}

func greeting(t *testing.T, c *rawClient) string {
	t.Helper()
	l := c.line()
	if !strings.HasPrefix(l, "* OK [CAPABILITY ") {
		t.Fatalf("greeting = %q, want * OK [CAPABILITY ...]", l)
	}
	return l
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

var _ = fmt.Sprintf

func tlsClient(c net.Conn, conf *tls.Config) *tls.Conn { return tls.Client(c, conf) }
func newReader(c net.Conn) *bufio.Reader               { return bufio.NewReader(c) }

func closeWrite(c net.Conn) error {
	if tc, ok := c.(*tls.Conn); ok {
		return tc.CloseWrite()
	}
	return c.(*net.TCPConn).CloseWrite()
}
