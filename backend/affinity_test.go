package backend

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
)

// countingStore is an AffinityStore that pins nothing and counts the calls.
type countingStore struct{ picks, reports atomic.Int32 }

func (c *countingStore) Pick(context.Context, string, string, time.Duration) (Pin, error) {
	c.picks.Add(1)
	return Pin{}, nil
}

func (c *countingStore) Report(context.Context, string, int, string, time.Duration) error {
	c.reports.Add(1)
	return nil
}

func (c *countingStore) Move(context.Context, string, string, time.Duration) error { return nil }

// TestSharedPinningNeedsAChoice: with one server there is nothing to pin and
// a login costs the fleet's store nothing; with two, each route asks it and
// each session start and end is reported; a reload from one to two servers
// starts asking.
func TestSharedPinningNeedsAChoice(t *testing.T) {
	one := backendConf(conf.BackendServer{Name: "a", Address: "127.0.0.1:1", Weight: 100})
	two := backendConf(conf.BackendServer{Name: "a", Address: "127.0.0.1:1", Weight: 100},
		conf.BackendServer{Name: "b", Address: "127.0.0.1:2", Weight: 100})
	store := &countingStore{}
	p, err := New(one, Options{Affinity: store, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	login := func() {
		order, _ := p.Route("alice")
		if len(order) == 0 {
			t.Fatal("no route")
		}
		p.SessionStarted("alice", order[0], func(string) {})()
	}
	login()
	if n := store.picks.Load(); n != 0 {
		t.Errorf("one server: %d picks, want 0", n)
	}
	p.syncMu.Lock()
	dirty := len(p.dirty)
	p.syncMu.Unlock()
	if dirty != 0 {
		t.Errorf("one server: %d users queued for the store, want 0", dirty)
	}
	if err := p.Reload(two); err != nil {
		t.Fatal(err)
	}
	login()
	if n := store.picks.Load(); n != 1 {
		t.Errorf("two servers: %d picks, want 1", n)
	}
	p.syncMu.Lock()
	dirty = len(p.dirty)
	p.syncMu.Unlock()
	if dirty != 1 {
		t.Errorf("two servers: %d users queued for the store, want 1", dirty)
	}
}
