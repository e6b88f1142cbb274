package limiter

import (
	"cmp"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"hash/maphash"
	"net/netip"
	"slices"
	"time"
)

const (
	accountWindow = time.Hour           // bans.account_failures are counted over this
	strangerEvery = time.Minute         // protected account: one attempt per this, all strangers together
	knownGoodFor  = 30 * 24 * time.Hour // a success makes its network known-good this long
	knownGoodV4   = 24                  // known-good networks: a household or office, not one address
	knownGoodV6   = 56
	// shareGoodEvery: with a SharedStore, a known-good network is written
	// again after this long (the fleet remembers it knownGoodFor).
	shareGoodEvery = time.Hour
)

// Verdict is the answer to a failed login.
type Verdict struct {
	Delay  time.Duration // bans.failure_delay plus 0–50% jitter: the proxy waits this before answering
	Banned bool          // the source is banned (by this failure or before it)
	Until  time.Time     // end of that ban
	Reason string        // its reason
}

// failure is one distinct failed login of a source, kept as hashes only.
type failure struct {
	at     int64  // unix ns
	user   uint64 // keyed hash of the account name
	secret uint64 // truncated HMAC of the password
}

// sourceFailures are a source's distinct failures within bans.source_window.
// A source is banned, and its entry dropped, at bans.source_failures of them,
// so the list never grows past that.
type sourceFailures struct{ list []failure }

// account is an account's failures in the last hour and its protected mode.
type account struct {
	fails          []int64 // unix ns, oldest first, at most bans.account_failures
	protectedUntil int64
	strangerAt     int64 // last attempt let through for a source not known-good
}

// goodKey is an account and a network that logged in to it.
type goodKey struct {
	user uint64
	net  netip.Prefix
}

// protection is a note for the log: an account entered protected mode.
type protection struct {
	user     string
	until    time.Time
	failures int
}

// Failed records a failed login the backend confirmed (NO [AUTHENTICATIONFAILED]
// or a NO without a code). Only a truncated keyed hash of secret is kept, so the
// same wrong password from the same source for the same user counts once per
// bans.source_window (a phone with an old password); secret is never stored or
// logged. With bans.enabled = false only the delay remains. bans.allow sources
// are delayed and count toward their account's protected mode, never toward a ban.
func (l *Limiter) Failed(src netip.Addr, user string, secret []byte) Verdict {
	return l.FailedAt(l.now(), src, user, secret)
}

// FailedAt is Failed at the given time.
func (l *Limiter) FailedAt(now time.Time, src netip.Addr, user string, secret []byte) Verdict {
	return l.failedAt(now, src.Unmap(), user, secret, nil)
}

// failedAt counts a failure and, under the same lock, releases att's
// reservation (att may be nil: a failure Try did not reserve).
func (l *Limiter) failedAt(now time.Time, src netip.Addr, user string, secret []byte, att *Attempt) Verdict {
	uh, sh := l.userHash(user), l.secretHash(secret)
	var (
		ban      *Ban // made by this failure
		evicted  []Ban
		prot     *protection
		shareKey *netip.Prefix // counted here: count it in the shared store too
	)
	l.mu.Lock()
	if att != nil {
		l.release(att)
	}
	v := Verdict{Delay: l.delay()}
	switch {
	case !l.b.Enabled:
	case l.allowed(src):
		prot = l.countAccount(now, uh)
	default:
		if e := l.bans.lookup(src, now); e != nil { // a login in flight when the ban came
			v.Banned, v.Until, v.Reason = true, e.Until, e.Reason
			// The guess reached the backend: it counts against the account.
			prot = l.countAccount(now, uh)
			break
		}
		var counted bool
		key := l.key(src)
		counted, ban, evicted = l.countSource(now, key, uh, sh)
		if counted {
			prot = l.countAccount(now, uh)
			if l.shared != nil {
				shareKey = &key
			}
		}
	}
	l.mu.Unlock()
	if shareKey != nil && ban == nil {
		// The fleet's counts may ban where this node's alone do not (issue 13).
		var sprot *protection
		ban, evicted, sprot = l.shareFailure(now, src, *shareKey, uh, sh)
		prot = cmp.Or(prot, sprot)
	}
	if ban != nil {
		v.Banned, v.Until, v.Reason = true, ban.Until, ban.Reason
		l.logBan(*ban)
	}
	l.logEvicted(evicted)
	if prot != nil {
		prot.user = user
		l.logProtect(*prot)
	}
	return v
}

// delay is failure_delay plus up to half of it at random, so that clients
// failing together do not all retry in step; callers hold mu.
func (l *Limiter) delay() time.Duration {
	d := l.b.FailureDelay.Duration
	return d + time.Duration(l.rand()*float64(d)/2)
}

// countSource records a failure for key. It reports whether the failure was
// new (not a repeat of the same user and password in the window) and the ban
// it caused, if any. Callers hold mu.
func (l *Limiter) countSource(now time.Time, key netip.Prefix, user, secret uint64) (bool, *Ban, []Ban) {
	s, ok := l.sources.Get(key)
	if !ok {
		s = &sourceFailures{}
		l.sources.Add(key, s)
	}
	s.prune(now.Add(-l.b.SourceWindow.Duration).UnixNano())
	if s.has(user, secret) {
		return false, nil, nil
	}
	s.list = append(s.list, failure{at: now.UnixNano(), user: user, secret: secret})
	var reason string
	switch {
	case s.accounts() >= l.b.SprayAccounts:
		reason = ReasonSpray
	case len(s.list) >= l.b.SourceFailures:
		reason = ReasonFailures
	default:
		return true, nil, nil
	}
	b, evicted := l.autoBan(now, key, reason)
	return true, &b, evicted
}

// countAccount records a failure on user and reports when it puts the account
// into protected mode. While failures keep coming at account_failures an hour,
// protection is extended to account_protect from the latest; only entering is
// reported. Callers hold mu.
func (l *Limiter) countAccount(now time.Time, user uint64) *protection {
	a, ok := l.accounts.Get(user)
	if !ok {
		a = &account{}
		l.accounts.Add(user, a)
	}
	t := now.UnixNano()
	a.fails = pruneTimes(a.fails, t-int64(accountWindow))
	a.fails = append(a.fails, t)
	if n := l.b.AccountFailures; len(a.fails) > n {
		a.fails = append(a.fails[:0], a.fails[len(a.fails)-n:]...)
	}
	if len(a.fails) < l.b.AccountFailures {
		return nil
	}
	entering := t >= a.protectedUntil
	a.protectedUntil = now.Add(l.b.AccountProtect.Duration).UnixNano()
	if !entering {
		return nil
	}
	return &protection{until: time.Unix(0, a.protectedUntil), failures: len(a.fails)}
}

// knownGood reports whether src's network logged in to user in the last 30
// days; callers hold mu.
func (l *Limiter) knownGood(now time.Time, user uint64, src netip.Addr) bool {
	t, ok := l.good.Peek(goodKey{user: user, net: goodNet(src)})
	return ok && now.UnixNano()-t < int64(knownGoodFor)
}

func goodNet(a netip.Addr) netip.Prefix { return sourceKey(a, knownGoodV4, knownGoodV6) }

// Succeeded records a successful login: it forgives the source's failures on
// that account and makes the source's /24 (IPv4) or /56 (IPv6) known-good for
// it, so protected mode never locks the owner out. With bans.enabled = false
// it records nothing.
func (l *Limiter) Succeeded(src netip.Addr, user string) {
	l.SucceededAt(l.now(), src, user)
}

// SucceededAt is Succeeded at the given time.
func (l *Limiter) SucceededAt(now time.Time, src netip.Addr, user string) {
	src = src.Unmap()
	uh := l.userHash(user)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Enabled {
		l.succeeded(now, src, uh)
	}
}

// succeeded forgives and records a success; callers hold mu.
func (l *Limiter) succeeded(now time.Time, src netip.Addr, uh uint64) {
	key := l.key(src)
	forgiven := false
	if s, ok := l.sources.Peek(key); ok {
		n := len(s.list)
		if s.forgive(uh); len(s.list) == 0 {
			l.sources.Remove(key)
		}
		forgiven = len(s.list) < n
	}
	gk := goodKey{user: uh, net: goodNet(src)}
	last, known := l.good.Peek(gk)
	l.good.Add(gk, now.UnixNano())
	// The fleet hears of a network once an hour per node, or when there were
	// failures to forgive: a mailbox's every login need not cost a Redis write.
	if l.shared != nil && (forgiven || !known || now.UnixNano()-last >= int64(shareGoodEvery)) {
		l.shared.Success(uh, goodNet(src), key)
	}
}

func (l *Limiter) logProtect(p protection) {
	l.log.Warn("account protected: sources not known-good share one attempt a minute",
		"user", logUser(p.user), "until", p.until, "failures", p.failures)
}

// logUser bounds a client-chosen name before it reaches a log line.
func logUser(u string) string {
	const most = 128
	if len(u) > most {
		return u[:most] + "…"
	}
	return u
}

// userHash keys accounts by a 64-bit keyed hash of the account name
// (bans.account_key): tables hold 8 bytes, not client-chosen strings of up to
// max_line, and the names of one mailbox count together.
func (l *Limiter) userHash(user string) uint64 {
	name := accountName(*l.accountKey.Load(), user)
	if l.stableUsers.Load() {
		return stableUserHash(name)
	}
	return maphash.String(l.userSeed, name)
}

// secretHash is HMAC-SHA256 of the password under a per-process random key,
// truncated to 64 bits: enough to tell passwords apart, useless offline.
func (l *Limiter) secretHash(secret []byte) uint64 {
	m := hmac.New(sha256.New, l.secretKey)
	m.Write(secret)
	return binary.BigEndian.Uint64(m.Sum(nil))
}

func (s *sourceFailures) prune(cutoff int64) {
	s.list = slices.DeleteFunc(s.list, func(f failure) bool { return f.at < cutoff })
}

func (s *sourceFailures) has(user, secret uint64) bool {
	for _, f := range s.list {
		if f.user == user && f.secret == secret {
			return true
		}
	}
	return false
}

// accounts counts the distinct accounts in the list (at most source_failures
// entries, so quadratic is cheapest).
func (s *sourceFailures) accounts() int {
	n := 0
	for i, f := range s.list {
		if !slices.ContainsFunc(s.list[:i], func(g failure) bool { return g.user == f.user }) {
			n++
		}
	}
	return n
}

func (s *sourceFailures) forgive(user uint64) {
	s.list = slices.DeleteFunc(s.list, func(f failure) bool { return f.user == user })
}

// pruneTimes drops the times before cutoff from an ascending list.
func pruneTimes(ts []int64, cutoff int64) []int64 {
	i := 0
	for i < len(ts) && ts[i] < cutoff {
		i++
	}
	return append(ts[:0], ts[i:]...)
}
