package proxy_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
)

// TestMeasurePenalty measures, with the gateway's default policy (bans.allow
// emptied so that loopback sources count) against each Dovecot setting, a
// single-account attacker and a sprayer: how many guesses reach Dovecot before
// the ban, how long that takes, and how long the owner's logins from another
// address take meanwhile. It logs the numbers README quotes and holds them to
// the budget: no more guesses reach Dovecot than the policy allows (with
// Dovecot's slowest setting this runs about 3 minutes, in parallel).
//
//	go test -count=1 -run TestMeasurePenalty -v ./proxy/
func TestMeasurePenalty(t *testing.T) {
	def := conf.Default().Bans
	attacks := []struct {
		name   string
		user   func(try int) string
		budget int // guesses that may reach Dovecot before the ban
	}{
		{"one account", func(int) string { return "carol" }, def.SourceFailures},
		{"spray", func(try int) string { return fmt.Sprintf("user%d", try) }, def.SprayAccounts},
	}
	n := 0
	for _, set := range dovecotSettings {
		for _, atk := range attacks {
			n++
			attacker, owner := fmt.Sprintf("127.0.3.%d", n), fmt.Sprintf("127.0.4.%d", n)
			t.Run(set.name+"/"+atk.name, func(t *testing.T) {
				t.Parallel()
				measureAttack(t, set.opts, attacker, owner, atk.user, atk.budget)
			})
		}
	}
}

func measureAttack(t *testing.T, opts testbed.DovecotOptions, attacker, owner string, user func(int) string, budget int) {
	opts.Users = map[string]string{"alice": testPasswords["alice"], "carol": "carol-secret"}
	for i := range 20 {
		opts.Users[fmt.Sprintf("user%d", i)] = "secret"
	}
	d := testbed.StartDovecot(t, opts)
	g := startGateway(t, d.Addr, func(c *conf.Config) {
		def := conf.Default()
		c.Backend.ConnectTimeout, c.Backend.LoginTimeout = def.Backend.ConnectTimeout, def.Backend.LoginTimeout
		c.Limits = def.Limits
		c.Bans = def.Bans
		c.Bans.Allow = nil
		c.Server.StateDir = t.TempDir()
	})
	before := loginTime(t, g, owner, "alice")
	start := time.Now()
	res := make(chan int, 1)
	go func() { res <- attackAs(t, g, attacker, 20, user) }()
	during, answered := loginsUntil(t, g, owner, "alice", res)
	took := time.Since(start)
	if len(during) == 0 { // the attack ended before the first tick
		during = append(during, loginTime(t, g, owner, "alice"))
	}
	waitAuthFailures(t, d, attacker, answered)
	slices.Sort(during)
	t.Logf("%s: guesses answered %d, reached Dovecot %d, banned after %v (%s); each guess answered after %s; "+
		"owner's login before %v, during (%d logins) min %v median %v max %v",
		t.Name(), answered, d.AuthFailures(attacker), took.Round(100*time.Millisecond), banReason(g.logs.String()),
		guessTimes(g.logs.String(), attacker), before.Round(time.Millisecond), len(during),
		during[0].Round(time.Millisecond), during[len(during)/2].Round(time.Millisecond), during[len(during)-1].Round(time.Millisecond))
	if n := d.AuthFailures(attacker); n > budget {
		t.Errorf("%d guesses reached Dovecot, want at most %d", n, budget)
	}
	if r := banReason(g.logs.String()); r == "no ban" {
		t.Errorf("the attacker was never banned")
	}
	// The owner comes from another address: neither the gateway's policy nor
	// Dovecot's penalty may slow it (measured: a median near 130 ms).
	if m := during[len(during)/2]; m > time.Second {
		t.Errorf("owner's median login during the attack took %v, want under 1s", m)
	}
}

// guessTimes lists the duration of each failed login from src in the auth log.
func guessTimes(logs, src string) string {
	var out []string
	for l := range strings.Lines(logs) {
		if strings.Contains(l, "msg=auth") && strings.Contains(l, " ip="+src+" ") && strings.Contains(l, "outcome=failed") {
			if _, d, ok := strings.Cut(l, "duration="); ok {
				if dd, err := time.ParseDuration(strings.TrimSpace(d)); err == nil {
					out = append(out, dd.Round(100*time.Millisecond).String())
				}
			}
		}
	}
	return strings.Join(out, " ")
}

// banReason is the reason of the first ban in the log.
func banReason(logs string) string {
	for l := range strings.Lines(logs) {
		if strings.Contains(l, "msg=\"source banned\"") {
			if _, r, ok := strings.Cut(l, " reason="); ok {
				r, _, _ = strings.Cut(r, " ")
				return r
			}
		}
	}
	return "no ban"
}
