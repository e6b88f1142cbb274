package limiter

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/imapgw/imapgw/conf"
)

// TestTryReservesSourceBudget: 50 logins in flight from one source at once get
// at most source_failures reservations; the others are refused with a failure's
// delay. Failing the reserved ones bans the source.
func TestTryReservesSourceBudget(t *testing.T) {
	l, _ := newTest(t, func(b *conf.Bans, _ *conf.Limits) { b.SourceFailures = 5 }, Options{})
	src := addr("192.0.2.7")
	var flying []*Attempt
	for i := range 50 {
		a, err := l.TryAt(t0, src, "alice")
		if err == nil {
			flying = append(flying, a)
			continue
		}
		var r *Refusal
		if !errors.As(err, &r) || !errors.Is(err, ErrRefused) || errors.Is(err, ErrBanned) || r.Delay != 2*time.Second {
			t.Fatalf("TryAt #%d = %v, want a *Refusal (not banned) with Delay 2s", i+1, err)
		}
	}
	if len(flying) != 5 {
		t.Fatalf("TryAt ×50 in flight reserved %d attempts, want source_failures = 5", len(flying))
	}
	if got := l.SourceAt(t0, src).InFlight; got != 5 {
		t.Errorf("SourceAt().InFlight = %d, want 5", got)
	}
	var v Verdict
	for i, a := range flying {
		v = a.FailedAt(t0, fmt.Appendf(nil, "guess-%d", i))
		a.Done() // ended already: must not release twice
	}
	if !v.Banned || v.Reason != ReasonFailures {
		t.Errorf("the 5th reserved failure = %+v, want banned for %q", v, ReasonFailures)
	}
	if _, err := l.TryAt(t0, src, "alice"); !errors.Is(err, ErrBanned) {
		t.Errorf("TryAt after the ban = %v, want %v", err, ErrBanned)
	}
	if n := l.inFlight(); n != 0 {
		t.Errorf("%d logins in flight after all ended, want 0", n)
	}
}

// TestTryCountsFailuresAndFlights: the budget is failures plus logins in
// flight; every way of ending an attempt gives its place back.
func TestTryCountsFailuresAndFlights(t *testing.T) {
	l, _ := newTest(t, func(b *conf.Bans, _ *conf.Limits) { b.SourceFailures = 3 }, Options{})
	src := addr("192.0.2.7")
	failN(l, t0, src, "alice", 1)
	a1, err1 := l.TryAt(t0, src, "alice")
	a2, err2 := l.TryAt(t0, src, "alice")
	if err1 != nil || err2 != nil {
		t.Fatalf("TryAt ×2 after 1 failure of 3 = %v, %v, want nil, nil", err1, err2)
	}
	if err := tryErr(l, t0, src, "alice"); !errors.Is(err, ErrRefused) {
		t.Fatalf("TryAt with 1 failure + 2 in flight of 3 = %v, want %v", err, ErrRefused)
	}
	a1.Done() // backend error, timeout, client gone: nothing counted
	a1.Done()
	a3, err := l.TryAt(t0, src, "alice")
	if err != nil {
		t.Fatalf("TryAt after Done = %v, want nil", err)
	}
	if err := a3.SucceededAt(t0); err != nil { // forgives alice's failures
		t.Fatalf("SucceededAt = %v, want nil", err)
	}
	if got := l.SourceAt(t0, src); got.InFlight != 1 || got.Failures != 0 {
		t.Errorf("SourceAt after Done and a success = %d in flight, %d failures; want 1 and 0", got.InFlight, got.Failures)
	}
	a2.FailedAt(t0, []byte("x"))
	if got := l.SourceAt(t0, src); got.InFlight != 0 || got.Failures != 1 {
		t.Errorf("SourceAt after Failed = %d in flight, %d failures; want 0 and 1", got.InFlight, got.Failures)
	}
	var nilAttempt *Attempt
	nilAttempt.Done() // a refused Try's attempt: defer a.Done() must not panic
}

// TestTryKnownGoodTakesNoPlace: logins known good for their account from this
// network do not fill the source's budget (an office behind one NAT), while
// guesses on other accounts are still held to source_failures in flight.
func TestTryKnownGoodTakesNoPlace(t *testing.T) {
	l, _ := newTest(t, func(b *conf.Bans, _ *conf.Limits) { b.SourceFailures = 3 }, Options{})
	src := addr("192.0.2.8")
	l.SucceededAt(t0.Add(-time.Hour), src, "owner")
	for i := range 20 {
		if _, err := l.TryAt(t0, src, "owner"); err != nil {
			t.Fatalf("TryAt(owner) #%d = %v, want nil: known-good logins take no place", i+1, err)
		}
	}
	for i, u := range []string{"a", "b"} {
		if _, err := l.TryAt(t0, src, u); err != nil {
			t.Fatalf("TryAt(%s) #%d = %v, want nil", u, i+1, err)
		}
	}
	if got := l.SourceAt(t0, src).InFlight; got != 2 {
		t.Errorf("InFlight = %d, want 2 (the guesses only)", got)
	}
	failN(l, t0, src, "c", 1) // failures + in flight now reach 3
	if err := tryErr(l, t0, src, "d"); !errors.Is(err, ErrRefused) {
		t.Errorf("TryAt(d) = %v, want refused at source_failures", err)
	}
	if err := tryErr(l, t0, src, "owner"); !errors.Is(err, ErrRefused) {
		t.Errorf("TryAt(owner) with the budget taken = %v, want refused", err)
	}
}

// TestTrySprayInFlight: accounts in flight count toward spray_accounts, except
// those the source is known-good for.
func TestTrySprayInFlight(t *testing.T) {
	l, _ := newTest(t, func(b *conf.Bans, _ *conf.Limits) { b.SprayAccounts = 3 }, Options{})
	src := addr("192.0.2.7")
	l.SucceededAt(t0.Add(-time.Hour), src, "owner")
	failN(l, t0, src, "user0", 1)
	for _, u := range []string{"user1", "user2", "user1", "owner", "user0"} {
		if _, err := l.TryAt(t0, src, u); err != nil {
			t.Fatalf("TryAt(%s) = %v, want nil (3 accounts: user0, user1, user2)", u, err)
		}
	}
	if err := tryErr(l, t0, src, "user3"); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "spray") {
		t.Errorf("TryAt(a 4th account) = %v, want refused for spray_accounts", err)
	}
}

// TestTryAccountInFlight: attempts in flight from sources not known-good count
// toward account_failures; past it they share one attempt, and none while one
// is in flight. The owner's network is not rationed.
func TestTryAccountInFlight(t *testing.T) {
	l, _ := newTest(t, func(b *conf.Bans, _ *conf.Limits) { b.AccountFailures = 3 }, Options{})
	owner := addr("198.51.100.7")
	l.SucceededAt(t0.Add(-time.Hour), owner, "alice")
	var flying []*Attempt
	for i := range 30 {
		if a, err := l.TryAt(t0, addr(fmt.Sprintf("203.0.113.%d", i+1)), "alice"); err == nil {
			flying = append(flying, a)
		} else if !strings.Contains(err.Error(), "account protected") {
			t.Fatalf("TryAt(stranger %d) = %v, want refused as account protected", i+1, err)
		}
	}
	if len(flying) != 3 {
		t.Fatalf("30 strangers at once got %d attempts on alice, want account_failures = 3", len(flying))
	}
	if err := tryErr(l, t0, owner, "alice"); err != nil {
		t.Errorf("TryAt(owner) = %v, want nil", err)
	}
	for i, a := range flying {
		a.FailedAt(t0, fmt.Appendf(nil, "g%d", i))
	}
	// Protected now: one attempt a minute for all strangers together.
	a, err := l.TryAt(t0, addr("203.0.113.100"), "alice")
	if err != nil {
		t.Fatalf("TryAt(stranger) after protection = %v, want this minute's attempt", err)
	}
	if err := tryErr(l, t0.Add(2*time.Minute), addr("203.0.113.101"), "alice"); !errors.Is(err, ErrRefused) {
		t.Errorf("TryAt(stranger) while another stranger's attempt flies = %v, want %v", err, ErrRefused)
	}
	a.Done()
	if err := tryErr(l, t0.Add(2*time.Minute), addr("203.0.113.101"), "alice"); err != nil {
		t.Errorf("TryAt(stranger) a minute later, none in flight = %v, want nil", err)
	}
}

// TestSucceededAfterBan: a login whose source was banned while it was in flight
// is refused, and its success is not recorded (no known-good network).
func TestSucceededAfterBan(t *testing.T) {
	l, _ := newTest(t, func(b *conf.Bans, _ *conf.Limits) { b.AccountFailures = 1 }, Options{})
	src := addr("192.0.2.7")
	a, err := l.TryAt(t0, src, "alice")
	if err != nil {
		t.Fatal(err)
	}
	l.AddBanAt(t0, src, time.Hour, "test")
	if err := a.SucceededAt(t0); !errors.Is(err, ErrRefused) || !errors.Is(err, ErrBanned) {
		t.Fatalf("SucceededAt after a ban = %v, want %v and %v", err, ErrRefused, ErrBanned)
	}
	if err := a.SucceededAt(t0); !errors.Is(err, ErrRefused) {
		t.Errorf("SucceededAt twice = %v, want %v", err, ErrRefused)
	}
	l.mu.Lock()
	good := l.knownGood(t0, l.userHash("alice"), src)
	l.mu.Unlock()
	if good {
		t.Errorf("a success refused for a ban made its network known-good")
	}
}

// TestFailedAfterBanCountsAccount: guesses that were in flight when their
// source got banned reached the backend; they count against the account.
func TestFailedAfterBanCountsAccount(t *testing.T) {
	var logs logBuf
	l, _ := newTest(t, func(b *conf.Bans, _ *conf.Limits) { b.AccountFailures = 3 }, Options{Logger: logs.logger()})
	src := addr("192.0.2.7")
	var flying []*Attempt
	for range 3 {
		a, err := l.TryAt(t0, src, "alice")
		if err != nil {
			t.Fatal(err)
		}
		flying = append(flying, a)
	}
	l.AddBanAt(t0, src, time.Hour, "test")
	for i, a := range flying {
		if v := a.FailedAt(t0, fmt.Appendf(nil, "g%d", i)); !v.Banned {
			t.Errorf("FailedAt after the ban = %+v, want Banned", v)
		}
	}
	if !strings.Contains(logs.String(), "account protected") {
		t.Errorf("3 failures after a ban did not protect the account (account_failures = 3); log:\n%s", logs.String())
	}
}

// TestRefusalJitter: a refusal waits like a failure, jitter included.
func TestRefusalJitter(t *testing.T) {
	l, _ := newTest(t, func(b *conf.Bans, _ *conf.Limits) { b.SourceFailures = 1 }, Options{Rand: func() float64 { return 0.5 }})
	src := addr("192.0.2.7")
	a, _ := l.TryAt(t0, src, "alice")
	defer a.Done()
	_, err := l.TryAt(t0, src, "alice")
	var r *Refusal
	if !errors.As(err, &r) || r.Delay != 2500*time.Millisecond {
		t.Errorf("TryAt over budget = %v, want a *Refusal with Delay 2.5s", err)
	}
}
