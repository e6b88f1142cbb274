package proxy_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
)

// warmReady waits until the gateway holds n warm connections to server.
func warmReady(t *testing.T, g *gateway, server string, n float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for counterValue(t, g.reg, "imapgw_backend_warm_connections", "backend", server) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v warm connections, want %v", server, counterValue(t, g.reg, "imapgw_backend_warm_connections", "backend", server), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWarmDovecot: against a stock Dovecot, logins that follow each other
// make the gateway keep warm connections; a login on one is Dovecot's login
// of the client's own address (the ID goes with the credentials), and the
// set is topped up again.
func TestWarmDovecot(t *testing.T) {
	d := startDovecot(t)
	g := startGateway(t, d.Addr, nil) // warm_connections at its default
	if w := g.cfg.Backend.WarmConnections; w != 2 {
		t.Fatalf("default warm_connections = %d, want 2", w)
	}
	loginTime(t, g, "127.0.0.21", "bob")
	loginTime(t, g, "127.0.0.22", "bob")
	warmReady(t, g, d.Addr, 2)
	loginTime(t, g, "127.0.0.23", "bob")
	if hits := counterValue(t, g.reg, "imapgw_backend_warm_total", "outcome", "hit"); hits != 1 {
		t.Errorf("warm hits = %v after three logins, want 1", hits)
	}
	line := d.WaitLog(t, "rip=127.0.0.23", 5*time.Second)
	if !strings.Contains(line, "Login: user=<bob>") {
		t.Errorf("Dovecot's line for the login on a warm connection: %q, want bob's login from 127.0.0.23", line)
	}
	warmReady(t, g, d.Addr, 2)
}

// TestWarmHungServer: with warm connections ready, the first server freezes
// (SIGSTOP of every Dovecot process). A login that takes one of them gets no
// answer at all; after connect_timeout, not login_timeout, it goes on to the
// next server, as a login whose server never greets does.
func TestWarmHungServer(t *testing.T) {
	const connect = time.Second
	d1, d2 := startDovecot(t), startDovecot(t)
	g := startGateway(t, d1.Addr, func(c *conf.Config) {
		c.Backend.Servers = []string{d1.Addr, d2.Addr}
		c.Backend.Route = conf.RouteFirst
		c.Backend.ConnectTimeout = conf.D(connect)
		c.Backend.CheckInterval, c.Backend.CheckTimeout = conf.D(200*time.Millisecond), conf.D(500*time.Millisecond)
	})
	g.runChecks(t)
	loginTime(t, g, "127.0.0.31", "bob")
	loginTime(t, g, "127.0.0.32", "bob")
	warmReady(t, g, d1.Addr, 2)

	d1.Freeze()
	took := loginTime(t, g, "127.0.0.33", "bob")
	if took < connect || took > connect+2*time.Second {
		t.Errorf("login with the first server frozen took %v, want connect_timeout (%v) and a little", took, connect)
	}
	if line := d2.WaitLog(t, "rip=127.0.0.33", 5*time.Second); !strings.Contains(line, "user=<bob>") {
		t.Errorf("the second server's line %q, want bob's login from 127.0.0.33", line)
	}
	line := waitLogLine(t, g.logs, "msg=auth", "client=127.0.0.33")
	if !strings.Contains(line, "outcome=ok") || !strings.Contains(line, "backend="+d2.Addr) {
		t.Errorf("auth line %q, want outcome=ok backend=%s", line, d2.Addr)
	}
	waitLogLine(t, g.logs, "backend="+d1.Addr, "warm connection: reading login reply")

	d1.Thaw()
	deadline := time.Now().Add(10 * time.Second)
	for counterValue(t, g.reg, "imapgw_backend_up", "backend", d1.Addr) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the thawed server is not up again after 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	loginTime(t, g, "127.0.0.34", "alice") // bob is pinned to the second server now
	if line := d1.WaitLog(t, "rip=127.0.0.34", 5*time.Second); !strings.Contains(line, "user=<alice>") {
		t.Errorf("the thawed server's line %q, want alice's login from 127.0.0.34", line)
	}
}

// TestWarmServerRestart: the server restarts (SIGTERM, start) while the
// gateway holds warm connections, which Dovecot tells BYE and closes. The
// next login is served by a fresh dial, and nothing counts against the
// server.
func TestWarmServerRestart(t *testing.T) {
	d := startDovecot(t)
	g := startGateway(t, d.Addr, nil)
	loginTime(t, g, "127.0.0.41", "bob")
	loginTime(t, g, "127.0.0.42", "bob")
	warmReady(t, g, d.Addr, 2)
	d.Stop()
	d.Start()
	loginTime(t, g, "127.0.0.43", "bob")
	if line := d.WaitLog(t, "rip=127.0.0.43", 5*time.Second); !strings.Contains(line, "user=<bob>") {
		t.Errorf("after the restart, Dovecot's line %q, want bob's login from 127.0.0.43", line)
	}
	if strings.Contains(g.logs.String(), "backend failure") {
		t.Errorf("the restart counted against the server:\n%s", g.logs)
	}
}

// TestMeasureWarmDovecot measures what warm connections save a login against
// a stock Dovecot: one client logging in and out again and again, through a
// gateway with warm_connections = 0 and one with the default, taking turns.
// It logs the medians README quotes and holds the warm gateway to using its
// warm connections (at least half of the logins; sequential logins leave the
// fill time to finish) and each login to being Dovecot's login of the
// client's own address.
//
//	go test -count=1 -run TestMeasureWarmDovecot -v ./proxy/
func TestMeasureWarmDovecot(t *testing.T) {
	const rounds = 60
	d := startDovecot(t)
	cold := startGateway(t, d.Addr, func(c *conf.Config) { c.Backend.WarmConnections = 0 })
	warm := startGateway(t, d.Addr, nil)
	var coldTimes, warmTimes []time.Duration
	for i := range rounds {
		from := fmt.Sprintf("127.0.5.%d", 1+i%200)
		coldTimes = append(coldTimes, loginTime(t, cold, from, "bob"))
		warmTimes = append(warmTimes, loginTime(t, warm, from, "bob"))
	}
	hits := counterValue(t, warm.reg, "imapgw_backend_warm_total", "outcome", "hit")
	if hits < rounds/2 {
		t.Errorf("%v of %d logins took a warm connection, want at least half", hits, rounds)
	}
	if n := counterValue(t, cold.reg, "imapgw_backend_warm_total", "outcome", "hit"); n != 0 {
		t.Errorf("warm_connections = 0 took %v warm connections", n)
	}
	if n := strings.Count(d.Log(), "Login: user=<bob>"); n != 2*rounds {
		t.Errorf("Dovecot logged %d logins of bob, want %d", n, 2*rounds)
	}
	if line := d.WaitLog(t, "rip=127.0.5.1,", 5*time.Second); !strings.Contains(line, "user=<bob>") {
		t.Errorf("Dovecot's line %q, want bob from 127.0.5.1", line)
	}
	t.Logf("MEASURED: LOGIN to OK through the gateway against stock Dovecot, %d sequential logins each: "+
		"warm_connections = 0: median %v, 90th %v; default (2): median %v, 90th %v; %v warm hits",
		rounds, pct(coldTimes, 50), pct(coldTimes, 90), pct(warmTimes, 50), pct(warmTimes, 90), hits)
}

// pct is the p-th percentile of ds.
func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)-1)*p/100].Round(10 * time.Microsecond)
}
