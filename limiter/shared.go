package limiter

import (
	"crypto/sha256"
	"encoding/binary"
	"net/netip"
	"time"
)

// SharedStore is the policy state several gateways share (issue 13): failure
// counts per source and per account, account protection, known-good networks,
// and the bans each node makes. The cluster package implements it on Redis;
// nil (the default) is a single node. The limiter's own tables stay the fast
// path: Admit never asks the store, and Try only asks when it would refuse a
// protected account's login from a network it does not know.
type SharedStore interface {
	// Failure counts one failed login fleet-wide and returns the counts after
	// it. It returns within the store's timeout; on an error the local counts
	// decide alone (fail open).
	Failure(f SharedFailure) (SharedCounts, error)
	// KnownGood reports whether net logged in to user through any node in
	// the last 30 days, within the store's timeout.
	KnownGood(user uint64, net netip.Prefix) (bool, error)
	// Success records a login that succeeded: net is known-good for user, and
	// the source's failures on user are forgiven. Called with the limiter's
	// lock held: it must not block (queue it).
	Success(user uint64, net, source netip.Prefix)
	// BanMade and BanLifted report a ban made or lifted on this node (not
	// those applied with ApplyBan or ApplyLift), in order, with the lock
	// held: they must not block.
	BanMade(b Ban)
	BanLifted(p netip.Prefix)
}

// SharedFailure is one failed login as the store counts it: hashes only.
type SharedFailure struct {
	Source          netip.Prefix
	User            uint64 // Limiter.userHash: the same on every node with a store set
	Secret          uint64 // keyed per process: a password repeated through two nodes counts twice
	At              time.Time
	SourceWindow    time.Duration // bans.source_window
	AccountWindow   time.Duration // one hour
	AccountFailures int           // bans.account_failures
	AccountProtect  time.Duration // bans.account_protect
}

// SharedCounts is the fleet's view after a failure.
type SharedCounts struct {
	Failures       int       // distinct failures of the source in source_window
	Accounts       int       // distinct accounts among them
	ProtectedUntil time.Time // the account's protected mode ends then; zero: not protected
}

// SetShared makes s hear of this node's bans and successes and count its
// failures (nil: single node). node names this gateway in the bans it makes.
// Call it before the first Try: it also switches account names to a hash that
// every node computes alike, so that the nodes' counts meet.
func (l *Limiter) SetShared(s SharedStore, node string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.shared, l.node = s, node
	l.stableUsers.Store(s != nil)
}

// ApplyBan enforces a ban another node made (or one loaded from the store),
// unless a ban on the same prefix already lasts longer. It takes the ladder's
// strikes from it and forgets the source's local failures, as the making node
// did. The BanListener hears of it, the SharedStore does not. It reports
// whether the ban changed anything.
func (l *Limiter) ApplyBan(b Ban) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bans.expire(now)
	if !now.Before(b.Until) {
		return false
	}
	if e := l.bans.byPrefix[b.Prefix]; e != nil && !e.Until.Before(b.Until) {
		return false
	}
	if s := l.strikesAt(b.Prefix, now); b.Source == SourceAuto && b.Strikes > s.n {
		l.strikes.Add(b.Prefix, strike{n: b.Strikes, until: b.Until})
	}
	l.sources.Remove(b.Prefix)
	evicted := l.bans.trim(tracked(l.b) - 1)
	if _, ok := l.bans.byPrefix[b.Prefix]; ok {
		evicted = nil // replaced in place: nothing had to go
	}
	l.bans.put(b)
	l.gen++
	l.notifyLifted(evicted...)
	l.notifySet(b)
	return true
}

// ApplyLift ends the ban on exactly p that another node lifted, with its
// strikes and failures, as LiftBan does. It reports whether there was one.
func (l *Limiter) ApplyLift(p netip.Prefix) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.bans.byPrefix[p]
	if e == nil {
		return false
	}
	l.bans.remove(p)
	l.strikes.Remove(p)
	l.sources.Remove(p)
	l.gen++
	l.notifyLifted(e.Ban)
	return true
}

// ApplyProtect puts the account with this hash in protected mode until then,
// as another node decided.
func (l *Limiter) ApplyProtect(user uint64, until time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	a, ok := l.accounts.Get(user)
	if !ok {
		a = &account{}
		l.accounts.Add(user, a)
	}
	a.protectedUntil = max(a.protectedUntil, until.UnixNano())
}

// stableUserHash is the account hash when nodes share counts: the first 8
// bytes of SHA-256, which any node computes alike. Unkeyed is safe here: to
// make a chosen account's failures count against a victim an attacker needs
// a second preimage of 64 bits.
func stableUserHash(name string) uint64 {
	sum := sha256.Sum256([]byte("imapgw account\x00" + name))
	return binary.BigEndian.Uint64(sum[:8])
}

// shareFailure asks the store for the fleet's counts after a failure counted
// here (outside mu), and bans or protects as the local policy would have with
// those counts. It returns the ban it made, if any.
func (l *Limiter) shareFailure(now time.Time, src netip.Addr, key netip.Prefix, uh, sh uint64) (*Ban, []Ban, *protection) {
	l.mu.Lock()
	s, b := l.shared, l.b
	l.mu.Unlock()
	c, err := s.Failure(SharedFailure{
		Source: key, User: uh, Secret: sh, At: now,
		SourceWindow: b.SourceWindow.Duration, AccountWindow: accountWindow,
		AccountFailures: b.AccountFailures, AccountProtect: b.AccountProtect.Duration,
	})
	if err != nil {
		return nil, nil, nil // the store logs and counts its outage
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var prot *protection
	if !c.ProtectedUntil.IsZero() {
		a, ok := l.accounts.Get(uh)
		if !ok {
			a = &account{}
			l.accounts.Add(uh, a)
		}
		if t := c.ProtectedUntil.UnixNano(); t > a.protectedUntil {
			if now.UnixNano() >= a.protectedUntil {
				prot = &protection{until: c.ProtectedUntil, failures: l.b.AccountFailures}
			}
			a.protectedUntil = t
		}
	}
	if l.bans.lookup(src, now) != nil {
		return nil, nil, prot
	}
	var reason string
	switch {
	case c.Accounts >= l.b.SprayAccounts:
		reason = ReasonSpray
	case c.Failures >= l.b.SourceFailures:
		reason = ReasonFailures
	default:
		return nil, nil, prot
	}
	ban, evicted := l.autoBan(now, key, reason)
	return &ban, evicted, prot
}

// sharedKnownGood asks the store whether src's network logged in to user
// through another node, and remembers it here when it did (outside mu).
func (l *Limiter) sharedKnownGood(now time.Time, src netip.Addr, uh uint64) bool {
	l.mu.Lock()
	s := l.shared
	l.mu.Unlock()
	if s == nil {
		return false
	}
	net := goodNet(src)
	ok, err := s.KnownGood(uh, net)
	if err != nil || !ok {
		return false
	}
	l.mu.Lock()
	l.good.Add(goodKey{user: uh, net: net}, now.UnixNano())
	l.mu.Unlock()
	return true
}
