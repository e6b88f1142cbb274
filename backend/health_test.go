package backend

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/prometheus/client_golang/prometheus"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runPool starts Run until the test ends.
func runPool(t *testing.T, p *Pool) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// TestHealthChecks: a server that accepts TCP and never greets is marked down
// after fall checks, one that greets stays up with its capabilities, and the
// silent one comes back after rise good checks once it greets.
func TestHealthChecks(t *testing.T) {
	good := newGreeter(t, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN ID] ready")
	silent := newGreeter(t, "")
	b := backendConf(conf.BackendServer{Name: "good", Address: good.addr(), Weight: 100},
		conf.BackendServer{Name: "silent", Address: silent.addr(), Weight: 100})
	b.CheckInterval, b.CheckTimeout = conf.D(50*time.Millisecond), conf.D(200*time.Millisecond)
	reg := prometheus.NewRegistry()
	p, logs := newPoolReg(t, b, nil, reg)
	runPool(t, p)

	waitFor(t, 3*time.Second, "silent marked down", func() bool { return statusOf(p, "silent").State == "down" })
	st := statusOf(p, "silent")
	if !strings.Contains(st.LastError, "timeout") || st.LastCheck.IsZero() {
		t.Errorf("silent: %+v, want a timeout error", st)
	}
	if !strings.Contains(logs.String(), "backend down") || !strings.Contains(logs.String(), "backend=silent") {
		t.Errorf("no state-change log line:\n%s", logs)
	}
	g := statusOf(p, "good")
	if g.State != "up" || g.LastError != "" || strings.Join(g.Capabilities, " ") != "IMAP4rev1 AUTH=PLAIN ID" {
		t.Errorf("good: %+v", g)
	}
	if _, cmds := good.seen(); len(cmds) == 0 || cmds[0] != "LOGOUT" {
		t.Errorf("the check sent %q, want LOGOUT", cmds)
	}
	for _, u := range users(50) {
		if got := first(p, u); got != "good" {
			t.Fatalf("%s routed to %s while silent is down", u, got)
		}
	}
	if value(p.m.up.WithLabelValues("silent")) != 0 || value(p.m.up.WithLabelValues("good")) != 1 {
		t.Error("imapgw_backend_up wrong")
	}
	if series(t, reg, "imapgw_backend_check_duration_seconds") != 2 {
		t.Error("imapgw_backend_check_duration_seconds not observed for both")
	}

	silent.setGreeting("* OK back")
	waitFor(t, 3*time.Second, "silent up again", func() bool { return statusOf(p, "silent").State == "up" })
	if !strings.Contains(logs.String(), "backend up") {
		t.Errorf("no log line for the way back up:\n%s", logs)
	}
}

// TestFallRise counts strikes from checks and the data path on the injected
// clock, without sockets.
func TestFallRise(t *testing.T) {
	b := backendConf(srv("a", 100), srv("b", 100))
	b.Fall, b.Rise = 3, 2
	p, _ := newPool(t, b, newClock())
	a := p.byName["a"]
	fail := func() { p.recordCheck(a, nil, context.DeadlineExceeded) }
	ok := func() { p.recordCheck(a, []string{"IMAP4rev1"}, nil) }
	steps := []struct {
		do   func()
		want string
	}{
		{fail, "up"}, {fail, "up"}, {ok, "up"}, // a good check resets the count
		{fail, "up"}, {func() { p.DialFailed(a, context.DeadlineExceeded) }, "up"}, {fail, "down"},
		{ok, "down"}, {fail, "down"}, {ok, "down"}, {ok, "up"},
	}
	for i, s := range steps {
		s.do()
		if got := statusOf(p, "a").State; got != s.want {
			t.Fatalf("step %d: state %s, want %s", i, got, s.want)
		}
	}
}
