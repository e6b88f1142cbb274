package proxy_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
	"github.com/imapgw/imapgw/internal/testbed"
)

// dovecotSettings are the ways README's "Fronting Dovecot" lets Dovecot treat
// failed logins behind the gateway: its defaults, its delays off for the
// gateway's connections only (passdb nodelay), or its penalty off for all.
var dovecotSettings = []struct {
	name string
	opts testbed.DovecotOptions
	fast bool // Dovecot adds no delay: the gateway's failure_delay is all
}{
	{"stock", testbed.DovecotOptions{}, false},
	{"nodelay for the gateway", testbed.DovecotOptions{NoDelayFrom: "127.0.0.1/32",
		Why: `README's per-gateway setting: the gateway's tarpit replaces Dovecot's`}, true},
	{"penalty and delay off", testbed.DovecotOptions{NoAuthPenalty: true, AuthFailureDelay: -1,
		Why: `README's global setting, for a Dovecot reached only through the gateway`}, true},
}

// sprayUsers are the accounts of issue 10's reproduction, and alice, the owner
// who logs in during the attack.
func sprayUsers() map[string]string {
	users := map[string]string{"alice": testPasswords["alice"]}
	for _, u := range []string{"carol", "dave", "erin", "frank", "grace"} {
		users[u] = u + "-secret"
	}
	return users
}

// TestSprayAgainstDovecot is issue 10's reproduction: one source tries five
// accounts with wrong passwords (failure_delay 200ms, spray_accounts 3,
// source_failures 4). Against every Dovecot setting, also its defaults where it
// answers the 2nd and 3rd guesses after 6 and 10 s, exactly spray_accounts
// guesses reach Dovecot, the source is banned for spraying, and alice, logging
// in from another address meanwhile, is not slowed. With Dovecot's delays off
// for the gateway each guess costs only the gateway's failure_delay.
func TestSprayAgainstDovecot(t *testing.T) {
	t.Parallel()
	for i, set := range dovecotSettings {
		t.Run(set.name, func(t *testing.T) {
			t.Parallel()
			opts := set.opts
			opts.Users = sprayUsers()
			d := testbed.StartDovecot(t, opts)
			g := startGateway(t, d.Addr, func(c *conf.Config) {
				policyConfig(t.TempDir())(c)
				c.Bans.SprayAccounts = 3
				c.Bans.SourceFailures = 4
			})
			attacker, owner := fmt.Sprintf("127.0.0.%d", 70+i), fmt.Sprintf("127.0.0.%d", 80+i)
			accounts := []string{"carol", "dave", "erin", "frank", "grace"}

			before := loginTime(t, g, owner, "alice")
			start := time.Now()
			res := make(chan int, 1)
			go func() {
				res <- attackAs(t, g, attacker, len(accounts), func(try int) string { return accounts[try] })
			}()
			during, tries := loginsUntil(t, g, owner, "alice", res)
			took := time.Since(start)
			if tries != 3 {
				t.Errorf("the attacker had %d logins answered, want spray_accounts = 3", tries)
			}
			waitAuthFailures(t, d, attacker, 3)
			expectRefused(t, attacker, g.implicit)
			logs := g.logs.String()
			if !strings.Contains(logs, "reason=spray") || strings.Count(logs, "outcome=failed") != 3 ||
				strings.Contains(logs, "outcome=error") || strings.Contains(logs, "outcome=timeout") {
				t.Errorf("want 3 failed logins and a spray ban, no backend errors; gateway log:\n%s", logs)
			}
			for _, dd := range during {
				if dd > before+ownerSlack {
					t.Errorf("alice's login took %v during the attack, %v before", dd, before)
				}
			}
			// Dovecot's answers alone (the auth lines' durations, taken before the
			// gateway's own failure_delay): with its defaults 2 s + (4 + 2) s +
			// (8 + 2) s, whole seconds on a 500 ms timer, so over 14 s; with its
			// delays off about 0.2 to 0.8 s each (measured), and far below the 12 s
			// the penalty alone would add to the 2nd and 3rd guesses.
			waited := backendWait(logs, attacker)
			if set.fast && waited > 4500*time.Millisecond {
				t.Errorf("Dovecot took %v to answer the 3 guesses with its delays off, want under 4.5 s", waited)
			}
			if !set.fast && waited < 14*time.Second {
				t.Errorf("Dovecot took %v to answer the 3 guesses with its defaults, want over 14 s: is its penalty on?", waited)
			}
			t.Logf("%s: %d guesses reached Dovecot, answered in %v in all; attack over after %v; alice's logins meanwhile: %v",
				set.name, d.AuthFailures(attacker), waited.Round(time.Millisecond), took.Round(time.Millisecond), during)
		})
	}
}

// backendWait sums the durations of src's failed logins in the auth log: the
// time the backend took to answer them (the line is written before the
// gateway's failure_delay).
func backendWait(logs, src string) time.Duration {
	var sum time.Duration
	for l := range strings.Lines(logs) {
		if !strings.Contains(l, "msg=auth") || !strings.Contains(l, " ip="+src+" ") || !strings.Contains(l, "outcome=failed") {
			continue
		}
		if _, d, ok := strings.Cut(l, "duration="); ok {
			if dd, err := time.ParseDuration(strings.TrimSpace(d)); err == nil {
				sum += dd
			}
		}
	}
	return sum
}
