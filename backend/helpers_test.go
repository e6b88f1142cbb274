package backend

import (
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
	"github.com/prometheus/client_golang/prometheus"
)

// clock is an injected time source the test moves by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// srv is a long-form server entry.
func srv(name string, weight int) conf.BackendServer {
	return conf.BackendServer{Name: name, Address: "127.0.0.1:1", Weight: weight}
}

// backendConf is the defaults with servers in the long form.
func backendConf(servers ...conf.BackendServer) conf.Backend {
	b := conf.Default().Backend
	b.Servers = nil
	b.Server = servers
	return b
}

// newPool builds a pool on clk (nil: time.Now) logging into the returned buffer.
func newPool(t testing.TB, b conf.Backend, clk *clock) (*Pool, *testbed.LogBuffer) {
	t.Helper()
	return newPoolReg(t, b, clk, nil)
}

// newPoolReg is newPool registering its metrics in reg.
func newPoolReg(t testing.TB, b conf.Backend, clk *clock, reg prometheus.Registerer) (*Pool, *testbed.LogBuffer) {
	t.Helper()
	logs := &testbed.LogBuffer{}
	o := Options{Registerer: reg, Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	if clk != nil {
		o.Now = clk.Now
	}
	p, err := New(b, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p, logs
}

// first is where user's next login goes.
func first(p *Pool, user string) string {
	order, _ := p.Route(user)
	if len(order) == 0 {
		return ""
	}
	return order[0].Name
}

func users(n int) []string {
	u := make([]string, n)
	for i := range u {
		u[i] = fmt.Sprintf("user%d@example.com", i)
	}
	return u
}

// markDown strikes s until it is down.
func markDown(p *Pool, name string) {
	s := p.byName[name]
	for range p.cfg.Fall {
		p.DialFailed(s, fmt.Errorf("test: %s refused", name))
	}
}
