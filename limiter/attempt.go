package limiter

import (
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"
)

// Attempt is one login in flight: Try reserved it, and it holds its place in
// the source's budget (and, for a source not known-good, in the account's)
// until the backend has answered. Without the reservation every session a
// source has open could pass Try before the first failure came back, and the
// budget per ban step would be source_failures plus max_connections_per_source
// (issue 11, point 1).
//
// Exactly one of Failed, Succeeded or Done ends it; whichever comes first
// releases the reservation and later calls record nothing, so the proxy calls
// `defer a.Done()` right after Try and no outcome (backend error, timeout,
// client gone, shutdown, panic) can leak a reservation. Done on a nil Attempt
// does nothing.
type Attempt struct {
	l     *Limiter
	src   netip.Addr // unmapped
	user  string
	uh    uint64
	key   netip.Prefix // the source key at Try; a reload may change the prefix lengths
	held  bool         // holds a place in flights[key]
	spray bool         // counted among the source's accounts in flight
	acct  bool         // holds a place in acctFlights[uh]
	ended atomic.Bool
}

// flight is a source's logins in flight: n of them, and the accounts of those
// whose source is not known-good for the account (one entry per login, at most
// limits.max_connections_per_source long).
type flight struct {
	n     int
	users []uint64
}

// Refusal is Try's error. It wraps ErrRefused, and ErrBanned when the source
// is banned, and carries the delay the proxy waits before answering: a refusal
// costs the client as much time as a failure (issue 11, point 2).
type Refusal struct {
	Delay  time.Duration // bans.failure_delay plus jitter
	Banned bool          // the source is banned: the proxy also hangs up
	reason string
}

func (r *Refusal) Error() string { return ErrRefused.Error() + ": " + r.reason }

// Is makes errors.Is(err, ErrRefused) and, for a ban, errors.Is(err, ErrBanned) hold.
func (r *Refusal) Is(target error) bool {
	return target == ErrRefused || (r.Banned && target == ErrBanned)
}

// Refusal reasons; fixed strings, so a log line never carries client input.
const (
	refusedBanned    = "source is banned"
	refusedBudget    = "source has bans.source_failures failed or pending logins"
	refusedSpray     = "source has failed or pending logins on bans.spray_accounts accounts"
	refusedProtected = "account protected"
)

// Try is asked when credentials arrive, before they go anywhere. It reserves an
// attempt (none for a login known good for its account from this network), or
// returns a *Refusal when the source is banned by now, when its
// failures in source_window plus its logins in flight reach source_failures,
// when a new account would bring the accounts among them to spray_accounts
// (accounts the source is known-good for do not count: an office's users are
// not a spray), or when the account is protected (or its failures plus the
// attempts in flight from sources not known-good for it reach
// account_failures), this source is not known-good for it, and another such
// source had this minute's attempt or is still waiting for its answer.
func (l *Limiter) Try(src netip.Addr, user string) (*Attempt, error) {
	return l.TryAt(l.now(), src, user)
}

// TryAt is Try at the given time.
func (l *Limiter) TryAt(now time.Time, src netip.Addr, user string) (*Attempt, error) {
	a, err := l.tryAt(now, src, user)
	// A protected account's owner may have logged in through another node:
	// only then does a login wait on the shared store (issue 13).
	if r, ok := err.(*Refusal); ok && r.reason == refusedProtected && l.sharedKnownGood(now, src.Unmap(), l.userHash(user)) {
		return l.tryAt(now, src, user)
	}
	return a, err
}

func (l *Limiter) tryAt(now time.Time, src netip.Addr, user string) (*Attempt, error) {
	src = src.Unmap()
	a := &Attempt{l: l, src: src, user: user, uh: l.userHash(user)}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.b.Enabled || l.allowed(src) {
		return a, nil
	}
	if l.bans.lookup(src, now) != nil {
		return nil, l.refusal(refusedBanned, true)
	}
	a.key = l.key(src)
	good := l.knownGood(now, a.uh, src)
	f := l.flights[a.key]
	if f == nil {
		f = &flight{}
	}
	s, _ := l.sources.Peek(a.key)
	if s != nil {
		s.prune(now.Add(-l.b.SourceWindow.Duration).UnixNano())
	}
	if s.len()+f.n >= l.b.SourceFailures {
		return nil, l.refusal(refusedBudget, false)
	}
	if good {
		// A login known good for its account from this network takes no place
		// in flight: an office behind one NAT logs its users in many at a time,
		// and a guess is never known good for the account it guesses, so the
		// budget on guesses holds (the bench's 64 clients from one address hit
		// this).
		return a, nil
	}
	if l.sprays(s, f, a.uh) {
		return nil, l.refusal(refusedSpray, false)
	}
	if err := l.tryAccount(now, a.uh); err != nil {
		return nil, err
	}
	a.acct = true
	l.acctFlights[a.uh]++
	a.held, a.spray = true, true
	f.n++
	f.users = append(f.users, a.uh)
	l.flights[a.key] = f
	return a, nil
}

// sprays reports whether one more login on user would bring the distinct
// accounts among the source's failures and spray-counted logins in flight to
// more than spray_accounts; callers hold mu.
func (l *Limiter) sprays(s *sourceFailures, f *flight, user uint64) bool {
	var buf [16]uint64
	seen := buf[:0]
	add := func(u uint64) {
		if !slices.Contains(seen, u) {
			seen = append(seen, u)
		}
	}
	if s != nil {
		for _, x := range s.list {
			add(x.user)
		}
	}
	for _, u := range f.users {
		add(u)
	}
	return !slices.Contains(seen, user) && len(seen) >= l.b.SprayAccounts
}

// tryAccount rations a source that is not known-good for the account: while
// the account is protected, or its failures and such attempts in flight reach
// account_failures, all such sources together get one attempt a minute, and
// none while one is in flight. Callers hold mu.
func (l *Limiter) tryAccount(now time.Time, user uint64) error {
	t := now.UnixNano()
	inFlight := l.acctFlights[user]
	a, ok := l.accounts.Get(user)
	fails := 0
	if ok {
		a.fails = pruneTimes(a.fails, t-int64(accountWindow))
		fails = len(a.fails)
	}
	protected := ok && t < a.protectedUntil
	if !protected && fails+inFlight < l.b.AccountFailures {
		return nil
	}
	if inFlight > 0 || (ok && a.strangerAt != 0 && t-a.strangerAt < int64(strangerEvery)) {
		return l.refusal(refusedProtected, false)
	}
	if ok {
		a.strangerAt = t
	}
	return nil
}

// refusal builds Try's error with the delay of a failure; callers hold mu.
func (l *Limiter) refusal(reason string, banned bool) *Refusal {
	return &Refusal{Delay: l.delay(), Banned: banned, reason: reason}
}

// release gives the attempt's reservation back; callers hold mu.
func (l *Limiter) release(a *Attempt) {
	if a.held {
		if f := l.flights[a.key]; f != nil {
			f.n--
			if a.spray {
				if i := slices.Index(f.users, a.uh); i >= 0 {
					f.users = slices.Delete(f.users, i, i+1)
				}
			}
			if f.n <= 0 {
				delete(l.flights, a.key)
			}
		}
	}
	if a.acct {
		if l.acctFlights[a.uh]--; l.acctFlights[a.uh] <= 0 {
			delete(l.acctFlights, a.uh)
		}
	}
}

// end reports whether this call ends the attempt (the first of Failed,
// Succeeded and Done does).
func (a *Attempt) end() bool { return a != nil && a.ended.CompareAndSwap(false, true) }

// Done ends an attempt the backend did not judge (backend error, timeout,
// another response code, client gone, shutdown): the reservation is given
// back and nothing is counted. After Failed or Succeeded it does nothing.
func (a *Attempt) Done() {
	if !a.end() {
		return
	}
	a.l.mu.Lock()
	a.l.release(a)
	a.l.mu.Unlock()
}

// Failed ends the attempt with a failed login the backend confirmed: the
// reservation is given back and the failure counted as Limiter.Failed does. A
// failure that arrives after its source was banned still counts against the
// account. Called after the attempt ended, it only returns the delay.
func (a *Attempt) Failed(secret []byte) Verdict { return a.FailedAt(a.l.now(), secret) }

// FailedAt is Failed at the given time.
func (a *Attempt) FailedAt(now time.Time, secret []byte) Verdict {
	if !a.end() {
		a.l.mu.Lock()
		defer a.l.mu.Unlock()
		return Verdict{Delay: a.l.delay()}
	}
	return a.l.failedAt(now, a.src, a.user, secret, a)
}

// Succeeded ends the attempt with a login the backend accepted. If the source
// was banned while the login was in flight it returns a *Refusal and records
// nothing: the proxy closes the backend session and refuses the client, so a
// parallel batch of guesses cannot log in after its siblings got the source
// banned. Otherwise it records the success as Limiter.Succeeded does.
func (a *Attempt) Succeeded() error { return a.SucceededAt(a.l.now()) }

// SucceededAt is Succeeded at the given time.
func (a *Attempt) SucceededAt(now time.Time) error {
	if !a.end() {
		return fmt.Errorf("%w: attempt already ended", ErrRefused)
	}
	l := a.l
	l.mu.Lock()
	defer l.mu.Unlock()
	l.release(a)
	if !l.b.Enabled {
		return nil
	}
	if !l.allowed(a.src) && l.bans.lookup(a.src, now) != nil {
		return l.refusal(refusedBanned, true)
	}
	l.succeeded(now, a.src, a.uh)
	return nil
}

func (s *sourceFailures) len() int {
	if s == nil {
		return 0
	}
	return len(s.list)
}

func (f *flight) count() int {
	if f == nil {
		return 0
	}
	return f.n
}
