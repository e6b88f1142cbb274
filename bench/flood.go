package main

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/imapgw/imapgw/bench/loadgen"
)

// floodWorkers is how many connections the banned source keeps in flight.
const floodWorkers = 8

// flood measures imapgw against a banned source: what a refusal costs next to
// a full handshake, how many it refuses per second, and what the flood does to
// a legitimate user's logins. The other proxies cannot tell a failed login, so
// they have nothing to ban.
func (b *bench) flood(g peer) error {
	if err := g.start(); err != nil {
		return fmt.Errorf("starting %s: %w", g.name(), err)
	}
	defer g.stop()
	t := b.target(g)
	loadgen.Loop(8, b.opt.warmup, t.LoginCycle)
	if err := b.ban(g); err != nil {
		return err
	}
	// Without the flood: the legitimate user's logins, then bare handshakes.
	// Each window starts once imapgw has settled (kerneldrop.go): the logins'
	// delayed work would otherwise be charged to the handshakes.
	var base, hs loadgen.Stats
	b.settle(g, "flood base")
	baseCPU := b.withCPU(g, "flood-base", func() { base = loadgen.Loop(8, b.opt.dur, t.LoginCycle) })
	b.recordLogins(g.name(), "flood.base", base, baseCPU, 1)
	b.settle(g, "flood handshake")
	hsCPU := b.withCPU(g, "flood-handshake", func() { hs = loadgen.Loop(8, b.opt.dur, t.Handshake) })
	b.recordRate("flood.handshake", hs.Rate(), hsCPU, hs.Ops)

	// The flood alone: refusals per second and their cost.
	var alone loadgen.FloodStats
	b.settle(g, "flood refusals")
	aloneCPU := b.withCPU(g, "flood-refusals", func() {
		alone = loadgen.Flood(g.addr(), bannedSource, floodWorkers, b.opt.dur)
	})
	b.recordRate("flood.refusals", alone.Rate(), aloneCPU, alone.Refused)
	b.floodErrors("flood alone", alone)

	// Both at once.
	b.settle(g, "flood during")
	mixed := b.underFlood(g, t, "flood.during", func() loadgen.FloodStats {
		return loadgen.Flood(g.addr(), bannedSource, floodWorkers, b.opt.dur)
	})
	b.res.add(g.name(), "flood.refusals_during", mixed.Rate())
	b.floodErrors("flood with legitimate load", mixed)
	b.logf("flood: %.0f refusals/s alone, %.0f during legitimate load", alone.Rate(), mixed.Rate())
	return nil
}

// recordRate keeps a rate and the peer's CPU per operation.
func (b *bench) recordRate(key string, rate float64, cpu time.Duration, ops int) {
	b.res.add(nameImapgw, key, rate)
	if ops > 0 {
		b.res.add(nameImapgw, key+".cpu", float64(cpu.Nanoseconds())/1e3/float64(ops))
	}
	b.logf("%-8s %-20s %9.0f/s  %8.2f µs CPU each", nameImapgw, key, rate, float64(cpu.Nanoseconds())/1e3/float64(max(ops, 1)))
}

func (b *bench) floodErrors(what string, f loadgen.FloodStats) {
	if f.Errors > 0 {
		b.res.note("imapgw %s: %d connections not refused or failed, first: %v", what, f.Errors, f.FirstErr)
	}
}

// sourceFailures is bans.source_failures in the bench's imapgw config: above
// the logins in flight per source at 64 clients (issue 11 counts pending ones).
const sourceFailures = 16

// underFlood runs the legitimate user's logins (8 clients) while flood runs,
// records them under key with imapgw's CPU over both, and returns the flood's
// outcome.
func (b *bench) underFlood(g peer, t *loadgen.Target, key string, flood func() loadgen.FloodStats) loadgen.FloodStats {
	var (
		during loadgen.Stats
		mixed  loadgen.FloodStats
	)
	cpu := b.withCPU(g, key, func() {
		done := make(chan loadgen.FloodStats)
		go func() { done <- flood() }()
		during = loadgen.Loop(8, b.opt.dur, t.LoginCycle)
		mixed = <-done
	})
	b.recordLogins(g.name(), key, during, cpu, 1)
	return mixed
}

// ban gets bannedSource banned the way an attacker does, then checks that a
// connection from there is refused before any TLS.
func (b *bench) ban(g peer) error {
	if err := b.failLogins(g); err != nil {
		return err
	}
	if err := loadgen.Refused(g.addr(), bannedSource); err != nil {
		return fmt.Errorf("%v after %d failed logins: %w", bannedSource, sourceFailures, err)
	}
	return nil
}

// failLogins has bannedSource fail sourceFailures logins
// (bans.source_failures, no delay), each on its own connection.
func (b *bench) failLogins(g peer) error {
	at := b.target(g, bannedSource)
	for i := range sourceFailures {
		s, err := at.Open()
		if err != nil {
			return fmt.Errorf("banning %v: connection %d: %w", bannedSource, i+1, err)
		}
		err = s.Login(attackerUser, "wrong-"+strconv.Itoa(i))
		s.Close()
		if err == nil {
			return errors.New("banning: a wrong password was accepted")
		}
	}
	return nil
}
