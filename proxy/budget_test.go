package proxy_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
)

// budgetConfig is policyConfig with the per-source connection limits out of
// the way, so the attacker is as parallel as it can be.
func budgetConfig(t *testing.T) func(*conf.Config) {
	return func(c *conf.Config) {
		policyConfig(t.TempDir())(c)
		c.Limits.MaxConnectionsPerSource = 100
		c.Limits.ConnectionRate = 1000
		// backend.login_timeout keeps its default (30 s), longer than Dovecot's
		// failure delay and penalty (up to 15 s), so the reply to every guess
		// arrives: a timed-out login counts as nothing.
	}
}

// dialMany opens n greeted TLS sessions from src.
func dialMany(t *testing.T, g *gateway, src string, n int) []*rawClient {
	t.Helper()
	out := make([]*rawClient, n)
	for i := range out {
		c, ok := tryDial(t, src, g)
		if !ok {
			t.Fatalf("session %d from %s refused", i+1, src)
		}
		out[i] = c
	}
	return out
}

// TestParallelGuessesBudget (issue 11, point 1): 50 sessions from one source
// send a wrong LOGIN at the same moment. At most source_failures of them reach
// Dovecot, counted in Dovecot's own log; the rest are refused without the
// backend hearing of them, and the source ends up banned. A correct password
// sent while the budget is taken does not log in. With Dovecot's auth penalty
// on and off: the budget must not depend on the backend's own defence.
func TestParallelGuessesBudget(t *testing.T) {
	for _, penalty := range []bool{false, true} {
		t.Run(fmt.Sprintf("penalty=%v", penalty), func(t *testing.T) {
			opts := testbed.DovecotOptions{} // Dovecot's defaults: penalty on
			if !penalty {
				opts = testbed.DovecotOptions{NoAuthPenalty: true, AuthFailureDelay: -1,
					Why: "the budget must hold without the backend's own defence"}
			}
			d := testbed.StartDovecot(t, opts)
			g := startGateway(t, d.Addr, budgetConfig(t))
			const src, n = "127.0.0.7", 50
			budget := g.cfg.Bans.SourceFailures
			clients := dialMany(t, g, src, n+1)
			honest := clients[n]

			replies := make([]string, n)
			var start, wg sync.WaitGroup
			start.Add(1)
			for i, c := range clients[:n] {
				wg.Go(func() {
					start.Wait()
					c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
					fmt.Fprintf(c.conn, "a%d LOGIN alice wrong-%d\r\n", i, i)
					replies[i] = c.untilErr(fmt.Sprintf("a%d ", i))
				})
			}
			start.Done()
			// While the reserved guesses wait for Dovecot, the right password
			// from the same source is refused: the budget is taken.
			ip := netip.MustParseAddr(src)
			waitFor(t, "the budget in flight", func() bool { return g.lim.Source(ip).InFlight == budget })
			honest.send("h LOGIN alice " + quote(testPasswords["alice"]) + "\r\n")
			if l := honest.untilErr("h "); !strings.HasPrefix(l, "h NO [UNAVAILABLE]") {
				t.Errorf("the right password while %d guesses fly = %q, want NO [UNAVAILABLE]", budget, l)
			}
			wg.Wait()

			failed, refused := 0, 0
			for i, l := range replies {
				switch {
				case strings.HasPrefix(l, fmt.Sprintf("a%d NO [AUTHENTICATIONFAILED]", i)):
					failed++
				case strings.HasPrefix(l, fmt.Sprintf("a%d NO [UNAVAILABLE]", i)):
					refused++
				default:
					t.Errorf("reply %d = %q, want NO", i, l)
				}
			}
			// Count at the backend. A login from another source, logged by
			// Dovecot after the guesses were answered, marks the end.
			loginTime(t, g, "127.0.0.8", "alice")
			d.WaitLog(t, "rip=127.0.0.8", 5*time.Second)
			waitFor(t, "Dovecot's log of the guesses", func() bool { return d.AuthFailures(src) >= failed })
			atBackend := d.AuthFailures(src)
			t.Logf("%d parallel guesses: %d reached Dovecot, %d refused by the gateway (source_failures = %d)", n, atBackend, refused, budget)
			if atBackend > budget || atBackend == 0 {
				t.Errorf("%d guesses reached Dovecot, want 1 to source_failures = %d", atBackend, budget)
			}
			if strings.Contains(d.Log(), "Login: user=<alice>, method=PLAIN, rip="+src) {
				t.Errorf("the source logged in to Dovecot")
			}
			if info := g.lim.Source(ip); info.Ban == nil || info.InFlight != 0 {
				t.Errorf("after the batch: ban %v, %d in flight; want banned, 0", info.Ban, info.InFlight)
			}
			expectRefused(t, src, g.implicit)
			assertNoPasswords(t, g.logs.String())
		})
	}
}

// TestSuccessAfterBanRefused (issue 11, point 1): a correct password whose
// source is banned while its login is in flight is refused with NO
// [UNAVAILABLE] and its backend session closed, not relayed. A relay in front
// of Dovecot holds the credentials until the ban is in place.
func TestSuccessAfterBanRefused(t *testing.T) {
	d := testbed.StartDovecot(t, testbed.DovecotOptions{})
	hold := startHoldingRelay(t, d.Addr, "gwl ") // the gateway's login command
	g := startGateway(t, hold.addr, budgetConfig(t))
	const src = "127.0.0.7"
	c, ok := tryDial(t, src, g)
	if !ok {
		t.Fatal("refused at accept")
	}
	c.send("a LOGIN alice " + quote(testPasswords["alice"]) + "\r\n")
	select { // the credentials are on their way to Dovecot
	case <-hold.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway's login never reached the relay")
	}
	g.lim.AddBan(netip.MustParseAddr(src), time.Hour, "test")
	close(hold.release)
	if l := c.untilErr("a "); !strings.HasPrefix(l, "a NO [UNAVAILABLE]") {
		t.Fatalf("login banned in flight = %q, want NO [UNAVAILABLE]", l)
	}
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, _ := io.ReadAll(c.br); !strings.Contains(string(rest), "* BYE") {
		t.Errorf("after the refusal: %q, want BYE and close", rest)
	}
	// Dovecot accepted the password; the gateway closed that session unused.
	d.WaitLog(t, "Login: user=<alice>, method=PLAIN, rip="+src, 5*time.Second)
	d.WaitLog(t, "Disconnected", 5*time.Second)
	if strings.Contains(g.logs.String(), "outcome=ok") || !strings.Contains(g.logs.String(), "accepted the login, closed unused") {
		t.Errorf("the gateway log lacks the refused success, or logged it as ok")
	}
	if n := g.lim.Source(netip.MustParseAddr(src)).InFlight; n != 0 {
		t.Errorf("%d logins in flight after the refusal, want 0", n)
	}
}

// TestPipelinedRefusalsCost (issue 11, point 2): 50 pipelined LOGINs against
// a protected account on one connection get at most
// max_auth_failures_per_connection answers, each after failure_delay, then
// BYE; ten such connections from one address write a bounded number of log
// lines.
func TestPipelinedRefusalsCost(t *testing.T) {
	d := testbed.StartDovecot(t, testbed.DovecotOptions{})
	g := startGateway(t, d.Addr, func(c *conf.Config) {
		budgetConfig(t)(c)
		c.Bans.AccountFailures = 3
		c.Bans.FailureDelay = conf.D(100 * time.Millisecond)
	})
	for i := 1; i <= 3; i++ { // three strangers fail once each: alice is protected
		c, ok := tryDial(t, fmt.Sprintf("127.0.1.%d", i), g)
		if !ok {
			t.Fatal("refused at accept")
		}
		c.send("a LOGIN alice wrong\r\n")
		c.expect("a NO")
	}
	const src, conns, lines = "127.0.2.5", 10, 50
	capN := g.cfg.Limits.MaxAuthFailuresPerConnection
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total int // answers over all connections
	)
	for k := range conns {
		wg.Go(func() {
			c, ok := tryDial(t, src, g)
			if !ok {
				t.Errorf("connection %d refused at accept", k)
				return
			}
			var b strings.Builder
			for i := range lines {
				fmt.Fprintf(&b, "a%d LOGIN alice x%d\r\n", i, i)
			}
			start := time.Now()
			c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c.conn, b.String()) // the gateway may hang up before reading it all
			c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			rest, _ := io.ReadAll(c.br)
			took := time.Since(start)
			answers, bye := 0, false
			for _, l := range strings.Split(string(rest), "\r\n") {
				switch {
				case strings.HasPrefix(l, "a") && strings.Contains(l, " NO "):
					answers++
				case strings.HasPrefix(l, "* BYE"):
					bye = true
				}
			}
			mu.Lock()
			total += answers
			mu.Unlock()
			if answers > capN || !bye {
				t.Errorf("connection %d: %d answers, BYE %v; want at most %d, then BYE:\n%s", k, answers, bye, capN, rest)
			}
			if min := time.Duration(answers) * g.cfg.Bans.FailureDelay.Duration; took < min {
				t.Errorf("connection %d: %d answers in %v, want each after failure_delay (≥ %v)", k, answers, took, min)
			}
		})
	}
	wg.Wait()
	var mine []string
	for _, l := range strings.Split(g.logs.String(), "\n") {
		if strings.Contains(l, "ip="+src) {
			mine = append(mine, l)
		}
	}
	// At most one guess a minute reaches the backend for all strangers (one
	// failed line); the refusals of this minute share one line.
	if len(mine) == 0 || len(mine) > 2 {
		t.Errorf("%d connections × %d pipelined logins wrote %d log lines for %s, want 1 or 2:\n%s",
			conns, lines, len(mine), src, strings.Join(mine, "\n"))
	}
	t.Logf("%d connections × %d pipelined LOGINs: %d answers, %d log lines", conns, lines, total, len(mine))
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// holdingRelay forwards TCP to a backend, but holds the first chunk from the
// gateway that contains marker until release is closed, signalling held.
type holdingRelay struct {
	addr    string
	held    chan struct{}
	release chan struct{}
}

func startHoldingRelay(t *testing.T, backend, marker string) *holdingRelay {
	t.Helper()
	h := &holdingRelay{held: make(chan struct{}), release: make(chan struct{})}
	var once sync.Once
	h.addr = startTestRelay(t, backend, func(in, out net.Conn) {
		go func() { io.Copy(in, out); in.Close() }()
		go func() {
			buf := make([]byte, 64<<10)
			for {
				n, err := in.Read(buf)
				if n > 0 && strings.Contains(string(buf[:n]), marker) {
					once.Do(func() { close(h.held) })
					<-h.release
				}
				if n > 0 {
					if _, err := out.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					out.Close()
					return
				}
			}
		}()
	})
	return h
}

// startTestRelay listens on loopback and, for each connection, dials backend
// and hands both to serve; both are closed when the test ends. It returns
// the address to dial.
func startTestRelay(t *testing.T, backend string, serve func(in, out net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", backend)
			if err != nil {
				in.Close()
				continue
			}
			t.Cleanup(func() { in.Close(); out.Close() })
			serve(in, out)
		}
	}()
	return ln.Addr().String()
}
