package backend

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// fakeSession stands for proxy's relayed session: its closeFn records the
// reason and ends the session, as closing both sockets would.
type fakeSession struct {
	mu     sync.Mutex
	reason []string
	end    func()
}

func start(p *Pool, user, server string) *fakeSession {
	fs := &fakeSession{}
	fs.end = p.SessionStarted(user, p.byName[server], func(reason string) {
		fs.mu.Lock()
		fs.reason = append(fs.reason, reason)
		fs.mu.Unlock()
		fs.end()
	})
	return fs
}

func (fs *fakeSession) closed() []string {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return slices.Clone(fs.reason)
}

func TestKickMoveDrain(t *testing.T) {
	clk := newClock()
	reg := prometheus.NewRegistry()
	b := backendConf(srv("a", 100), srv("b", 100))
	p, err := New(b, Options{Now: clk.Now, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	a1, a2 := start(p, "Alice", "a"), start(p, "alice", "a")
	bob := start(p, "bob", "a")
	if got := value(p.m.sessions.WithLabelValues("a")); got != 3 {
		t.Errorf("imapgw_backend_sessions{a} = %v, want 3", got)
	}
	if w := p.Where("ALICE"); w.Sessions != 2 || w.Pinned != "a" || w.Backend != "a" || w.Reason != "affinity" {
		t.Errorf("Where = %+v", w)
	}

	if n := p.Kick("ALICE"); n != 2 {
		t.Errorf("Kick = %d, want 2", n)
	}
	for _, fs := range []*fakeSession{a1, a2} {
		if r := fs.closed(); len(r) != 1 || !strings.Contains(r[0], "kicked") {
			t.Errorf("kicked session closed with %q", r)
		}
	}
	if n := p.Kick("alice"); n != 0 {
		t.Errorf("second Kick = %d, want 0", n)
	}
	if w := p.Where("alice"); w.Sessions != 0 || w.Pinned != "a" || !w.Until.Equal(clk.Now().Add(15*time.Minute)) {
		t.Errorf("after kick, Where = %+v: want the affinity for 15m", w)
	}

	if err := p.Move("bob", "b"); err != nil {
		t.Fatal(err)
	}
	if r := bob.closed(); len(r) != 1 || !strings.Contains(r[0], "moved to backend b") {
		t.Errorf("moved session closed with %q", r)
	}
	if w := p.Where("bob"); w.Backend != "b" || w.Reason != "moved" || w.Pinned != "b" {
		t.Errorf("after Move, Where = %+v", w)
	}
	if err := p.Move("bob", "nope"); !errors.Is(err, ErrUnknownServer) {
		t.Errorf("Move to an unknown server = %v", err)
	}

	c1, c2 := start(p, "carol", "b"), start(p, "dave", "a")
	if err := p.Drain("b", false); err != nil {
		t.Fatal(err)
	}
	if len(c1.closed()) != 0 {
		t.Errorf("drain without kick closed a session")
	}
	if w := p.Where("carol"); w.Backend != "a" || w.Sessions != 1 {
		t.Errorf("carol with a session on draining b: Where = %+v, want a", w)
	}
	if err := p.Drain("b", true); err != nil {
		t.Fatal(err)
	}
	if r := c1.closed(); len(r) != 1 || !strings.Contains(r[0], "drained") || len(c2.closed()) != 0 {
		t.Errorf("drain with kick: b's session closed with %q, a's with %q", r, c2.closed())
	}
	if st := statusOf(p, "b"); st.State != "draining" || st.Sessions != 0 {
		t.Errorf("Servers()[b] = %+v", st)
	}
	if err := p.Undrain("b"); err != nil {
		t.Fatal(err)
	}
	if st := statusOf(p, "b"); st.State != "up" {
		t.Errorf("after Undrain, Servers()[b] = %+v", st)
	}
	if p.Drain("x", false) == nil || p.Undrain("x") == nil {
		t.Error("Drain/Undrain of an unknown server succeeded")
	}
	if got := value(p.m.sessions.WithLabelValues("a")); got != 1 {
		t.Errorf("imapgw_backend_sessions{a} = %v, want 1 (dave)", got)
	}

	clk.Add(16 * time.Minute)
	p.sweep(clk.Now())
	p.mu.RLock()
	left := len(p.users)
	p.mu.RUnlock()
	if left != 1 {
		t.Errorf("after the affinity expired, %d users tracked, want 1 (dave, still connected)", left)
	}
}

// TestReloadKeepsSessions: removing a server keeps its sessions until they
// end (Kick still closes them); reweighting keeps health, drain and sessions.
func TestReloadKeepsSessions(t *testing.T) {
	reg := prometheus.NewRegistry()
	p, err := New(backendConf(srv("a", 100), srv("b", 100), srv("c", 100)), Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	onC, onB := start(p, "alice", "c"), start(p, "bob", "b")
	markDown(p, "a")
	if err := p.Drain("b", false); err != nil {
		t.Fatal(err)
	}
	if err := p.Reload(backendConf(srv("a", 300), srv("b", 50), srv("d", 100))); err != nil {
		t.Fatal(err)
	}
	got := map[string]Status{}
	for _, st := range p.Servers() {
		got[st.Name] = st
	}
	if len(got) != 3 || got["a"].State != "down" || got["a"].Weight != 300 || got["b"].State != "draining" || got["b"].Sessions != 1 || got["d"].State != "up" {
		t.Errorf("after reload, Servers() = %+v", got)
	}
	if w := p.Where("alice"); w.Backend != "d" || w.Sessions != 1 {
		t.Errorf("alice, with a session on removed c: Where = %+v, want d (the only one up and undrained)", w)
	}
	if n := p.Kick("alice"); n != 1 || len(onC.closed()) != 1 {
		t.Errorf("Kick of a session on a removed server = %d, closed %q", n, onC.closed())
	}
	if value(p.m.up.WithLabelValues("d")) != 1 {
		t.Error("imapgw_backend_up{d} != 1")
	}
	if n := series(t, reg, "imapgw_backend_sessions"); n != 3 {
		t.Errorf("imapgw_backend_sessions has %d series, want 3 (c's went with its last session)", n)
	}
	onB.end()
	onB.end() // twice: harmless
	if st := statusOf(p, "b"); st.Sessions != 0 {
		t.Errorf("b has %d sessions after the end", st.Sessions)
	}
	if err := p.Reload(backendConf()); err == nil {
		t.Error("Reload with no servers succeeded")
	}
	if len(p.Servers()) != 3 {
		t.Error("a failed Reload changed the pool")
	}
}

func statusOf(p *Pool, name string) Status {
	for _, st := range p.Servers() {
		if st.Name == name {
			return st
		}
	}
	return Status{}
}

// value reads a gauge or counter.
func value(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	if d.Gauge != nil {
		return d.Gauge.GetValue()
	}
	return d.Counter.GetValue()
}

// series counts the label sets of a metric family in reg.
func series(t *testing.T, reg *prometheus.Registry, name string) int {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name {
			return len(f.Metric)
		}
	}
	return 0
}
