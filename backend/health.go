package backend

import (
	"context"
	"net/netip"
	"sync"
	"time"
)

// Run checks every server at once and then each check_interval, re-reads the
// map file when it changes, forgets expired affinities and closes warm
// connections that waited too long, until ctx is done; then it closes the pool.
// A Reload makes it check at once (new servers) at the new interval.
func (p *Pool) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	defer p.Close()
	if p.store != nil {
		wg.Go(func() { p.syncLoop(ctx) })
	}
	interval := p.interval()
	t := time.NewTicker(interval)
	defer t.Stop()
	p.checkAll(ctx, &wg)
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
			if iv := p.interval(); iv != interval {
				interval = iv
				t.Reset(iv)
			}
			p.checkAll(ctx, &wg)
		case <-t.C:
			p.checkAll(ctx, &wg)
			p.reloadMap()
			p.sweep(p.now())
			p.sweepWarm(p.now())
		}
	}
}

func (p *Pool) interval() time.Duration {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.cfg.CheckInterval.Duration
}

// checkAll starts a check of every server that has none in flight: a server
// that hangs until check_timeout delays nobody else's.
func (p *Pool) checkAll(ctx context.Context, wg *sync.WaitGroup) {
	p.mu.Lock()
	timeout := p.cfg.CheckTimeout.Duration
	var due []*Server
	for _, s := range p.servers {
		if !s.state.checking {
			s.state.checking = true
			due = append(due, s)
		}
	}
	p.mu.Unlock()
	for _, s := range due {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.check(ctx, s, timeout)
		}()
	}
}

// check dials s as a login would (its TLS mode, a PROXY header when
// configured), reads a * OK greeting, completes STARTTLS when configured,
// learns the pre-login capabilities and sends LOGOUT.
func (p *Pool) check(ctx context.Context, s *Server, timeout time.Duration) {
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := s.Dial(cctx, netip.AddrPort{})
	var caps []string
	if err == nil {
		caps = c.Caps
		dl, _ := cctx.Deadline()
		c.SetDeadline(dl)
		c.logout()
		c.Close()
	}
	if ctx.Err() != nil { // shutting down: says nothing about s
		p.mu.Lock()
		s.state.checking = false
		p.mu.Unlock()
		return
	}
	p.m.check.WithLabelValues(s.Name).Observe(time.Since(start).Seconds())
	p.recordCheck(s, caps, err)
}

// recordCheck counts a check's result toward rise or fall.
func (p *Pool) recordCheck(s *Server, caps []string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := s.state
	st.checking = false
	if st.removed {
		return
	}
	st.lastCheck = p.now()
	if err != nil {
		p.strike(st, err, "check")
		return
	}
	st.lastErr, st.caps, st.fails = "", caps, 0
	st.goods++
	if !st.up && st.goods >= p.cfg.Rise {
		st.up = true
		p.m.up.WithLabelValues(st.name).Set(1)
		p.log.Info("backend up", "backend", st.name, "good_checks", st.goods)
	}
}

// DialFailed records a failed dial (or greeting) on the data path: a strike
// that counts toward backend.fall like a failed check.
func (p *Pool) DialFailed(s *Server, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !s.state.removed {
		p.strike(s.state, err, "login dial")
	}
}

// strike counts one failure toward fall. p.mu is held.
func (p *Pool) strike(st *serverState, err error, by string) {
	st.lastErr = err.Error()
	st.goods = 0
	st.fails++
	if st.up && st.fails >= p.cfg.Fall {
		st.up = false
		p.m.up.WithLabelValues(st.name).Set(0)
		p.log.Warn("backend down", "backend", st.name, "failures", st.fails, "last", by, "error", st.lastErr)
		return
	}
	p.log.Debug("backend failure", "backend", st.name, "by", by, "error", st.lastErr)
}

// reloadMap re-reads the map file when its stamp changed. A bad new version
// is logged and the old map kept.
func (p *Pool) reloadMap() {
	p.mu.RLock()
	name, old := p.cfg.MapFile, p.mapStamp
	known := namesOf(p.servers)
	p.mu.RUnlock()
	if name == "" {
		return
	}
	if st, err := stat(name); err == nil && st.mod.Equal(old.mod) && st.size == old.size || err != nil && old == (fileStamp{}) {
		return // unchanged, or still missing
	}
	m, st, err := loadMap(name, known)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cfg.MapFile != name || p.mapStamp != old { // a Reload came in between
		return
	}
	p.mapStamp = st // a bad version is reported once, not every tick
	if err != nil {
		p.log.Warn("backend map file not reloaded; keeping the previous map", "error", err)
		return
	}
	p.umap = m
	p.log.Info("backend map file reloaded", "file", name, "users", len(m.users), "domains", len(m.domains))
}
