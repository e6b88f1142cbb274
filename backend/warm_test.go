package backend

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// warmPool is a pool of one greeter server "a" keeping want warm connections.
func warmPool(t *testing.T, want int) (*Pool, *greeter, *clock) {
	t.Helper()
	g := newGreeter(t, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN ID] ready")
	b := backendConf(conf.BackendServer{Name: "a", Address: g.addr(), Weight: 100})
	b.WarmConnections = want
	clk := newClock()
	p, _ := newPoolReg(t, b, clk, prometheus.NewRegistry())
	t.Cleanup(p.Close)
	return p, g, clk
}

func idleWarm(s *Server) int {
	s.warm.mu.Lock()
	defer s.warm.mu.Unlock()
	return len(s.warm.idle)
}

func idleConns(s *Server) []*Conn {
	s.warm.mu.Lock()
	defer s.warm.mu.Unlock()
	var cs []*Conn
	for _, wc := range s.warm.idle {
		cs = append(cs, wc.c)
	}
	return cs
}

func warmCount(p *Pool, outcome string) float64 {
	var m dto.Metric
	if err := p.m.warm.WithLabelValues("a", outcome).Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// usable checks that c is a live, greeted IMAP connection by asking it for
// its capabilities.
func usable(t *testing.T, c *Conn) {
	t.Helper()
	c.Conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Capability(); err != nil {
		t.Fatalf("warm connection: CAPABILITY: %v", err)
	}
}

// TestWarmFill: a first login finds nothing and dials nothing more; logins
// that follow each other fill the set to warm_connections, take from it
// (greeted, with the greeting's capabilities, no deadline) and top it up.
func TestWarmFill(t *testing.T) {
	p, g, clk := warmPool(t, 2)
	s := p.byName["a"]
	if c := p.TakeWarm(s); c != nil {
		t.Fatal("the first login found a warm connection")
	}
	time.Sleep(50 * time.Millisecond)
	if n := g.accepted(); n != 0 {
		t.Fatalf("a lone login made %d warm connections, want none", n)
	}
	clk.Add(time.Second)
	if c := p.TakeWarm(s); c != nil {
		t.Fatal("the second login found a warm connection")
	}
	waitFor(t, 5*time.Second, "2 warm connections", func() bool { return idleWarm(s) == 2 })
	c := p.TakeWarm(s)
	if c == nil {
		t.Fatal("no warm connection after the fill")
	}
	if got := strings.Join(c.Caps, " "); got != "IMAP4rev1 AUTH=PLAIN ID" {
		t.Errorf("warm connection's capabilities %q", got)
	}
	if dl := c.Conn.SetReadDeadline(time.Time{}); dl != nil {
		t.Fatal(dl)
	}
	usable(t, c)
	c.Close()
	waitFor(t, 5*time.Second, "topped up to 2", func() bool { return idleWarm(s) == 2 })
	if hit, miss := warmCount(p, "hit"), warmCount(p, "miss"); hit != 1 || miss != 2 {
		t.Errorf("imapgw_backend_warm_total hit %v miss %v, want 1 and 2", hit, miss)
	}
}

// fill makes s hold want warm connections.
func fill(t *testing.T, p *Pool, s *Server, clk *clock) {
	t.Helper()
	p.TakeWarm(s)
	clk.Add(time.Millisecond)
	p.TakeWarm(s)
	waitFor(t, 5*time.Second, "warm connections", func() bool { return idleWarm(s) == s.warm.want })
}

// TestWarmStaleAndExpired: connections the server closed are not handed out,
// and those that waited longer than warmMaxAge are closed by the sweep.
func TestWarmStaleAndExpired(t *testing.T) {
	p, g, clk := warmPool(t, 2)
	s := p.byName["a"]
	fill(t, p, s, clk)
	g.mu.Lock()
	for _, c := range g.conns {
		c.Close() // the server drops every connection (a restart, its own timeout)
	}
	g.mu.Unlock()
	time.Sleep(50 * time.Millisecond) // the FINs arrive
	clk.Add(2 * warmCheckAge)
	if c := p.TakeWarm(s); c != nil {
		t.Error("a connection the server closed was handed out")
	}
	if n := warmCount(p, "stale"); n != 2 {
		t.Errorf("stale = %v, want 2", n)
	}

	waitFor(t, 5*time.Second, "refilled", func() bool { return idleWarm(s) == 2 })
	kept := idleConns(s)
	clk.Add(warmMaxAge + time.Second)
	p.sweepWarm(clk.Now())
	if n := idleWarm(s); n != 0 {
		t.Errorf("%d warm connections left after warmMaxAge", n)
	}
	if n := warmCount(p, "expired"); n != 2 {
		t.Errorf("expired = %v, want 2", n)
	}
	for _, c := range kept {
		if _, err := c.Conn.Write([]byte("x NOOP\r\n")); !errors.Is(err, net.ErrClosed) {
			t.Errorf("expired warm connection still open: write %v", err)
		}
	}
	// A login long after the last one finds none and starts no fill.
	if c := p.TakeWarm(s); c != nil || s.warm.filling {
		t.Errorf("a login after a long lull: %v, filling %v; want none and no fill", c, s.warm.filling)
	}
}

// TestWarmNotUsable: a server that is down, draining or gone hands out no
// warm connection, and the sweep closes what it held.
func TestWarmNotUsable(t *testing.T) {
	p, _, clk := warmPool(t, 2)
	s := p.byName["a"]
	fill(t, p, s, clk)
	if err := p.Drain("a", false); err != nil {
		t.Fatal(err)
	}
	if c := p.TakeWarm(s); c != nil {
		t.Error("a draining server handed out a warm connection")
	}
	p.sweepWarm(clk.Now())
	if n := warmCount(p, "unused"); n != 2 || idleWarm(s) != 0 {
		t.Errorf("after the sweep of a draining server: unused %v, %d left; want 2 and 0", n, idleWarm(s))
	}
}

// TestWarmClosed: a reload closes the old servers' connections (their
// settings may have changed) and Close closes the rest and fills no more.
func TestWarmClosed(t *testing.T) {
	p, g, clk := warmPool(t, 2)
	old := p.byName["a"]
	fill(t, p, old, clk)
	oldConns := idleConns(old)
	cfg := p.cfg
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	for _, c := range oldConns {
		if _, err := c.Conn.Write([]byte("x NOOP\r\n")); !errors.Is(err, net.ErrClosed) {
			t.Errorf("a warm connection of the replaced server is open: write %v", err)
		}
	}
	s := p.byName["a"]
	if s == old {
		t.Fatal("the reload kept the Server")
	}
	fill(t, p, s, clk)
	p.Close()
	if n := idleWarm(s); n != 0 {
		t.Errorf("%d warm connections after Close", n)
	}
	if after := g.accepted(); after != 4 {
		t.Fatalf("the greeter accepted %d connections, want 4 (2 warm before the reload, 2 after)", after)
	}
	before := g.accepted()
	clk.Add(time.Millisecond)
	if c := p.TakeWarm(s); c != nil {
		t.Error("a closed pool handed out a warm connection")
	}
	time.Sleep(50 * time.Millisecond)
	if after := g.accepted(); after != before {
		t.Errorf("a closed pool dialed %d more connections", after-before)
	}
}

// TestWarmOnlyWhereItFits: no set with warm_connections = 0, nor for a
// server whose client address goes in a PROXY header (written at connect).
func TestWarmOnlyWhereItFits(t *testing.T) {
	cases := []struct {
		want     int
		clientIP string
		keeps    bool
	}{
		{2, conf.ClientIPID, true},
		{2, conf.ClientIPNone, true},
		{2, conf.ClientIPProxyV2, false},
		{2, conf.ClientIPProxyV1, false},
		{0, conf.ClientIPID, false},
	}
	for _, c := range cases {
		b := backendConf(conf.BackendServer{Name: "a", Address: "127.0.0.1:1", Weight: 100, ClientIP: c.clientIP})
		b.WarmConnections = c.want
		p, _ := newPool(t, b, nil)
		s := p.byName["a"]
		if got := s.warm != nil; got != c.keeps {
			t.Errorf("warm_connections %d, client_ip %s: keeps warm connections %v, want %v", c.want, c.clientIP, got, c.keeps)
		}
		if s.warm == nil && p.TakeWarm(s) != nil {
			t.Errorf("warm_connections %d, client_ip %s: TakeWarm returned a connection", c.want, c.clientIP)
		}
		p.Close()
	}
}

// TestWarmDialFails: a warm dial that fails is counted and ends the fill, and
// is no strike against the server: its health stays the checks' and the
// logins' own dials' to judge.
func TestWarmDialFails(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // refused from now on
	b := backendConf(conf.BackendServer{Name: "a", Address: addr, Weight: 100})
	clk := newClock()
	p, _ := newPoolReg(t, b, clk, prometheus.NewRegistry())
	defer p.Close()
	s := p.byName["a"]
	p.TakeWarm(s)
	clk.Add(time.Millisecond)
	p.TakeWarm(s)
	waitFor(t, 5*time.Second, "the failed fill counted", func() bool { return warmCount(p, "failed") == 1 })
	if st := statusOf(p, "a"); st.LastError != "" || st.State != "up" {
		t.Errorf("after a failed warm dial the server is %s with last error %q, want up and none", st.State, st.LastError)
	}
	s.warm.mu.Lock()
	filling := s.warm.filling
	s.warm.mu.Unlock()
	if filling {
		t.Error("the fill goes on after a failed dial")
	}
}
