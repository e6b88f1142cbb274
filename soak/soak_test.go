package soak

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/demo"
	"github.com/imapgw/imapgw/internal/testbed"
	"github.com/imapgw/imapgw/limiter"
	"github.com/imapgw/imapgw/proxy"
)

var (
	soak         = flag.Bool("soak", false, "run the soak test (make soak)")
	duration     = flag.Duration("duration", 60*time.Second, "how long the load runs")
	sessions     = flag.Int("sessions", 2000, "concurrent sessions through the gateway in front of the in-memory backend")
	dovecotConns = flag.Int("dovecot-sessions", 200, "concurrent sessions through the gateway in front of Dovecot (one imap process each)")
)

// Tolerances for "back to the starting level" once the load is over and every
// session has ended.
const (
	goroutineSlack = 20
	fdSlack        = 20
	rssSlack       = 48 << 20 // the Go heap keeps some spans and the TLS session caches
)

// attackerAddr floods wrong passwords and connections; legitimate clients come
// from 127.0.0.1–127.0.0.7, which bans.allow covers.
const attackerAddr = "127.0.0.9"

var legitAllow = netip.MustParsePrefix("127.0.0.0/29")

// TestSoak: sessions doing IDLE, FETCH and fresh logins for -duration while an
// attacker floods; no legitimate session may fail, and goroutines, open files
// and RSS must come back near where they started.
func TestSoak(t *testing.T) {
	if !*soak {
		t.Skip("the soak test runs with -soak: make soak")
	}
	raiseFileLimit(t)
	users := map[string]string{}
	for i := 0; i < 100; i++ {
		users[fmt.Sprintf("user%d", i)] = fmt.Sprintf("pass-%d", i)
	}
	be, err := demo.Start("127.0.0.1:0", users)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	d := testbed.StartDovecot(t, testbed.DovecotOptions{})
	ca := testbed.NewCA(t)
	memGW := startGateway(t, ca, be.Addr, conf.ClientIPNone)
	dcGW := startGateway(t, ca, d.Addr, conf.ClientIPID)
	clientTLS := &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", ClientSessionCache: tls.NewLRUClientSessionCache(64)}

	for _, u := range []string{"alice", "bob", "carol", "demo"} {
		seed(t, &client{addr: dcGW.addr, from: "127.0.0.1", tls: clientTLS, user: u, pass: d.Users[u]})
	}
	before := measure()
	t.Logf("before: %s", before)
	st, dcSt := &stats{}, &stats{} // in-memory backend, Dovecot
	ctx, cancel := context.WithTimeout(context.Background(), *duration)
	defer cancel()
	var wg sync.WaitGroup
	var peak snapshot
	go func() { peak = watchPeak(ctx) }()
	start := time.Now()
	// Dovecot forks a login process per connection: on two shared cores, a
	// storm of TLS handshakes beside it can keep it from greeting within
	// connect_timeout, so its sessions start first and more slowly.
	spawn := func(n int, every time.Duration, st *stats, addr string, creds func(i int) (string, string)) {
		for i := 0; i < n; i++ {
			user, pass := creds(i)
			from := fmt.Sprintf("127.0.0.%d", 1+i%7)
			wg.Add(1)
			go func() {
				defer wg.Done()
				runSession(ctx, st, &client{addr: addr, from: from, tls: clientTLS, user: user, pass: pass})
			}()
			time.Sleep(every)
		}
	}
	var atk attackStats
	wg.Add(1)
	go func() { defer wg.Done(); attack(ctx, memGW.addr, clientTLS, &atk) }()
	dovecotUsers := []string{"alice", "bob", "carol", "demo"}
	spawn(*dovecotConns, 10*time.Millisecond, dcSt, dcGW.addr, func(i int) (string, string) {
		u := dovecotUsers[i%len(dovecotUsers)]
		return u, d.Users[u]
	})
	spawn(*sessions, 4*time.Millisecond, st, memGW.addr, func(i int) (string, string) {
		u := fmt.Sprintf("user%d", i%100)
		return u, users[u]
	})
	wg.Wait()
	elapsed := time.Since(start)

	// Every client has logged out; wait for the gateways to notice.
	for _, g := range []*gw{memGW, dcGW} {
		waitEmpty(t, g.srv)
	}
	after := settle(before)
	for _, r := range []struct {
		name string
		n    int
		st   *stats
	}{{"in-memory backend", *sessions, st}, {"Dovecot", *dovecotConns, dcSt}} {
		t.Logf("%s: %d concurrent sessions for %v; %d logins, %d IDLE, %d FETCH, %d legitimate failures",
			r.name, r.n, elapsed.Round(time.Second), r.st.logins.Load(), r.st.idles.Load(), r.st.fetches.Load(), r.st.failures.Load())
		if n := r.st.failures.Load(); n != 0 {
			t.Errorf("%s: %d legitimate session failures; first: %v", r.name, n, r.st.firstErr.Load())
		}
	}
	if gatewayErrors.String() != "" {
		t.Logf("gateway log (first errors):\n%s", gatewayErrors.String())
	}
	t.Logf("attacker %s: %d connections, %d wrong passwords answered, %d refused at accept",
		attackerAddr, atk.conns.Load(), atk.wrong.Load(), atk.refused.Load())
	t.Logf("before: %s\npeak:   %s\nafter:  %s", before, peak, after)
	if atk.refused.Load() == 0 {
		t.Errorf("the attacker was never refused at accept: no ban took effect")
	}
	for _, g := range []*gw{memGW, dcGW} {
		if n := g.srv.Panics(); n != 0 {
			t.Errorf("%v panics recovered", n)
		}
	}
	if after.goroutines > before.goroutines+goroutineSlack || after.fds > before.fds+fdSlack || after.rss > before.rss+rssSlack {
		t.Errorf("after the load: %s; want within +%d goroutines, +%d fds, +%d MB of before: %s",
			after, goroutineSlack, fdSlack, rssSlack>>20, before)
	}
}

// gw is one in-process gateway.
type gw struct {
	srv  *proxy.Server
	addr string
}

func startGateway(t *testing.T, ca *testbed.CA, backend, clientIP string) *gw {
	t.Helper()
	cfg := conf.Default()
	cfg.Server.Hostname = "localhost"
	cfg.Server.StateDir = ""
	cfg.Server.DrainTimeout = conf.D(2 * time.Second)
	cfg.Listen = []conf.Listen{{Address: "127.0.0.1:0", TLS: conf.TLSImplicit}}
	cfg.TLS.Certificate = conf.CertSelfSigned
	cfg.Backend.Servers = []string{backend}
	cfg.Backend.ClientIP = clientIP
	cfg.Limits.PreauthTimeout = conf.D(30 * time.Second)
	cfg.Bans.Allow = []netip.Prefix{legitAllow, netip.MustParsePrefix("::1/128")}
	cfg.Bans.FailureDelay = conf.D(100 * time.Millisecond)
	log := slog.New(slog.NewTextHandler(&gatewayErrors, nil))
	lim, err := limiter.New(cfg.Bans, cfg.Limits, limiter.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	leaf := ca.Leaf(t, "localhost", "127.0.0.1")
	certs := staticCerts{&tls.Config{Certificates: []tls.Certificate{leaf}, NextProtos: []string{"imap"}}}
	srv, err := proxy.New(cfg, proxy.Options{Policy: lim, Certs: certs, Logger: log})
	if err == nil {
		err = srv.Start()
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return &gw{srv: srv, addr: srv.Addrs()[0].String()}
}

// gatewayErrors keeps the first log lines of logins the gateways could not
// complete (outcome=error) and of recovered panics, to explain a failure.
var gatewayErrors keepLines

type keepLines struct {
	mu    sync.Mutex
	lines []string
}

func (k *keepLines) Write(p []byte) (int, error) {
	if s := string(p); strings.Contains(s, "outcome=error") || strings.Contains(s, "panic") {
		k.mu.Lock()
		if len(k.lines) < 20 {
			k.lines = append(k.lines, strings.TrimSpace(s))
		}
		k.mu.Unlock()
	}
	return len(p), nil
}

func (k *keepLines) String() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return strings.Join(k.lines, "\n")
}

type staticCerts struct{ conf *tls.Config }

func (c staticCerts) TLSConfig() *tls.Config { return c.conf }

type stats struct {
	logins, idles, fetches, failures atomic.Int64
	firstErr                         atomic.Value
}

func (s *stats) fail(err error) {
	if s.failures.Add(1) == 1 {
		s.firstErr.Store(err.Error())
	}
}

// runSession keeps one session slot busy until ctx ends: log in, SELECT, then
// IDLE and FETCH in turn, and now and then log out and in again.
func runSession(ctx context.Context, st *stats, c *client) {
	for ctx.Err() == nil {
		if err := c.connection(ctx, st); err != nil {
			st.fail(fmt.Errorf("%s as %s: %w", c.addr, c.user, err))
			return
		}
	}
}

// client is a line-level IMAP client.
type client struct {
	addr, from, user, pass string
	tls                    *tls.Config
	conn                   net.Conn
	br                     *bufio.Reader
	n                      int
}

// opTimeout bounds each exchange; two cores serve thousands of sessions.
const opTimeout = 60 * time.Second

// dial connects and reads the greeting.
func (c *client) dial() error {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(c.from)}, Timeout: opTimeout}
	raw, err := d.Dial("tcp", c.addr)
	if err != nil {
		return err
	}
	conn := tls.Client(raw, c.tls)
	c.conn, c.br = conn, bufio.NewReader(conn)
	conn.SetDeadline(time.Now().Add(opTimeout))
	if err := c.expect("* OK"); err != nil {
		conn.Close()
		return fmt.Errorf("greeting: %w", err)
	}
	return nil
}

func (c *client) connection(ctx context.Context, st *stats) error {
	if err := c.dial(); err != nil {
		return err
	}
	defer c.conn.Close()
	if err := c.cmd(fmt.Sprintf("LOGIN %s %q", c.user, c.pass)); err != nil {
		return fmt.Errorf("login: %w", err)
	}
	st.logins.Add(1)
	if err := c.cmd("SELECT INBOX"); err != nil {
		return err
	}
	for ctx.Err() == nil {
		switch rand.IntN(10) {
		case 0: // a fresh login
			return c.cmd("LOGOUT")
		case 1, 2, 3, 4:
			if err := c.cmd("UID FETCH 1:* (FLAGS BODY.PEEK[HEADER])"); err != nil {
				return err
			}
			st.fetches.Add(1)
		default:
			if err := c.idle(ctx, time.Duration(1000+rand.IntN(4000))*time.Millisecond); err != nil {
				return err
			}
			st.idles.Add(1)
		}
	}
	return c.cmd("LOGOUT")
}

// seed puts a message in the user's INBOX, so that FETCH has something to
// return from Dovecot too.
func seed(t *testing.T, c *client) {
	t.Helper()
	err := c.dial()
	if err == nil {
		defer c.conn.Close()
		err = c.cmd(fmt.Sprintf("LOGIN %s %q", c.user, c.pass))
	}
	msg := "Subject: soak\r\n\r\nhello\r\n"
	if err == nil {
		err = c.cmd(fmt.Sprintf("APPEND INBOX {%d+}\r\n%s", len(msg), msg))
	}
	if err == nil {
		err = c.cmd("LOGOUT")
	}
	if err != nil {
		t.Fatalf("seeding %s's INBOX: %v", c.user, err)
	}
}

func (c *client) idle(ctx context.Context, d time.Duration) error {
	tag := c.tag()
	c.conn.SetDeadline(time.Now().Add(opTimeout))
	if _, err := fmt.Fprintf(c.conn, "%s IDLE\r\n", tag); err != nil {
		return err
	}
	if err := c.expect("+"); err != nil {
		return fmt.Errorf("IDLE: %w", err)
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
	c.conn.SetDeadline(time.Now().Add(opTimeout))
	if _, err := io.WriteString(c.conn, "DONE\r\n"); err != nil {
		return err
	}
	return c.expect(tag + " OK")
}

func (c *client) tag() string { c.n++; return "t" + strconv.Itoa(c.n) }

// cmd sends one command and reads to its tagged OK.
func (c *client) cmd(s string) error {
	tag := c.tag()
	c.conn.SetDeadline(time.Now().Add(opTimeout))
	if _, err := fmt.Fprintf(c.conn, "%s %s\r\n", tag, s); err != nil {
		return err
	}
	if err := c.expect(tag + " OK"); err != nil {
		verb, _, _ := strings.Cut(s, " ")
		return fmt.Errorf("%s: %w", verb, err)
	}
	return nil
}

// expect reads lines, literals included, until one starts with prefix; a
// tagged NO or BAD is an error.
func (c *client) expect(prefix string) error {
	for {
		l, err := c.br.ReadString('\n')
		if err != nil {
			return err
		}
		if strings.HasPrefix(l, prefix) {
			return nil
		}
		if f := strings.Fields(l); len(f) > 1 && f[0] != "*" && (f[1] == "NO" || f[1] == "BAD") {
			return errors.New(strings.TrimSpace(l))
		}
		if n, ok := literal(l); ok {
			if _, err := io.CopyN(io.Discard, c.br, n); err != nil {
				return err
			}
		}
	}
}

func literal(l string) (int64, bool) {
	l = strings.TrimRight(l, "\r\n")
	i := strings.LastIndexByte(l, '{')
	if i < 0 || !strings.HasSuffix(l, "}") {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSuffix(l[i+1:len(l)-1], "+"), 10, 64)
	return n, err == nil
}

type attackStats struct{ conns, wrong, refused atomic.Int64 }

// attack tries wrong passwords for the legitimate users from attackerAddr,
// as fast as it is answered, until ctx ends; once banned it keeps connecting.
func attack(ctx context.Context, addr string, tlsConf *tls.Config, st *attackStats) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(attackerAddr)}, Timeout: 5 * time.Second}
	for i := 0; ctx.Err() == nil; i++ {
		raw, err := d.Dial("tcp", addr)
		if err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		st.conns.Add(1)
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		c := tls.Client(raw, tlsConf)
		if err := c.Handshake(); err != nil {
			st.refused.Add(1)
			raw.Close()
			time.Sleep(5 * time.Millisecond)
			continue
		}
		br := bufio.NewReader(c)
		fmt.Fprintf(c, "a LOGIN user%d wrong-%d\r\n", i%100, i)
		for {
			l, err := br.ReadString('\n')
			if err != nil || strings.HasPrefix(l, "a ") {
				if strings.HasPrefix(l, "a NO") {
					st.wrong.Add(1)
				}
				break
			}
		}
		c.Close()
	}
}

// snapshot is the process's footprint.
type snapshot struct {
	goroutines, fds int
	rss             int64
}

func (s snapshot) String() string {
	return fmt.Sprintf("%d goroutines, %d open files, RSS %.1f MB", s.goroutines, s.fds, float64(s.rss)/(1<<20))
}

func measure() snapshot {
	entries, _ := os.ReadDir("/proc/self/fd")
	return snapshot{goroutines: runtime.NumGoroutine(), fds: len(entries), rss: rss()}
}

// rss reads the resident set size from /proc/self/statm.
func rss() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

func watchPeak(ctx context.Context) snapshot {
	var peak snapshot
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		m := measure()
		peak = snapshot{max(peak.goroutines, m.goroutines), max(peak.fds, m.fds), max(peak.rss, m.rss)}
		select {
		case <-ctx.Done():
			return peak
		case <-t.C:
		}
	}
}

// settle returns the footprint once it is back within the tolerances of
// before, or after 60 s, returning freed memory to the OS on the way.
func settle(before snapshot) snapshot {
	deadline := time.Now().Add(60 * time.Second)
	for {
		debug.FreeOSMemory()
		m := measure()
		if (m.goroutines <= before.goroutines+goroutineSlack && m.fds <= before.fds+fdSlack && m.rss <= before.rss+rssSlack) || time.Now().After(deadline) {
			return m
		}
		time.Sleep(time.Second)
	}
}

func waitEmpty(t *testing.T, srv *proxy.Server) {
	deadline := time.Now().Add(30 * time.Second)
	for len(srv.Sessions()) > 0 {
		if time.Now().After(deadline) {
			t.Errorf("%d sessions still open 30 s after every client left", len(srv.Sessions()))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// raiseFileLimit lifts RLIMIT_NOFILE to its hard limit: each session holds
// four descriptors in this process (client, gateway's two sides, backend).
func raiseFileLimit(t *testing.T) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if need := uint64(4*(*sessions) + 4*(*dovecotConns) + 1000); lim.Cur < need {
		t.Fatalf("RLIMIT_NOFILE is %d, the soak needs about %d", lim.Cur, need)
	}
}
